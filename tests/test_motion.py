"""Motion classes, D, alpha and directed runs on tracks drawn from known motion models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.stages.motion import MotionParams, directed_runs, motion_segments

PX_UM, DT_S = 0.1, 1.0
SIGMA_PX = 0.3  # localisation error, px


def _track(track_id, yx_um, rng, state="vesicular", cell_id=1):
    noisy = yx_um / PX_UM + rng.normal(0, SIGMA_PX, yx_um.shape)
    return pd.DataFrame({"track_id": track_id, "frame": np.arange(len(yx_um)), "y": noisy[:, 0],
                         "x": noisy[:, 1], "state": state, "cell_id": cell_id})


def _brownian(rng, n, D_um2_s):
    return np.cumsum(rng.normal(0, np.sqrt(2 * D_um2_s * DT_S), (n, 2)), axis=0) + 20


def _confined(rng, n, D_um2_s, radius_um):
    pos, out = np.zeros(2), []
    for _ in range(n):
        new = pos + rng.normal(0, np.sqrt(2 * D_um2_s * DT_S), 2)
        while np.linalg.norm(new) > radius_um:  # reflect by redrawing
            new = pos + rng.normal(0, np.sqrt(2 * D_um2_s * DT_S), 2)
        pos = new
        out.append(pos.copy())
    return np.array(out) + 20


def test_each_motion_model_gets_its_class_and_free_D_is_recovered():
    rng = np.random.default_rng(0)
    tracks, truth = [], {}
    for i in range(10):
        tracks.append(_track(4 * i, _brownian(rng, 100, 0.02), rng))
        truth[4 * i] = "free"
        tracks.append(_track(4 * i + 1, _confined(rng, 100, 0.02, 0.25), rng))
        truth[4 * i + 1] = "confined"
        v = 0.2 * np.array([np.cos(i), np.sin(i)])  # 0.2 um/s in a direction
        tracks.append(_track(4 * i + 2, 20 + np.arange(100)[:, None] * v * DT_S + _brownian(rng, 100, 0.001) - 20,
                             rng))
        truth[4 * i + 2] = "directed"
        tracks.append(_track(4 * i + 3, np.full((100, 2), 20.0) + _brownian(rng, 100, 1e-6) - 20, rng))
        truth[4 * i + 3] = "immobile"
    seg = motion_segments(pd.concat(tracks, ignore_index=True), pixel_size_um=PX_UM, frame_interval_s=DT_S)
    seg["truth"] = seg["track_id"].map(truth)
    accuracy = (seg["motion"] == seg["truth"]).groupby(seg["truth"]).mean()
    assert (accuracy >= 0.9).all(), accuracy
    free = seg[seg["truth"] == "free"]
    assert free["D_um2_s"].median() == pytest.approx(0.02, rel=0.15)
    assert free["alpha"].median() == pytest.approx(1.0, abs=0.15)


def test_a_directed_run_inside_a_random_walk_is_found_with_its_speed_and_duration():
    rng = np.random.default_rng(1)
    speed, run = 0.3, slice(30, 46)  # um/s, frames 30..45 (15 s)
    walk = _brownian(rng, 80, 0.0005)
    step = np.zeros((80, 2))
    step[run.start + 1:run.stop, 1] = speed * DT_S
    yx = walk + np.cumsum(step, axis=0)
    runs = directed_runs(_track(7, yx, rng), pixel_size_um=PX_UM, frame_interval_s=DT_S,
                         params=MotionParams(run_speed_um_s=0.1))
    assert len(runs) == 1
    r = runs.iloc[0]
    assert abs(r["first_frame"] - run.start) <= 2 and abs(r["last_frame"] - (run.stop - 1)) <= 2
    assert r["speed_um_s"] == pytest.approx(speed, rel=0.2)
    assert r["duration_s"] == pytest.approx((run.stop - 1 - run.start) * DT_S, abs=3 * DT_S)


def test_random_walks_make_few_false_runs():
    rng = np.random.default_rng(2)
    tracks = pd.concat([_track(i, _brownian(rng, 100, 0.005), rng) for i in range(20)], ignore_index=True)
    runs = directed_runs(tracks, pixel_size_um=PX_UM, frame_interval_s=DT_S)
    minutes = 20 * 100 * DT_S / 60
    assert len(runs) / minutes < 0.3  # false runs per track-minute (measured 0.15 at this D)
