"""Tests of the ground-truth movie simulator (pipeline.sim.simulate and its helpers)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from pipeline.cli.app import main as cli_main
from pipeline.sim import preview as sim_preview
from pipeline.sim.cells import place_cells
from pipeline.sim.simulate import SimulationConfig, load_truth, simulate, simulate_cell_images, write_simulation
from pipeline.vocabulary import EVENT_OF_TRANSITION, STATES

SMALL = dict(shape=(128, 160), n_frames=30, n_cells=3, cell_radius_um=(4.0, 6.0), seed=3)


@pytest.fixture(scope="module")
def small_sim():
    return simulate(SimulationConfig(**SMALL, particle_arrival_per_min=40, D_free_um2_s=0.3,
                                     k_internalization_per_min=2.0, k_release_per_min=1.0))


# -- rates ---------------------------------------------------------------------------------


def test_events_reproduce_configured_rates():
    config = SimulationConfig(
        shape=(192, 192), n_frames=120, frame_interval_s=1.0, n_cells=4, cell_radius_um=(5.0, 7.0),
        n_particles_initial=20, n_bound_initial=250, n_vesicular_initial=120, particle_arrival_per_min=60,
        D_free_um2_s=0.5, p_binding_per_contact=1.0, k_internalization_per_min=2.0, k_release_per_min=1.5,
        k_unbinding_per_min=0.5, cell_rate_cv=0.0, seed=11)
    cells = simulate(config).truth.cells
    checks = [("n_internalization", "membrane_bound_time_s", config.k_internalization_per_min),
              ("n_unbinding", "membrane_bound_time_s", config.k_unbinding_per_min),
              ("n_release", "vesicular_time_s", config.k_release_per_min)]
    for count, risk, k in checks:
        n = cells[count].sum()
        k_hat = n / (cells[risk].sum() / 60.0)
        assert n >= 40, (count, n)
        assert abs(k_hat - k) < 3 * k / np.sqrt(n), (count, n, k_hat, k)


def test_events_happen_within_the_frame_interval_they_are_logged_in(small_sim):
    """An event at frame f happened in (f-1, f] frame intervals, even two in one interval."""
    events, dt = small_sim.truth.events, small_sim.config.frame_interval_s
    assert len(events) > 20
    end_s = events["frame"] * dt
    assert ((events["time_s"] > end_s - dt - 1e-6) & (events["time_s"] <= end_s + 1e-6)).all()


def test_per_cell_rates_vary_with_cv():
    truth = simulate(SimulationConfig(**{**SMALL, "n_frames": 2, "cell_rate_cv": 0.5})).truth
    assert truth.cells["k_internalization_per_min"].nunique() == 3
    flat = simulate(SimulationConfig(**{**SMALL, "n_frames": 2, "cell_rate_cv": 0.0})).truth
    assert np.allclose(flat.cells["k_release_per_min"], 0.1)


# -- optics --------------------------------------------------------------------------------


@pytest.mark.parametrize("snr", [3.0, 10.0])
def test_requested_snr_is_met(snr):
    """Chenouard SNR measured from pixels: peak above background over the noise std at the peak."""
    config = SimulationConfig(shape=(128, 128), n_frames=40, n_cells=0, n_particles_initial=150,
                              n_bound_initial=0, n_vesicular_initial=0, particle_arrival_per_min=0,
                              D_free_um2_s=0.0, brightness_sigma=0.0, snr=snr, seed=5)
    sim = simulate(config)
    first = sim.truth.particles[sim.truth.particles["frame"] == 0]
    y, x = first["y"].to_numpy(), first["x"].to_numpy()
    iy, ix = np.rint(y).astype(int), np.rint(x).astype(int)
    centred = (np.abs(y - iy) < 0.2) & (np.abs(x - ix) < 0.2)
    near = np.zeros(config.shape, bool)
    near[np.clip(iy, 0, 127), np.clip(ix, 0, 127)] = True
    far = ~ndimage.binary_dilation(near, iterations=4)
    movie = sim.movie[:, 1].astype(float)
    background = movie[:, far].mean()
    peaks = movie[:, iy[centred], ix[centred]]  # (frames, particles)
    measured = (peaks.mean(axis=0) - background).mean() / np.sqrt(peaks.var(axis=0, ddof=1).mean())
    assert centred.sum() >= 10
    assert measured == pytest.approx(snr, rel=0.2)


def test_ome_metadata_round_trips(tmp_path, small_sim):
    written = write_simulation(small_sim, tmp_path, "movie")
    with tifffile.TiffFile(written["movie"]) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "TCYX"
        assert series.shape == (30, 2, 128, 160)
        assert series.dtype == np.uint16
        pixels = tif.ome_metadata
        data = series.asarray()
    assert 'PhysicalSizeX="0.2"' in pixels and 'PhysicalSizeY="0.2"' in pixels
    assert 'PhysicalSizeXUnit="µm"' in pixels
    assert 'TimeIncrement="3.0"' in pixels and 'TimeIncrementUnit="s"' in pixels
    assert 'Name="cells"' in pixels and 'Name="particles"' in pixels
    np.testing.assert_array_equal(data, small_sim.movie)
    truth = load_truth(written["movie"])
    np.testing.assert_array_equal(truth.cell_labels, small_sim.truth.cell_labels)
    assert truth.meta["pixel_size_um"] == 0.2 and truth.meta["frame_interval_s"] == 3.0
    assert len(truth.particles) == len(small_sim.truth.particles)
    assert set(truth.events["kind"]) <= set(EVENT_OF_TRANSITION.values())


def test_same_seed_same_bytes_other_seed_other_movie(tmp_path):
    config = SimulationConfig(**{**SMALL, "n_frames": 8, "nuclei_channel": True})
    paths = [write_simulation(simulate(config), tmp_path / name, "m") for name in ("a", "b")]
    for first, second in zip([paths[0]["movie"], *paths[0]["truth"]], [paths[1]["movie"], *paths[1]["truth"]]):
        assert first.read_bytes() == second.read_bytes(), first.name
    other = simulate(config.model_copy(update={"seed": 4}))
    assert not np.array_equal(other.movie, tifffile.imread(paths[0]["movie"]))


# -- cells ---------------------------------------------------------------------------------


def test_cells_never_overlap_even_densely_packed():
    rng = np.random.default_rng(0)
    layout = place_cells(rng, 12, (200, 200), (22.0, 32.0), spacing=0.8, irregularity=0.2, gap_px=1.0)
    yy, xx = np.mgrid[0:200, 0:200]
    cell, rho, _, _ = layout.locate(yy.ravel().astype(float), xx.ravel().astype(float))
    claims = np.zeros(yy.size, int)
    for i in range(layout.n_cells):  # each cell rasterised on its own
        dy, dx = yy.ravel() - layout.centers[i, 0], xx.ravel() - layout.centers[i, 1]
        dist = np.maximum(np.hypot(dy, dx), 1e-9)
        claims += dist < layout.radius(np.full(dy.shape, i), dy / dist, dx / dist)
    assert claims.max() == 1
    labels = np.where(rho < 1, cell + 1, 0).reshape(200, 200)
    touching = [i for i in range(1, layout.n_cells + 1)
                if np.any(np.isin(labels[ndimage.binary_dilation(labels == i, iterations=2)], [0, i],
                                  invert=True))]
    assert len(touching) >= 2, "dense packing should make cells touch"


def test_cells_stable_irregular_and_visible(small_sim):
    labels = small_sim.truth.cell_labels
    ids = [set(np.unique(frame)) - {0} for frame in labels]
    assert all(found == {1, 2, 3} for found in ids)
    centroids = np.array([ndimage.center_of_mass(frame > 0, frame, [1, 2, 3]) for frame in labels])
    assert np.abs(np.diff(centroids, axis=0)).max() < 3.0  # slow drift, no id swaps
    changed = (labels[0] != labels[-1]).mean()
    assert 0 < changed < 0.2  # cells move and deform, slowly
    cvs = []
    for i in (1, 2, 3):
        mask = labels[0] == i
        edge = np.argwhere(mask & ~ndimage.binary_erosion(mask))
        radius = np.hypot(*(edge - edge.mean(axis=0)).T)
        cvs.append(radius.std() / radius.mean())
    assert np.mean(cvs) > 0.05, cvs  # not circles
    cells_channel = small_sim.movie[:, 0]
    assert cells_channel[labels > 0].mean() > 1.5 * cells_channel[labels == 0].mean()


def test_simulate_cell_images_shapes_and_labels():
    images, masks = simulate_cell_images(3, shape=(96, 128), seed=2, cell_radius_um=(3.0, 5.0), n_cells=(2, 4))
    assert images.shape == masks.shape == (3, 96, 128)
    assert images.dtype == np.float32 and masks.dtype == np.uint16
    for image, mask in zip(images, masks):
        ids = np.unique(mask)
        assert ids[0] == 0 and np.array_equal(ids, np.arange(len(ids))) and len(ids) >= 3
        assert image[mask > 0].mean() > image[mask == 0].mean()
    again, _ = simulate_cell_images(3, shape=(96, 128), seed=2, cell_radius_um=(3.0, 5.0), n_cells=(2, 4))
    np.testing.assert_array_equal(images, again)


# -- particles -----------------------------------------------------------------------------


def test_states_follow_allowed_transitions(small_sim):
    particles, events = small_sim.truth.particles, small_sim.truth.events
    assert set(particles["state"]) <= set(STATES)
    assert {"binding", "internalization", "release"} <= set(events["kind"])
    logged = events.groupby(["particle_id", "frame"])["kind"].apply(tuple).to_dict()
    for pid, track in particles.sort_values("frame").groupby("particle_id"):
        frames = track["frame"].to_numpy()
        assert np.all(np.diff(frames) == 1), "a particle never re-enters"
        states = track["state"].to_numpy()
        for frame, before, after in zip(frames[1:], states[:-1], states[1:]):
            kinds = logged.get((pid, frame), ())
            path = [before]
            for kind in kinds:  # events of one frame chain from the previous state to this one
                nxt = [b for (a, b), k in EVENT_OF_TRANSITION.items() if a == path[-1] and k == kind]
                assert nxt, (pid, frame, path, kind)
                path.append(nxt[0])
            assert path[-1] == after, (pid, frame, before, after, kinds)


def test_cell_ids_and_positions_match_states(small_sim):
    particles, labels = small_sim.truth.particles, small_sim.truth.cell_labels
    assert (particles.loc[particles["state"] == "extracellular", "cell_id"] == 0).all()
    assert (particles.loc[particles["state"] != "extracellular", "cell_id"] > 0).all()
    iy = np.clip(np.rint(particles["y"]).astype(int), 0, labels.shape[1] - 1)
    ix = np.clip(np.rint(particles["x"]).astype(int), 0, labels.shape[2] - 1)
    under = labels[particles["frame"], iy, ix]
    vesicular = (particles["state"] == "vesicular").to_numpy()
    assert vesicular.sum() > 20
    assert np.array_equal(under[vesicular], particles["cell_id"].to_numpy()[vesicular])
    bound = np.flatnonzero((particles["state"] == "membrane_bound").to_numpy())
    assert len(bound) > 20
    padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)))
    frames, cells = particles["frame"].to_numpy()[bound], particles["cell_id"].to_numpy()[bound]
    windows = np.stack([padded[frames, iy.to_numpy()[bound] + dy, ix.to_numpy()[bound] + dx]
                        for dy in range(3) for dx in range(3)], axis=1)
    inside = (windows == cells[:, None]).any(axis=1)
    outside = (windows != cells[:, None]).any(axis=1)
    assert np.all(inside & outside), "membrane_bound particles sit within 1 px of their cell's boundary"


def test_blinking_and_bleaching_in_truth():
    truth = simulate(SimulationConfig(**SMALL, blink_probability=0.3, bleach_rate_per_frame=0.05)).truth
    assert 0.2 < 1 - truth.particles["visible"].mean() < 0.4
    track = truth.particles[truth.particles["particle_id"] == 0]
    assert np.allclose(np.diff(np.log(track["photons"])), -0.05, atol=1e-3)


# -- command line --------------------------------------------------------------------------


def test_cli_writes_movie_truth_and_preview(tmp_path, capsys):
    config = tmp_path / "sim.yaml"
    config.write_text("shape: [96, 96]\nn_frames: 6\nn_cells: 2\ncell_radius_um: [3.0, 5.0]\n")
    code = cli_main(["simulate", str(tmp_path / "out"), "--name", "demo", "--config", str(config),
                     "--set", "snr=4", "--seed", "7", "--preview"])
    assert code == 0
    out = capsys.readouterr().out
    assert "demo.ome.tif" in out and "events:" in out and "2 cells" in out
    assert (tmp_path / "out" / "demo_preview.png").stat().st_size > 10_000
    truth = load_truth(tmp_path / "out" / "demo.truth")
    assert truth.meta["seed"] == 7 and truth.meta["config"]["snr"] == 4
    assert sim_preview.main([str(tmp_path / "out" / "demo.ome.tif"), str(tmp_path / "again.png"), "--panels", "2"]) == 0
    assert (tmp_path / "again.png").is_file()
    assert cli_main(["simulate", str(tmp_path / "bad"), "--set", "no_such_field=1"]) == 2
    assert cli_main(["simulate", str(tmp_path / "bad"), "--set", "n_cells=40"]) == 2


def test_crossing_frames_move_new_vesicles_in_over_several_frames():
    from pipeline.sim.simulate import SimulationConfig, simulate
    from pipeline.stages.zones import ZoneParams, assign_zones

    fields = dict(shape=(192, 192), n_frames=30, n_cells=3, n_bound_initial=30, n_vesicular_initial=0,
                  n_particles_initial=0, particle_arrival_per_min=0, k_internalization_per_min=2.0,
                  k_release_per_min=0.0, k_unbinding_per_min=0.0, seed=4)
    depth = {}
    for frames in (0, 4):
        sim = simulate(SimulationConfig(**fields, crossing_frames=frames))
        t = sim.truth
        parts = t.particles.reset_index(drop=True)
        zoned = assign_zones(parts[["frame", "y", "x"]], t.cell_labels, pixel_size_um=0.2, params=ZoneParams())
        parts["d"] = zoned["distance_um"].to_numpy()
        ev = t.events[t.events["kind"] == "internalization"]
        assert len(ev) >= 10
        at = parts.merge(ev[["particle_id", "frame"]], on=["particle_id", "frame"])
        depth[frames] = at["d"].median()
    assert depth[0] < -0.8  # at once at interior depth (rho 0.85 of a ~7 µm cell)
    assert -0.5 < depth[4] < 0  # just inside the membrane at the event frame
