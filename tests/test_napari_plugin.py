"""The napari plugin: reader, cell inspector, corrections, detection tuning, run widget, rendering.

Real viewers under Xvfb (pytest-xvfb), PyQt6. The stores are built from simulated
ground truth (tests/conftest.py) except in the test that runs the real pipeline.
"""

import shutil
import time
import tracemalloc
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import yaml
import zarr
from conftest import SAMPLE_MOVIE, build_store
from matplotlib.colors import to_rgb
from napari.utils._proxies import ReadOnlyWrapper
from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks
from qtpy.QtCore import Qt, QTimer

from napari_uptrack._layers import STATE_COLORMAP
from napari_uptrack._reader import get_reader
from pipeline.cli.app import main as cli
from pipeline.io import store
from pipeline.io.curation import curation_versions
from pipeline.io.results import load_results
from pipeline.sim.simulate import SimulationConfig, simulate, write_simulation
from pipeline.sim.truth import load_truth
from pipeline.vocabulary import STATE_COLORS, STATES

pytestmark = pytest.mark.napari
SAMPLE_MODEL = SAMPLE_MOVIE.parent / "models" / "uptrack_cells_cp3"


def _open(viewer, path):
    """Open a store with the uptrack reader; return its layers by type."""
    layers = viewer.open(path, plugin="uptrack")
    return {type(layer).__name__: layer for layer in layers} | {"all": layers}


def _dock(viewer, name: str):
    """Add one of the plugin's widgets through its manifest entry."""
    return viewer.window.add_plugin_dock_widget("uptrack", name)[1]


def _rgb(state: str) -> np.ndarray:
    """A state's colour as RGB floats."""
    return np.array(to_rgb(STATE_COLORS[state]))


def _click(viewer, position) -> None:
    """A press and release at a world position, through the viewer's mouse callbacks as napari's canvas
    calls them (events wrapped read-only, the press event swapped for the release event)."""
    for kind, run in (("mouse_press", mouse_press_callbacks), ("mouse_release", mouse_release_callbacks)):
        event = type("Event", (), {"type": kind, "position": tuple(position), "is_dragging": False,
                                   "modifiers": (), "handled": False, "dims_displayed": (1, 2),
                                   "view_direction": None})()
        run(viewer, ReadOnlyWrapper(event))


# --- manifest and reader -----------------------------------------------------------------------


def test_manifest_validates_with_npe2():
    """``npe2 validate uptrack --imports``: the installed manifest (found through its entry point), every
    command imported."""
    from npe2.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["validate", "uptrack", "--imports"])
    assert result.exit_code == 0 and "valid" in result.output, result.output


def test_reader_claims_only_complete_uptrack_stores(tmp_path, truth_store):
    assert get_reader(str(truth_store)) is not None
    zarr.open_group(tmp_path / "other.zarr", mode="w")
    assert get_reader(str(tmp_path / "other.zarr")) is None
    assert get_reader(str(tmp_path / "missing.zarr")) is None
    store.update_attrs(truth_store, complete=False)
    assert get_reader(str(truth_store)) is None


def test_reader_layers_scales_and_state_colours(make_napari_viewer, truth_store):
    viewer = make_napari_viewer()
    layers = _open(viewer, truth_store)
    results = load_results(truth_store)
    kinds = [type(layer).__name__ for layer in layers["all"]]
    assert kinds == ["Image", "Image", "Labels", "Points", "Tracks"]
    assert [layer.metadata["uptrack"]["channel"] for layer in layers["all"][:2]] == ["cells", "particles"]
    for layer in layers["all"]:
        np.testing.assert_allclose(layer.scale, (results.frame_interval_s, results.pixel_size_um, results.pixel_size_um))
        assert [str(u) for u in layer.units] == ["second", "micrometer", "micrometer"]
        assert layer.metadata["uptrack"]["store"] == str(truth_store)
    assert isinstance(layers["Labels"].data, da.Array) and isinstance(layers["Image"].data, da.Array)

    points = layers["Points"]
    np.testing.assert_array_equal(points.data, results.particles[["frame", "y", "x"]].to_numpy(float))
    for state in STATES:
        rows = (results.particles["state"] == state).to_numpy()
        assert rows.any()
        np.testing.assert_allclose(points.face_color[rows, :3], np.tile(_rgb(state), (rows.sum(), 1)), atol=1e-6)

    tracks = layers["Tracks"]
    assert set(tracks.data[:, 0].astype(int)) == set(results.tracks["track_id"])
    for state in STATES:
        rows = (tracks.features["state"] == state).to_numpy()
        np.testing.assert_allclose(STATE_COLORMAP.map(tracks.features["state_level"].to_numpy()[rows])[:, :3],
                                   np.tile(_rgb(state), (rows.sum(), 1)), atol=1e-6)
    np.testing.assert_allclose(tracks.track_colors[:, :3],
                               STATE_COLORMAP.map(tracks.features["state_level"].to_numpy())[:, :3], atol=1e-6)


def test_reader_without_the_movie_warns_and_shows_the_rest(make_napari_viewer, tmp_path, simulated_movie):
    movie = tmp_path / "moved.ome.tif"
    shutil.copy(simulated_movie, movie)
    path = build_store(tmp_path / "elsewhere" / "sim.zarr", movie, load_truth(simulated_movie))
    movie.unlink()
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="the movie it was made from is not at .*moved.ome.tif"):
        layers = _open(viewer, path)
    assert [type(layer).__name__ for layer in layers["all"]] == ["Labels", "Points", "Tracks"]


def test_a_multi_gigabyte_store_opens_lazily(make_napari_viewer, tmp_path, truth_store):
    """Labels of 400 frames of 2048 x 2048 px (6.7 GB, never written) and an OME-Zarr movie of the same size."""
    shape = (400, 2048, 2048)
    movie = tmp_path / "big.ome.zarr"
    root = zarr.open_group(movie, mode="w", zarr_format=3)
    root.create_array("0", shape=(shape[0], 2, *shape[1:]), chunks=(1, 1, *shape[1:]), dtype="uint16",
                      fill_value=100)
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"},
                 {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [3.0, 1, 0.2, 0.2]}]}],
    }]}
    store.update_attrs(truth_store, input_path=str(movie))
    store.create_labels(truth_store, shape)
    viewer = make_napari_viewer()
    tracemalloc.start()
    start = time.perf_counter()
    layers = _open(viewer, truth_store)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert layers["Labels"].data.shape == shape and isinstance(layers["Labels"].data, da.Array)
    assert layers["Image"].data.shape == shape
    assert peak < 300e6, f"opening allocated {peak / 1e6:.0f} MB"
    assert seconds < 20


# --- cell inspector ------------------------------------------------------------------------


@pytest.fixture
def inspected(make_napari_viewer, truth_store):
    """A viewer with the truth store open and the cell inspector docked."""
    viewer = make_napari_viewer()
    layers = _open(viewer, truth_store)
    return viewer, layers, _dock(viewer, "Cell inspector")


def test_choosing_a_cell_fills_the_plot_and_tables(inspected, truth_store):
    viewer, _, inspector = inspected
    results = load_results(truth_store)
    cell = int(results.cells.sort_values("n_internalization")["cell_id"].iloc[-1])
    inspector.cell_box.setCurrentText(str(cell))
    assert inspector.cell_id == cell

    mine = results.tracks[results.tracks["cell_id"] == cell]["track_id"]
    events = results.events[results.events["cell_id"] == cell]
    assert set(mine) <= set(inspector.cell_tracks["track_id"])
    assert inspector.tracks_table.rowCount() == len(inspector.cell_tracks) > 0
    assert inspector.events_table.rowCount() == len(events) > 0
    assert inspector.events_table.item(0, 2).text() == events.iloc[0]["kind"]
    counts, cumulative, rates = inspector.figure.axes
    kinetics = results.kinetics.sel(cell_id=cell)
    for line, state in zip(counts.get_lines(), STATES):
        np.testing.assert_array_equal(line.get_ydata(), kinetics[f"n_{state}"].values)
        np.testing.assert_allclose(to_rgb(line.get_color()), _rgb(state))
    assert cumulative.get_lines()[0].get_ydata()[-1] == kinetics["cum_internalization"].values[-1] > 0
    assert len(rates.containers) >= 2  # the cell's and the movie's internalization rate with intervals


def test_clicking_events_and_particles_navigates_and_selects(inspected, truth_store, qtbot):
    viewer, layers, inspector = inspected
    results = load_results(truth_store)
    px, dt = results.pixel_size_um, results.frame_interval_s
    inspector.cell_box.setCurrentText(str(int(results.events["cell_id"].iloc[-1])))
    table = inspector.events_table
    row = table.rowCount() - 1
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=table.visualItemRect(table.item(row, 0)).center())
    event = inspector.cell_events.iloc[row]
    assert viewer.dims.point[0] == pytest.approx(event["frame"] * dt)
    particle = results.particles[(results.particles["track_id"] == event["track_id"])
                                 & (results.particles["frame"] == event["frame"])].iloc[0]
    np.testing.assert_allclose(viewer.camera.center[-2:], particle[["y", "x"]].to_numpy(float) * px)
    assert layers["Points"].selected_data == {int(particle.name)}
    assert inspector.correction.track.value() == event["track_id"]

    # a click near a particle picks its track and cell; a click inside a cell away from particles, the cell
    vesicle = results.particles[results.particles["state"] == "vesicular"].iloc[0]
    _click(viewer, (vesicle["frame"] * dt, vesicle["y"] * px + 0.2, vesicle["x"] * px))
    assert inspector.cell_id == vesicle["cell_id"] and inspector.correction.track.value() == vesicle["track_id"]
    other = next(c for c in results.cells["cell_id"] if c != inspector.cell_id)
    pixels = np.argwhere(np.asarray(results.cell_labels[0]) == other)
    frame0 = results.particles.loc[results.particles["frame"] == 0, ["y", "x"]].to_numpy()
    clearance = np.min(np.hypot(*(pixels[:, None, :] - frame0[None, :, :]).transpose(2, 0, 1)), axis=1)
    y, x = pixels[clearance.argmax()]
    assert clearance.max() > 5
    _click(viewer, (0.0, y * px, x * px))
    assert inspector.cell_id == other


def test_filters_choose_the_tracks_shown(inspected, truth_store):
    viewer, layers, inspector = inspected
    results = load_results(truth_store)
    inspector.min_length.setValue(15)
    long = results.tracks.loc[results.tracks["n_detections"] >= 15, "track_id"]
    assert set(layers["Tracks"].data[:, 0].astype(int)) == set(long)
    np.testing.assert_array_equal(layers["Points"].shown, results.particles["track_id"].isin(long))
    assert set(inspector.cell_tracks["track_id"]) <= set(long)

    inspector.min_length.setValue(1)
    inspector.kind_box.setCurrentText("release")
    released = set(results.events.loc[results.events["kind"] == "release", "track_id"])
    assert set(layers["Tracks"].data[:, 0].astype(int)) == released
    assert set(inspector.cell_events["kind"]) <= {"release"}

    inspector.kind_box.setCurrentText("any event")
    from pipeline.stages.motion import motion_segments

    motion = motion_segments(results.particles, pixel_size_um=results.pixel_size_um,
                             frame_interval_s=results.frame_interval_s)
    classes = motion["motion"].value_counts()
    assert len(classes) >= 2  # the simulation has particles that move and particles held in place
    for motion_class in classes.index[:2]:
        inspector.motion_box.setCurrentText(motion_class)
        expected = set(motion.loc[motion["motion"] == motion_class, "track_id"])
        assert set(layers["Tracks"].data[:, 0].astype(int)) == expected
        assert expected != set(results.tracks["track_id"])  # the filter really removes tracks
    inspector.motion_box.setCurrentText("any motion")
    for state in ("extracellular", "released"):
        inspector.state_boxes[state].setChecked(False)
    shown = results.tracks[(results.tracks["n_membrane_bound"] + results.tracks["n_vesicular"]) > 0]["track_id"]
    assert set(layers["Tracks"].data[:, 0].astype(int)) == set(shown)

    for box in inspector.state_boxes.values():
        box.setChecked(False)
    assert not layers["Tracks"].visible and not layers["Points"].shown.any()
    assert inspector.tracks_table.rowCount() == 0
    inspector.state_boxes["vesicular"].setChecked(True)
    assert layers["Tracks"].visible and inspector.tracks_table.rowCount() > 0


def test_a_correction_round_trips_through_the_store_and_updates_kinetics(inspected, truth_store, capsys, qtbot):
    viewer, layers, inspector = inspected
    results = load_results(truth_store)
    events = results.events[results.events["kind"] == "internalization"]
    cell = int(events["cell_id"].value_counts().index[0])
    track = results.tracks.set_index("track_id").loc[int(events[events["cell_id"] == cell]["track_id"].iloc[0])]
    inspector.cell_box.setCurrentText(str(cell))
    panel = inspector.correction
    panel.select_track(int(track.name), int(track["first_frame"]), int(track["last_frame"]))
    panel.state.setCurrentText("membrane_bound")
    panel.add_correction()
    panel.note.setText("not internalised: stays at the membrane")
    with qtbot.waitSignal(panel.saved, timeout=60_000):
        panel.save()
        assert not panel.isEnabled()  # saving runs in a worker thread; the panel waits for it
    assert panel.isEnabled()

    [version] = curation_versions(truth_store)
    assert version["n_corrections"] == 1 and version["note"].startswith("not internalised")
    curated = load_results(truth_store, curated=True)
    before = results.cells.set_index("cell_id").loc[cell, "n_internalization"]
    assert curated.cells.set_index("cell_id").loc[cell, "n_internalization"] == before - 1
    rows = (curated.particles["track_id"] == track.name).to_numpy()
    assert (layers["Points"].features["state"][rows] == "membrane_bound").all()
    np.testing.assert_allclose(layers["Points"].face_color[rows, :3],
                               np.tile(_rgb("membrane_bound"), (rows.sum(), 1)), atol=1e-6)
    cumulative = inspector.figure.axes[1].get_lines()[0].get_ydata()
    assert cumulative[-1] == curated.kinetics["cum_internalization"].sel(cell_id=cell).values[-1]
    assert "curated (v1)" in inspector.store_label.text()

    # the CLI recomputes the same kinetics from the record; reopening the store shows the corrected states
    assert cli(["kinetics", str(truth_store)]) == 0
    assert "applied curation v1" in capsys.readouterr().out
    np.testing.assert_array_equal(load_results(truth_store, curated=True).cells["n_internalization"],
                                  curated.cells["n_internalization"])
    viewer.layers.clear()
    layers = _open(viewer, truth_store)
    assert (layers["Points"].features["state"][rows] == "membrane_bound").all()

    # a false track, saved as version 2, leaves the layers
    false = int(results.tracks["track_id"].iloc[-1])
    panel.select_track(false, 0, 10**5)
    panel.state.setCurrentText("false track")
    panel.add_correction()
    with qtbot.waitSignal(panel.saved, timeout=60_000):
        panel.save()
    assert [v["n_corrections"] for v in curation_versions(truth_store)] == [1, 2]
    assert false not in set(layers["Points"].features["track_id"])
    assert false not in set(layers["Tracks"].data[:, 0].astype(int))
    assert false not in set(load_results(truth_store, curated=True).tracks["track_id"])
    assert (layers["Points"].features["state"][layers["Points"].features["track_id"] == track.name]
            == "membrane_bound").all()


def test_a_failed_save_says_why_and_leaves_the_panel_usable(qtbot, tmp_path):
    """Saving into something that is not a store reports the error in the panel, writes nothing."""
    from napari_uptrack._curation_widget import CorrectionPanel

    calls = []
    panel = CorrectionPanel(on_saved=lambda: calls.append("saved"))
    qtbot.addWidget(panel)
    panel.path = tmp_path / "not_a_store.zarr"
    panel.select_track(3, 0, 5)
    panel.add_correction()
    panel.save()
    qtbot.waitUntil(panel.isEnabled, timeout=30_000)
    assert "not_a_store.zarr" in panel.status.text() and not calls
    assert not (tmp_path / "not_a_store.zarr").exists()


# --- detection tuning and run widgets ----------------------------------------------------------


def test_tuning_previews_detections_live_and_saves_a_valid_config(make_napari_viewer, truth_store, tmp_path, qtbot):
    from pipeline.run.config import load_config

    viewer = make_napari_viewer()
    _open(viewer, truth_store)
    tuning = _dock(viewer, "Detection tuning")
    assert tuning.layer.metadata["uptrack"]["channel"] == "particles"
    viewer.dims.set_point(0, 5 * load_results(truth_store).frame_interval_s)
    tuning.diameter.setValue(0.8)
    tuning.min_snr.setValue(4.0)
    tuning.auto_separation.setChecked(False)
    tuning.separation.setValue(0.3)  # the live preview runs once the changes settle
    qtbot.waitUntil(lambda: "detection preview" in viewer.layers and tuning.worker is None
                    and not tuning.timer.isActive(), timeout=30000)
    assert tuning.status.text().startswith("frame 5:") and "min_snr 4" in tuning.status.text()
    rings = viewer.layers["detection preview"].data
    assert len(rings) > 5 and (rings[:, 0] == 5).all()
    [ax] = tuning.figure.axes
    assert ax.get_xscale() == "log" and len(ax.patches) > 0 and len(ax.get_lines()) == 1

    path = tuning.save_config(tmp_path / "tuned.yaml")
    config = load_config(path)
    assert (config.detect.spot_diameter_um, config.detect.min_snr, config.detect.separation_um) == (0.8, 4.0, 0.3)
    assert config.input.channels.particles == "particles"
    assert config.input.path == Path(load_results(truth_store).attrs["input_path"])
    assert yaml.safe_load(path.read_text())["detect"]["min_snr"] == 4.0


def test_run_widget_runs_the_pipeline_in_a_worker_and_opens_its_store(make_napari_viewer, tmp_path, qtbot):
    """The real pipeline (Cellpose, detection, linking, HMM, kinetics) on a tiny movie, from the widget."""
    tiny = SimulationConfig(seed=2, shape=(96, 96), n_frames=6, n_cells=2, cell_radius_um=(4.0, 5.0),
                            n_particles_initial=10, n_bound_initial=6, n_vesicular_initial=6)
    movie = write_simulation(simulate(tiny), tmp_path, "tiny")["movie"]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"path": "replaced-by-the-widget.tif", "channels": {"cells": "cells", "particles": "particles"}},
        "output": {"dir": str(tmp_path / "out")},
        "segment": {"model": str(SAMPLE_MODEL), "diameter_um": 9.0},
        "compute": {"backend": "sync"},
    }))
    viewer = make_napari_viewer()
    viewer.open(movie, plugin="napari")
    widget = _dock(viewer, "Run pipeline")
    widget.config_path.setText(str(config))
    widget.movie_box.setCurrentText(str(movie))
    ticks, progress = [], set()

    def tick():
        """Runs on the GUI thread while the pipeline runs (until the results start loading)."""
        if widget.progress.value() < widget.progress.maximum():
            ticks.append(time.perf_counter())
            progress.add(widget.progress.value())

    timer = QTimer(interval=50)
    timer.timeout.connect(tick)
    timer.start()
    widget.start()
    assert not widget.run_button.isEnabled()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=240000)
    timer.stop()
    assert widget.status.text().startswith("done"), widget.status.text()
    assert len(ticks) > 20 and np.diff(ticks).max() < 3.0, "the viewer's event loop stalled during the run"
    assert progress - {0, widget.progress.maximum()}, "no intermediate progress shown"
    opened = [layer for layer in viewer.layers if "uptrack" in layer.metadata]
    assert [type(layer).__name__ for layer in opened] == ["Image", "Image", "Labels", "Points", "Tracks"]
    results = load_results(tmp_path / "out" / "tiny.zarr")
    assert results.attrs["input_path"] == str(movie) and len(results.particles) > 0
    np.testing.assert_allclose(opened[-1].scale, (tiny.frame_interval_s, tiny.pixel_size_um, tiny.pixel_size_um))


# --- rendering ---------------------------------------------------------------------------------


def test_screenshot_shows_state_colours_where_the_particles_are(make_napari_viewer, sample_store, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 900)
    _open(viewer, sample_store)
    results = load_results(sample_store)
    frame = 30
    viewer.dims.set_point(0, frame * results.frame_interval_s)
    viewer.reset_view()
    image = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float) / 255
    from imageio.v3 import imwrite

    imwrite(tmp_path / "sample_results.png", (image * 255).astype(np.uint8))

    height, width = image.shape[:2]
    centre, zoom = np.asarray(viewer.camera.center[-2:]), viewer.camera.zoom
    here = results.particles[results.particles["frame"] == frame]
    for state in STATES:
        spots = here[here["state"] == state]
        if spots.empty:
            continue
        rows, cols = ((spots[["y", "x"]].to_numpy() * results.pixel_size_um - centre) * zoom
                      + [height / 2, width / 2]).round().astype(int).T
        found = 0
        for r, c in zip(rows, cols):
            window = image[max(r - 8, 0):r + 9, max(c - 8, 0):c + 9]
            found += (np.abs(window - _rgb(state)).max(axis=-1) < 0.12).any()
        assert found >= 0.8 * len(spots), f"{state}: colour at {found} of {len(spots)} particles"
    assert (image.std(axis=(0, 1)) > 0.02).all()  # not a blank canvas
