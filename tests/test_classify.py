"""The temporal model: states per detection, events, tracks table."""

import numpy as np
import pandas as pd
import pytest

from pipeline.stages.classify import (
    EVENTS_OF_JUMP,
    TIME_SHARE,
    ClassifyParams,
    classify_by_zone,
    classify_tracks,
    events_from_states,
    summarize_tracks,
)
from pipeline.vocabulary import STATES

DT_S = 3.0
PX_UM = 0.2
BAND_UM = 0.5
PARAMS = ClassifyParams()
E, M, V, R = range(4)


def _table(track_id, frame, state, distance_um, y_um, x_um, rng, *, loc_px=0.3, cell_id=1):
    """Detections with zones from true positions: ``distance_um`` already noisy, positions get ``loc_px``."""
    distance_um = np.asarray(distance_um, float)
    df = pd.DataFrame({
        "track_id": np.asarray(track_id, np.int64),
        "frame": np.asarray(frame, np.int64),
        "y": np.asarray(y_um) / PX_UM + rng.normal(0, loc_px, len(distance_um)),
        "x": np.asarray(x_um) / PX_UM + rng.normal(0, loc_px, len(distance_um)),
        "cell_id": np.broadcast_to(np.asarray(cell_id, np.int64), distance_um.shape).copy(),
        "distance_um": distance_um,
        "zone": np.where(distance_um < -BAND_UM, "inside", np.where(np.abs(distance_um) <= BAND_UM,
                                                                    "membrane", "outside")),
    })
    df["true_state"] = np.asarray(STATES)[np.asarray(state)]
    return df


def _simulated_tracks(rng, *, n_tracks=200, n_frames=60, rates_per_min=(0.3, 0.1, 0.5, 0.3), noise_um=0.3,
                      d_free_um2_s=0.05):
    """Tracks from a continuous-time E/M/V/R chain next to a flat membrane (the line y = 0, cell below).

    Free particles diffuse and bounce off the membrane, bound ones slide along it, vesicles
    wander at depth 0.6-4 µm. The measured distance gets Gaussian noise ``noise_um`` (segmentation
    error, frame to frame), positions 0.3 px localisation noise.
    """
    k_bind, k_unbind, k_int, k_rel = (k / 60 * DT_S for k in rates_per_min)
    free, bound, vesicle = (np.sqrt(2 * d * DT_S) for d in (d_free_um2_s, 0.002, 0.005))
    rows = []
    for track in range(n_tracks):
        state = rng.choice(3, p=[0.6, 0.2, 0.2])
        y = (rng.uniform(0.3, 3), 0.0, -rng.uniform(0.8, 3))[state]
        x = rng.uniform(0, 50)
        for frame in range(n_frames):
            rows.append((track, frame, state, y, x))
            u = rng.random()
            if state == E and u < -np.expm1(-k_bind):
                state, y = M, 0.0
            elif state == M and u < -np.expm1(-(k_unbind + k_int)):
                state, y = (V, -0.8) if rng.random() < k_int / (k_unbind + k_int) else (E, 0.3)
            elif state == V and u < -np.expm1(-k_rel):
                state, y = R, 0.3
            elif state in (E, R):
                y, x = abs(y + rng.normal(0, free)), x + rng.normal(0, free)
            elif state == M:
                x += rng.normal(0, bound)
            else:
                y, x = -np.clip(-y + rng.normal(0, vesicle), 0.6, 4.0), x + rng.normal(0, vesicle)
    track, frame, state, y, x = map(np.asarray, zip(*rows))
    return _table(track, frame, state, y + rng.normal(0, noise_um, len(y)), y, x, rng)


def _scripted(states_runs, rng, *, noise_um=0.15, track_id=0, first_frame=0):
    """One track from [(state, n_frames), ...]: E/R at +2 µm, M at 0, V at -2 µm, plus noise."""
    state = np.concatenate([[s] * n for s, n in states_runs])
    level = np.array([2.0, 0.0, -2.0, 2.0])[state]
    y = level
    x = rng.normal(0, 0.5, len(state)).cumsum() * np.isin(state, (E, R))  # free particles wander
    frames = first_frame + np.arange(len(state))
    return _table(np.full(len(state), track_id), frames, state, level + rng.normal(0, noise_um, len(state)), y, x,
                  rng)


def _accuracy(df, classified):
    return float((classified["state"].to_numpy() == df["true_state"].to_numpy()).mean())


def _kinds(events):
    return events["kind"].value_counts().to_dict()


def test_hmm_is_accurate_and_beats_the_per_frame_rule():
    rng = np.random.default_rng(1)
    df = _simulated_tracks(rng)
    hmm, events = classify_tracks(df, frame_interval_s=DT_S, params=PARAMS)
    rule, rule_events = classify_by_zone(df, frame_interval_s=DT_S)
    true_changes = sum(len(EVENTS_OF_JUMP[STATES.index(a)][STATES.index(b)])
                       for _, g in df.groupby("track_id") for a, b in zip(g["true_state"][:-1], g["true_state"][1:]))
    assert _accuracy(df, hmm) >= 0.95
    assert _accuracy(df, hmm) > _accuracy(df, rule) + 0.05
    assert abs(len(events) - true_changes) <= 0.15 * true_changes  # the rule fires several times too many
    assert len(rule_events) > 2 * true_changes
    assert list(hmm.index) == list(df.index) and hmm["state"].isin(STATES).all()


def test_exact_events_for_few_changes():
    rng = np.random.default_rng(2)
    scripts = [[(E, 20), (M, 20), (V, 20), (R, 20)], [(M, 30), (V, 50)], [(E, 15), (M, 15), (E, 15), (M, 15)],
               [(V, 40), (R, 40)], [(E, 80)]]
    df = pd.concat([_scripted(s, rng, track_id=i) for i, s in enumerate(scripts)], ignore_index=True)
    out, events = classify_tracks(df, frame_interval_s=DT_S, params=PARAMS)
    assert _accuracy(df, out) >= 0.97
    found = events.groupby("track_id")["kind"].apply(list).to_dict()
    assert found == {0: ["binding", "internalization", "release"], 1: ["internalization"],
                     2: ["binding", "unbinding", "binding"], 3: ["release"]}
    np.testing.assert_allclose(events.loc[events["track_id"] == 0, "frame"], [20, 40, 60], atol=2)
    np.testing.assert_allclose(events.loc[events["track_id"] == 2, "frame"], [15, 30, 45], atol=2)
    assert (events["time_s"] == events["frame"] * DT_S).all()


@pytest.mark.parametrize("edge_um", [-BAND_UM, BAND_UM])
def test_dithering_across_the_band_edge_fires_no_events(edge_um):
    rng = np.random.default_rng(3)
    n = 30
    distance = edge_um + rng.choice([-0.15, 0.15], n) + rng.normal(0, 0.05, n)
    df = _table(np.zeros(n), np.arange(n), np.full(n, M), distance, np.zeros(n), np.zeros(n), rng)
    out, events = classify_tracks(df, frame_interval_s=DT_S, params=PARAMS)
    _, rule_events = classify_by_zone(df, frame_interval_s=DT_S)
    assert len(events) == 0 and out["state"].nunique() == 1
    assert len(rule_events) >= 5


def test_released_only_after_vesicular():
    rng = np.random.default_rng(4)
    df = _simulated_tracks(rng, n_tracks=100)
    out, _ = classify_tracks(df, frame_interval_s=DT_S, params=PARAMS)
    out = out.sort_values(["track_id", "frame"])
    was_vesicular = out["state"].eq("vesicular").groupby(out["track_id"]).cummax()
    assert (was_vesicular[out["state"] == "released"]).all()
    # bound then back outside, never inside: unbinding, not release
    unbound, events = classify_tracks(_scripted([(M, 20), (E, 20)], rng), frame_interval_s=DT_S, params=PARAMS)
    assert "released" not in set(unbound["state"]) and _kinds(events) == {"unbinding": 1}


def test_track_with_gaps():
    rng = np.random.default_rng(5)
    df = _scripted([(M, 20), (V, 20)], rng)
    df = df[(df["frame"] < 17) | (df["frame"] >= 25)]  # frames 17-24 lost
    out, events = classify_tracks(df, frame_interval_s=DT_S, params=PARAMS)
    assert _accuracy(df, out) == 1.0
    assert list(events["kind"]) == ["internalization"] and list(events["frame"]) == [25]
    # a change that needs two steps across a gap: both events at the first frame after it
    jump = pd.concat([_scripted([(E, 10)], rng), _scripted([(V, 10)], rng, first_frame=40)], ignore_index=True)
    out, events = classify_tracks(jump, frame_interval_s=DT_S, params=PARAMS)
    assert list(events["kind"]) == ["binding", "internalization"] and list(events["frame"]) == [40, 40]


def test_far_detections_are_free_and_cells_of_events():
    rng = np.random.default_rng(6)
    df = _scripted([(M, 10), (V, 10), (R, 10)], rng)
    df["cell_id"] = np.r_[np.full(20, 3), np.full(5, 7), np.zeros(5, np.int64)]  # drifts to cell 7, then none
    out, events = classify_tracks(df, frame_interval_s=DT_S, params=PARAMS)
    assert list(out["state"]) == list(df["true_state"])
    assert (out.loc[out["state"] == "released", "cell_id"] == 3).all()  # released rows keep their origin cell
    assert events.set_index("kind")["cell_id"].to_dict() == {"internalization": 3, "release": 3}
    far = df.assign(cell_id=0, distance_um=-2.0)  # no cell in reach: nothing can be bound or inside
    assert set(classify_tracks(far, frame_interval_s=DT_S, params=PARAMS)[0]["state"]) == {"extracellular"}


def test_events_from_states_tables():
    assert EVENTS_OF_JUMP[E][R] == ("binding", "internalization", "release")
    assert EVENTS_OF_JUMP[V][M] == () and EVENTS_OF_JUMP[M][E] == ("unbinding",)
    np.testing.assert_allclose(TIME_SHARE.sum(axis=2), 1.0)
    np.testing.assert_allclose(TIME_SHARE[E, V], [1 / 3, 1 / 3, 1 / 3, 0])
    particles = pd.DataFrame({"track_id": [1, 1, 1, 2, 2], "frame": [0, 1, 2, 5, 6], "cell_id": [4, 4, 0, 2, 2]})
    out, events = events_from_states(particles, np.array([M, V, R, E, V]), frame_interval_s=2.0)
    assert list(out["cell_id"]) == [4, 4, 4, 2, 2]
    assert events.to_dict("list") == {"track_id": [1, 1, 2, 2], "cell_id": [4, 4, 2, 2], "frame": [1, 2, 6, 6],
                                      "time_s": [2.0, 4.0, 12.0, 12.0],
                                      "kind": ["internalization", "release", "binding", "internalization"]}


def test_summarize_tracks():
    particles = pd.DataFrame({
        "track_id": [7, 7, 7, 7, 7, 3, 3],
        "frame": [0, 1, 2, 3, 4, 9, 10],
        "cell_id": [1, 2, 2, 2, 1, 0, 0],
        "state": ["membrane_bound", "membrane_bound", "membrane_bound", "vesicular", "released",
                  "extracellular", "extracellular"],
        "mass": [1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0],
    })
    tracks = summarize_tracks(particles.sample(frac=1, random_state=0))
    assert tracks.to_dict("list") == {
        "track_id": [3, 7], "first_frame": [9, 0], "last_frame": [10, 4], "n_detections": [2, 5],
        "cell_id": [0, 2], "final_state": ["extracellular", "released"], "mean_mass": [15.0, 3.0],
        "n_extracellular": [2, 0], "n_membrane_bound": [0, 3], "n_vesicular": [0, 1], "n_released": [0, 1],
    }


def test_params_are_strict():
    with pytest.raises(ValueError):
        ClassifyParams(membrane_sigma=0.2)
    assert ClassifyParams.model_json_schema()["properties"]["membrane_sigma_um"]["description"]


def test_impossible_paths_cost_a_bounded_penalty_not_nan(recwarn):
    """Released particles that drift back over a cell (or a segmentation error that puts one
    detection deep inside) have no allowed path under a strict model (released is absorbing and
    'outside'); the outlier share of the distance emission keeps every path possible, so the
    learning stays finite and the decoding keeps the release."""
    rng = np.random.default_rng(3)
    rows = []
    for track in range(40):
        # vesicular deep inside, released outside, then 3 detections deep inside again
        d = np.r_[np.full(10, -2.0), np.full(10, 1.5), np.full(3, -3.0)] + rng.normal(0, 0.1, 23)
        states = [V] * 10 + [R] * 13
        rows.append(_table(np.full(23, track), np.arange(23), states, d, d, np.full(23, 5.0 + track), rng))
    particles = pd.concat(rows, ignore_index=True)
    out, events = classify_tracks(particles, frame_interval_s=DT_S, params=PARAMS)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert out["state"].notna().all()
    assert (events["kind"] == "release").sum() == 40 and set(events["kind"]) == {"release"}
    assert (out.loc[out["frame"] >= 10, "state"] == "released").all()


def test_short_contacts_are_not_bindings_but_long_ones_are():
    rng = np.random.default_rng(7)
    scripts = [[(E, 25), (M, 4), (E, 25)], [(E, 20), (M, 10), (E, 20)]]
    df = pd.concat([_scripted(s, rng, noise_um=0.05, track_id=i) for i, s in enumerate(scripts)], ignore_index=True)
    out, events = classify_tracks(df, frame_interval_s=DT_S, params=ClassifyParams(min_contact_frames=6))
    assert events.groupby("track_id")["kind"].apply(list).to_dict() == {1: ["binding", "unbinding"]}
    assert (out.loc[df["track_id"] == 0, "state"] == "extracellular").all()
    _, kept = classify_tracks(df, frame_interval_s=DT_S, params=ClassifyParams(min_contact_frames=1))
    assert kept.groupby("track_id")["kind"].apply(list).to_dict() == {0: ["binding", "unbinding"],
                                                                      1: ["binding", "unbinding"]}


def test_event_posteriors_are_confident_for_clear_changes_and_locate_the_frame():
    rng = np.random.default_rng(3)
    df = _scripted([(E, 20), (M, 20), (V, 20)], rng, noise_um=0.1)
    _, events = classify_tracks(df, frame_interval_s=DT_S, params=PARAMS)
    assert list(events["kind"]) == ["binding", "internalization"]
    assert ((events["p_event"] > 0) & (events["p_event"] <= events["p_event_window"] + 1e-12)).all()
    assert (events["p_event_window"] > 0.9).all() and (events["p_event_window"] <= 1 + 1e-9).all()
    assert (events["frame_sd"] >= 0).all() and (events["frame_sd"] < 1.5).all()
    noisy = _scripted([(E, 20), (M, 20), (V, 20)], np.random.default_rng(3), noise_um=0.6)
    _, vague = classify_tracks(noisy, frame_interval_s=DT_S, params=PARAMS)
    assert vague["p_event"].mean() < events["p_event"].mean()
