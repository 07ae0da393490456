"""Keyframe segmentation (issue 12): masks carried between Cellpose keyframes follow cells that
move a little, and the check sends frames where cells moved farther back to Cellpose."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import ROOT

from pipeline.io.movie import open_movie
from pipeline.stages.propagate import membrane_stain, propagate_labels, propagation_agrees

YY, XX = np.mgrid[:140, :160]
CELLS = [(50.0, 45.0, 20.0), (90.0, 110.0, 16.0), (40.0, 120.0, 14.0)]  # centre y, x, radius (px)


def _frame(shift_px: float, membrane: bool, rng) -> tuple[np.ndarray, np.ndarray]:
    """Three touching-free cells moved right by ``shift_px``: image (stain + noise) and true labels."""
    image = np.full(YY.shape, 20.0)
    labels = np.zeros(YY.shape, np.int32)
    for i, (cy, cx, r) in enumerate(CELLS, start=1):
        d = np.hypot(YY - cy, XX - cx - shift_px)
        image += 100.0 * ((np.abs(d - r) < 1.5) if membrane else (d < r))
        labels[d < r] = i
    return image + rng.normal(0, 6, image.shape), labels


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a > 0) & (b > 0)).sum() / ((a > 0) | (b > 0)).sum())


@pytest.mark.parametrize("membrane", [False, True], ids=["cytoplasm", "membrane"])
def test_small_moves_are_followed_large_ones_are_refused(membrane):
    rng = np.random.default_rng(3)
    image0, labels0 = _frame(0.0, membrane, rng)
    assert membrane_stain(labels0, image0) == membrane
    for shift in (1.0, 2.0, 3.0):
        image, truth = _frame(shift, membrane, rng)
        carried = propagate_labels(labels0, image, membrane=membrane)
        assert set(np.unique(carried)) == {0, 1, 2, 3}  # ids kept
        assert _iou(carried, truth) > 0.88
        assert _iou(carried, truth) > _iou(labels0, truth)  # it followed the move
        assert propagation_agrees(carried, image, labels0, image0, membrane=membrane)
    image, truth = _frame(10.0, membrane, rng)  # half a radius in one frame: not carried
    carried = propagate_labels(labels0, image, membrane=membrane)
    assert not propagation_agrees(carried, image, labels0, image0, membrane=membrane)


def test_a_vanished_cell_is_refused():
    rng = np.random.default_rng(4)
    image0, labels0 = _frame(0.0, False, rng)
    image = image0.copy()
    image[labels0 == 2] = 20.0  # cell 2 left the field (or died)
    carried = propagate_labels(labels0, image)
    assert not propagation_agrees(carried, image, labels0, image0)


def test_empty_frame_carries_nothing():
    assert not propagate_labels(np.zeros((20, 20), int), np.ones((20, 20))).any()


def test_carried_masks_match_the_simulation_truth():
    """Demo movie: the truth masks of frame 0 carried over 8 frames stay as close to the truth as
    the keyframe is (mean IoU per cell ≥ 0.95 on every frame)."""
    movie = open_movie(ROOT / "sample_data" / "demo.ome.tif")
    cells = movie.data[:9, movie.channel_index("cells"), 0].compute()
    truth = tifffile.imread(ROOT / "sample_data" / "demo.truth" / "cell_labels.tif")[:9]
    labels = truth[0]
    for t in range(1, 9):
        carried = propagate_labels(labels, cells[t])
        assert propagation_agrees(carried, cells[t], labels, cells[t - 1])
        ious = [_iou(carried == c, truth[t] == c) for c in np.unique(truth[t][truth[t] > 0])]
        assert min(ious) > 0.9 and np.mean(ious) > 0.95, (t, ious)
        labels = carried
