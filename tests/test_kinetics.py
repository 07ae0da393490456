"""Kinetics: rates with exact intervals under censoring, per-cell time series, and the
zones → classify → kinetics chain on simulated ground truth."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2

from pipeline.stages.classify import ClassifyParams, classify_tracks, events_from_states
from pipeline.stages.kinetics import KineticsParams, cell_kinetics, cell_rates, poisson_rate_ci
from pipeline.stages.zones import ZoneParams, assign_zones
from pipeline.vocabulary import EVENTS, STATES

DT_S = 3.0
PARAMS = KineticsParams()
E, M, V, R = range(4)


def test_poisson_interval_matches_chi_square_form():
    n, t = np.array([0, 1, 10, 250]), np.array([2.0, 2.0, 5.0, 100.0])
    rate, low, high = poisson_rate_ci(n, t, 0.9)
    np.testing.assert_allclose(rate, n / t)
    np.testing.assert_allclose(low, np.r_[0.0, chi2.ppf(0.05, 2 * n[1:]) / (2 * t[1:])])
    np.testing.assert_allclose(high, chi2.ppf(0.95, 2 * n + 2) / (2 * t))
    assert np.isnan(poisson_rate_ci(np.array([3]), np.array([0.0]), 0.95)).all()


def _censored_membrane_dwells(rng, *, n_cells, n_particles, k_per_min, k_censor_per_min):
    """Particles bound at t = 0 that internalise at rate k; tracks lost at an independent rate.

    Every particle is imaged every frame while tracked; the first detection after internalization is
    vesicular. One cell per replicate. Returns (particles, events, naive mean observed dwell per cell, min).
    """
    n = n_cells * n_particles
    dwell_s = rng.exponential(60 / k_per_min, n)
    last_frame = np.floor(rng.exponential(60 / k_censor_per_min, n) / DT_S).astype(np.int64)
    length = last_frame + 1
    track = np.repeat(np.arange(n), length)
    frame = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
    state = np.where(frame * DT_S < dwell_s[track], M, V)
    cell = track // n_particles + 1
    particles = pd.DataFrame({"track_id": track, "frame": frame, "cell_id": cell})
    particles, events = events_from_states(particles, state, frame_interval_s=DT_S)
    observed_dwell_min = np.minimum(np.ceil(dwell_s / DT_S), last_frame) * DT_S / 60
    naive = pd.Series(observed_dwell_min).groupby(np.arange(n) // n_particles + 1).mean()
    return particles, events, naive


def test_rate_under_censoring_is_unbiased_with_honest_intervals():
    k = 0.2  # per min, ~1 % per 3 s frame
    rng = np.random.default_rng(7)
    particles, events, naive_dwell = _censored_membrane_dwells(rng, n_cells=200, n_particles=40, k_per_min=k,
                                                               k_censor_per_min=0.2)
    cells, movie = cell_rates(particles, events, frame_interval_s=DT_S, params=PARAMS)
    covered = (cells["k_internalization_per_min_ci_low"] <= k) & (k <= cells["k_internalization_per_min_ci_high"])
    assert 0.90 <= covered.mean() <= 0.99
    assert movie["k_internalization_per_min"].iloc[0] == pytest.approx(k, rel=0.05)
    assert movie["k_internalization_per_min_ci_low"].iloc[0] < k < movie["k_internalization_per_min_ci_high"].iloc[0]
    assert (1 / naive_dwell).mean() > 1.5 * k  # the naive "mean observed dwell" counts censored dwells as done
    assert (cells["n_unbinding"] == 0).all() and (cells["k_unbinding_per_min"] == 0).all()
    # per-cell counts and times sum to the pooled ones
    for column in [f"n_{kind}" for kind in EVENTS] + ["membrane_bound_time_min", "vesicular_time_min"]:
        assert cells[column].sum() == pytest.approx(movie[column].iloc[0])


def _hand_example():
    """Track 1 (cell 1): M M M V _ V (frame 4 skipped); track 2 (cell 2): E E; track 3 (cell 1): V R R."""
    particles = pd.DataFrame({
        "track_id": [1, 1, 1, 1, 1, 2, 2, 3, 3, 3],
        "frame": [0, 1, 2, 3, 5, 1, 2, 2, 3, 4],
        "cell_id": [1, 1, 1, 1, 1, 2, 2, 1, 0, 0],
        "mass": [1.0, 1.0, 1.0, 2.0, 3.0, 9.0, 9.0, 5.0, 5.0, 5.0],
    })
    state = np.array([M, M, M, V, V, E, E, V, R, R])
    return events_from_states(particles, state, frame_interval_s=DT_S)


def test_kinetics_dataset_on_a_hand_built_example():
    particles, events = _hand_example()
    ds = cell_kinetics(particles, events, frame_interval_s=DT_S, n_frames=6, cell_ids=[1, 2])
    np.testing.assert_array_equal(ds["time_s"], np.arange(6) * DT_S)
    one = ds.sel(cell_id=1)
    np.testing.assert_array_equal(one["n_membrane_bound"], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(one["n_vesicular"], [0, 0, 1, 1, 1, 1])  # frame 4 kept by the skipped frame
    np.testing.assert_array_equal(one["n_released"], [0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(one["cum_internalization"], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(one["cum_release"], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(one["cum_binding"], 0)
    np.testing.assert_allclose(one["internalized_mass"], [0, 0, 5, 2, 2, 3])
    np.testing.assert_array_equal(ds.sel(cell_id=2)["n_extracellular"], [0, 1, 1, 0, 0, 0])
    assert all(ds[f"n_{s}"].dtype == np.int64 for s in STATES)
    assert np.isnan(cell_kinetics(particles.drop(columns="mass"), events, frame_interval_s=DT_S, n_frames=6,
                                  cell_ids=[1])["internalized_mass"]).all()


def test_rates_on_the_hand_built_example():
    particles, events = _hand_example()
    geometry = pd.DataFrame({"cell_id": [1, 2, 5], "first_frame": [0, 0, 0], "last_frame": [5, 5, 5],
                             "mean_area_um2": [100.0, 120.0, 80.0]})
    cells, movie = cell_rates(particles, events, frame_interval_s=DT_S, params=PARAMS, cells=geometry)
    one = cells.set_index("cell_id").loc[1]
    # membrane_bound: two whole frames + half of the M -> V interval; vesicular: that half, the
    # two-frame gap of track 1, half of track 3's V -> R interval; the last detections add nothing
    assert one["membrane_bound_time_min"] == pytest.approx(2.5 * DT_S / 60)
    assert one["vesicular_time_min"] == pytest.approx(3.0 * DT_S / 60)
    assert one["k_internalization_per_min"] == pytest.approx(1 / (2.5 * DT_S / 60))
    assert one["exocytosis_half_life_min"] == pytest.approx(np.log(2) * 3.0 * DT_S / 60)
    assert one["exocytosis_half_life_min_ci_low"] < one["exocytosis_half_life_min"] < one[
        "exocytosis_half_life_min_ci_high"]
    assert one["membrane_dwell_min"] == pytest.approx(2.5 * DT_S / 60)
    assert one["k_unbinding_per_min"] == 0 and one["k_unbinding_per_min_ci_low"] == 0
    empty = cells.set_index("cell_id").loc[5]  # a cell without particles: no time at risk, NaN not 0
    assert empty["n_internalization"] == 0 and np.isnan(empty["k_internalization_per_min"])
    assert np.isnan(empty["membrane_dwell_min_ci_low"]) and empty["mean_area_um2"] == 80.0
    no_release = cells.set_index("cell_id").loc[2]
    assert np.isnan(no_release["exocytosis_half_life_min"])
    assert movie["n_internalization"].iloc[0] == 1 and movie["n_release"].iloc[0] == 1
    assert movie["k_internalization_per_min"].iloc[0] == pytest.approx(one["k_internalization_per_min"])


@pytest.mark.parametrize("d_free_um2_s", [0.02, 0.2])
def test_zones_classify_kinetics_on_simulated_truth(d_free_um2_s):
    simulate = pytest.importorskip("pipeline.sim.simulate")
    sim = simulate.simulate(simulate.SimulationConfig(seed=0, shape=(256, 256), n_cells=4, n_frames=120,
                                                      D_free_um2_s=d_free_um2_s))
    truth, meta = sim.truth, sim.truth.meta
    rng = np.random.default_rng(0)
    detections = truth.particles[["frame", "particle_id", "y", "x"]].rename(columns={"particle_id": "track_id"})
    detections = detections.assign(y=detections["y"] + rng.normal(0, 0.3, len(detections)),
                                   x=detections["x"] + rng.normal(0, 0.3, len(detections)))
    zoned = assign_zones(detections, truth.cell_labels, pixel_size_um=meta["pixel_size_um"], params=ZoneParams())
    particles, events = classify_tracks(zoned, frame_interval_s=meta["frame_interval_s"], params=ClassifyParams())
    assert (particles["state"].to_numpy() == truth.particles["state"].to_numpy()).mean() >= 0.95

    _, movie = cell_rates(particles, events, frame_interval_s=meta["frame_interval_s"], params=PARAMS)
    cells = truth.cells
    for kind, time in (("internalization", "membrane_bound_time_s"), ("release", "vesicular_time_s")):
        true_rate = cells[f"n_{kind}"].sum() / cells[time].sum() * 60
        assert movie[f"k_{kind}_per_min"].iloc[0] == pytest.approx(true_rate, rel=0.2)
