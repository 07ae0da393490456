"""Aggregates: unit brightness, labels and kinetics by label on tracks drawn from known distributions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.stages.aggregates import brightness_column, label_aggregates, rates_by_label
from pipeline.stages.classify import events_from_states
from pipeline.vocabulary import STATES

DT_S = 3.0
UNIT = 1000.0


def _tracks(rng, n_single, n_aggregate, *, k_single_per_min, k_aggregate_per_min, n_frames=200,
            sigma_log=0.25, column="mass"):
    """Vesicular tracks released after exponential times; aggregates are twice as bright."""
    rows, codes = [], []
    for tid in range(n_single + n_aggregate):
        aggregate = tid >= n_single
        k = k_aggregate_per_min if aggregate else k_single_per_min
        release_frame = int(np.ceil(rng.exponential(60.0 / k) / DT_S))
        last = min(release_frame + 3, n_frames - 1)
        frames = np.arange(0, last + 1)
        state = np.where(frames >= release_frame, STATES.index("released"), STATES.index("vesicular"))
        level = UNIT * (2.0 if aggregate else 1.0) * np.exp(rng.normal(0, 0.15))  # per-track offset
        brightness = level * np.exp(rng.normal(0, sigma_log, len(frames)))  # fluctuates along the track
        rows.append(pd.DataFrame({"track_id": tid, "frame": frames, "cell_id": 1, column: brightness,
                                  "y": 0.0, "x": 0.0}))
        codes.append(state)
    particles, events = events_from_states(pd.concat(rows, ignore_index=True), np.concatenate(codes),
                                           frame_interval_s=DT_S)
    return particles, events


@pytest.mark.parametrize("column", ["mass", "integrated_intensity"])
def test_aggregates_twice_as_bright_are_found_and_their_release_rate_recovered(column):
    rng = np.random.default_rng(5)
    n_single, n_aggregate = 300, 100
    particles, events = _tracks(rng, n_single, n_aggregate, k_single_per_min=0.4, k_aggregate_per_min=0.1,
                                column=column)
    assert brightness_column(particles) == column
    labelled, tracks, fit = label_aggregates(particles)
    assert fit["unit_brightness"] == pytest.approx(UNIT, rel=0.1)
    truth = np.where(tracks["track_id"] >= n_single, "aggregate", "single")
    assert (tracks["aggregate_label"] == truth).mean() >= 0.9
    # twice as bright: the fitted aggregate fraction and the spot ratio
    assert fit["weights"][1] == pytest.approx(n_aggregate / (n_single + n_aggregate), abs=0.07)
    agg = labelled["track_id"] >= n_single
    assert labelled.loc[agg, "particles_per_spot"].median() == pytest.approx(2.0, rel=0.15)
    rates = rates_by_label(labelled, events, tracks, frame_interval_s=DT_S).set_index("aggregate_label")
    for label, k in (("single", 0.4), ("aggregate", 0.1)):
        low, high = rates.loc[label, "k_release_per_min_ci_low"], rates.loc[label, "k_release_per_min_ci_high"]
        assert low <= k <= high, (label, low, high)


def test_aggregates_outnumbering_singles_are_not_taken_for_the_unit():
    rng = np.random.default_rng(6)
    particles, _ = _tracks(rng, 120, 200, k_single_per_min=0.3, k_aggregate_per_min=0.3)
    _, tracks, fit = label_aggregates(particles)
    assert fit["unit_brightness"] == pytest.approx(UNIT, rel=0.12)


def test_a_broad_brightness_distribution_without_aggregates_is_all_singles():
    rng = np.random.default_rng(8)
    particles, _ = _tracks(rng, 300, 0, k_single_per_min=0.3, k_aggregate_per_min=0.3, sigma_log=0.4)
    particles["mass"] = particles["mass"] * np.exp(rng.normal(0, 0.3, len(particles["track_id"].unique())))[
        particles["track_id"].to_numpy()]  # wide spread between tracks too
    _, tracks, fit = label_aggregates(particles)
    assert fit["model"] == "single"
    assert (tracks["aggregate_label"] == "single").mean() >= 0.95
