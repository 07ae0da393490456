"""Zones: signed distance to the membrane, owning cell, zone."""

import time

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from skimage.draw import disk, ellipse

from pipeline.errors import UptrackError
from pipeline.stages.zones import ZoneParams, assign_zones, cell_geometry, zones_for_frame

PX = 0.2  # µm per pixel
PARAMS = ZoneParams()


def _zones(y, x, labels, params=PARAMS):
    det = pd.DataFrame({"y": np.asarray(y, float), "x": np.asarray(x, float)})
    return zones_for_frame(det, labels, pixel_size_um=PX, params=params)


def _three_cells():
    """Two touching disks (1, 2) and a separate one (3) in a 96 × 128 frame."""
    labels = np.zeros((96, 128), np.int32)
    labels[disk((40, 30), 20, shape=labels.shape)] = 1
    rr, cc = disk((40, 68), 20, shape=labels.shape)
    free = labels[rr, cc] == 0
    labels[rr[free], cc[free]] = 2
    labels[disk((80, 105), 12, shape=labels.shape)] = 3
    return labels


def test_pixel_centres_match_corrected_edt():
    labels = _three_cells()
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    out = _zones(yy.ravel(), xx.ravel(), labels, ZoneParams(max_cell_distance_um=1e3))
    # brute force: per-cell signed EDT with the half-pixel offset corrected, most-inside cell wins
    fields = []
    for cell in (1, 2, 3):
        inside = labels == cell
        fields.append(np.where(inside, -(ndimage.distance_transform_edt(inside) - 0.5),
                               ndimage.distance_transform_edt(~inside) - 0.5))
    fields = np.stack(fields)
    expected = fields.min(axis=0).ravel() * PX
    np.testing.assert_allclose(out["distance_um"], expected, atol=1e-9)
    unique = (np.sort(fields, axis=0)[1] - np.sort(fields, axis=0)[0]).ravel() > 1e-9
    np.testing.assert_array_equal(out["cell_id"][unique], fields.argmin(axis=0).ravel()[unique] + 1)


@pytest.mark.parametrize("d_px", [-10.0, -2.0, -0.5, 0.0, 0.5, 2.0, 10.0])
def test_circle_points_at_known_distances(d_px):
    labels = np.zeros((200, 200), np.int32)
    cy, cx, radius = 100.2, 99.7, 40.3
    labels[disk((cy, cx), radius, shape=labels.shape)] = 5
    theta = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    out = _zones(cy + (radius + d_px) * np.sin(theta), cx + (radius + d_px) * np.cos(theta), labels)
    error_px = out["distance_um"].to_numpy() / PX - d_px
    assert (out["cell_id"] == 5).all()
    assert np.abs(error_px).max() <= 0.5 + 1e-9  # the pixelated outline deviates by < half a pixel
    if abs(d_px) <= 0.5:
        assert abs(error_px.mean()) < 0.05  # the membrane sits at the mask boundary, no half-pixel bias
    zone = {-10.0: "inside", 0.0: "membrane", 10.0: "outside"}.get(d_px)
    if zone:
        assert (out["zone"] == zone).all()


def test_ellipse_rim_and_normals():
    labels = np.zeros((160, 200), np.int32)
    cy, cx, ry, rx = 80.0, 100.0, 30.0, 60.0
    labels[ellipse(cy, cx, ry, rx, shape=labels.shape)] = 2
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    rim_y, rim_x = cy + ry * np.sin(t), cx + rx * np.cos(t)
    normal = np.stack([np.sin(t) / ry, np.cos(t) / rx])
    normal /= np.hypot(*normal)
    rim = _zones(rim_y, rim_x, labels)
    assert np.abs(rim["distance_um"]).max() / PX <= 0.75
    assert (rim["zone"] == "membrane").all()
    for offset in (-4.0, 4.0):
        out = _zones(rim_y + offset * normal[0], rim_x + offset * normal[1], labels)
        np.testing.assert_allclose(out["distance_um"] / PX, offset, atol=0.75)


def test_touching_cells_inside_belongs_to_own_cell_outside_to_nearest():
    labels = np.zeros((60, 100), np.int32)
    labels[10:50, 10:50] = 1  # A: x 10..49
    labels[10:50, 50:90] = 2  # B touches A along x = 49.5
    out = _zones([30, 30, 30, 5.0, 5.0], [48.8, 50.3, 49.5, 40.0, 60.0], labels)
    np.testing.assert_array_equal(out["cell_id"], [1, 2, 1, 1, 2])
    np.testing.assert_allclose(out["distance_um"] / PX, [-0.7, -0.8, 0.0, 4.5, 4.5], atol=1e-9)
    assert list(out["zone"][:3]) == ["membrane"] * 3


def test_far_detections_have_no_cell_and_frames_without_cells():
    labels = np.zeros((64, 64), np.int32)
    labels[20:30, 20:30] = 4
    far = _zones([25.0, 25.0], [29.5 + 5.0 / PX - 0.1, 29.5 + 5.0 / PX + 1.0], labels)  # just within, beyond 5 µm
    np.testing.assert_array_equal(far["cell_id"], [4, 0])
    assert far["distance_um"].iloc[1] == pytest.approx(5.0 + PX)
    assert (far["zone"] == "outside").all()

    empty = _zones([10.0, 50.0], [10.0, 3.0], np.zeros((64, 64), np.int32))
    assert (empty["cell_id"] == 0).all() and empty["distance_um"].isna().all() and (empty["zone"] == "outside").all()
    none = _zones([], [], labels)
    assert list(none.columns) == ["y", "x", "cell_id", "distance_um", "zone"] and len(none) == 0


def test_detections_beyond_the_image_edge():
    labels = np.zeros((40, 40), np.int32)
    labels[10:30, 0:15] = 1  # touches the left edge: the edge is not a membrane
    out = _zones([20.0, 20.0, -3.0], [-0.4, 17.5, 5.0], labels)
    np.testing.assert_array_equal(out["cell_id"], [1, 1, 1])
    assert out["distance_um"].iloc[0] / PX == pytest.approx(-9.5)  # from the right edge at x = 14.5
    assert out["distance_um"].iloc[1] / PX == pytest.approx(3.0)
    assert out["distance_um"].iloc[2] / PX == pytest.approx(9.5 + 3.0)  # nearest in-image point, plus 3 px beyond


def test_assign_zones_loops_frames_and_keeps_row_order():
    labels = np.zeros((3, 50, 50), np.int32)
    labels[0, 10:20, 10:20] = 1
    labels[2, 30:40, 30:40] = 7
    det = pd.DataFrame({"frame": [2, 0, 1, 0], "y": [35.0, 15.0, 15.0, 9.5], "x": [35.0, 15.0, 15.0, 15.0]},
                       index=[10, 11, 12, 13])
    out = assign_zones(det, labels, pixel_size_um=PX, params=PARAMS)
    assert list(out.index) == [10, 11, 12, 13]
    np.testing.assert_array_equal(out["cell_id"], [7, 1, 0, 1])
    assert out["cell_id"].dtype == np.int64 and out["distance_um"].dtype == np.float64
    assert list(out["zone"]) == ["inside", "inside", "outside", "membrane"]
    with pytest.raises(UptrackError, match="frame 3"):
        assign_zones(det.assign(frame=[3, 0, 1, 0]), labels, pixel_size_um=PX, params=PARAMS)


def test_cell_geometry():
    labels = np.zeros((3, 20, 20), np.int32)
    labels[0, :5, :5] = 2
    labels[1, :5, :4] = 2
    labels[1:, 10:12, 10:12] = 9
    geometry = cell_geometry(labels, pixel_size_um=0.5)
    assert list(geometry["cell_id"]) == [2, 9]
    assert list(geometry["first_frame"]) == [0, 1] and list(geometry["last_frame"]) == [1, 2]
    np.testing.assert_allclose(geometry["mean_area_um2"], [(25 + 20) / 2 * 0.25, 4 * 0.25])


def test_frame_of_512_px_with_300_detections_is_fast():
    rng = np.random.default_rng(0)
    labels = np.zeros((512, 512), np.int32)
    for cell, (cy, cx) in enumerate(rng.uniform(40, 472, size=(30, 2)), start=1):
        labels[disk((cy, cx), rng.uniform(20, 40), shape=labels.shape)] = cell
    det = pd.DataFrame({"y": rng.uniform(0, 511, 300), "x": rng.uniform(0, 511, 300)})
    zones_for_frame(det, labels, pixel_size_um=PX, params=PARAMS)
    start = time.perf_counter()
    zones_for_frame(det, labels, pixel_size_um=PX, params=PARAMS)
    assert time.perf_counter() - start < 0.1
