"""Release/retention curves against known distributions (no movies: spells drawn directly)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.stages.survival import (
    goodness_of_fit,
    kaplan_meier,
    spells,
    spells_for,
    survival_summary,
    survival_table,
    two_phase_survival,
)


def _censored(rng, true_times, follow_up_min):
    """Administrative censoring: entries uniform over the movie, censored at its end."""
    censor = rng.uniform(0, follow_up_min, len(true_times))
    return np.minimum(true_times, censor), true_times <= censor


def test_kaplan_meier_matches_the_hand_computed_product_limit():
    km = kaplan_meier(np.array([1, 2, 2, 3, 4.0]), np.array([1, 1, 0, 1, 0], bool))
    # at risk 5, 4, 2 at t = 1, 2, 3: S = 4/5, 4/5 * 3/4, 0.6 * 1/2
    assert km["time_min"].tolist() == [0, 1, 2, 3]
    assert km["n_at_risk"].tolist() == [5, 5, 4, 2]
    np.testing.assert_allclose(km["survival"], [1, 0.8, 0.6, 0.3])
    assert np.all(km["ci_low"] <= km["survival"]) and np.all(km["survival"] <= km["ci_high"])


def test_exponential_release_is_recovered_with_censoring_and_one_rate_verdict():
    rng = np.random.default_rng(1)
    k_true = 0.05  # 1/min, half-life 13.9 min
    t, d = _censored(rng, rng.exponential(1 / k_true, 600), follow_up_min=60.0)
    s = survival_summary(t, d, horizon_min=30.0)
    assert s["k_per_min_ci_low"] <= k_true <= s["k_per_min_ci_high"]
    assert s["half_life_min_ci_low"] <= np.log(2) / k_true <= s["half_life_min_ci_high"]
    true_fraction = 1 - np.exp(-k_true * 30)
    assert s["fraction_by_horizon_km_ci_low"] <= true_fraction <= s["fraction_by_horizon_km_ci_high"]
    assert s["fraction_by_horizon_exp_ci_low"] <= true_fraction <= s["fraction_by_horizon_exp_ci_high"]
    assert s["km_median_min_ci_low"] <= np.log(2) / k_true <= s["km_median_min_ci_high"]
    assert s["verdict"] == "one rate"
    # the band covers the true curve at most event times (pointwise 95 %)
    km = kaplan_meier(t, d)
    inside = (km["ci_low"] <= np.exp(-k_true * km["time_min"])) & (np.exp(-k_true * km["time_min"]) <= km["ci_high"])
    assert inside.mean() > 0.8


def test_beyond_the_follow_up_the_km_fraction_is_not_invented():
    rng = np.random.default_rng(2)
    t, d = _censored(rng, rng.exponential(10.0, 200), follow_up_min=10.0)
    s = survival_summary(t, d, horizon_min=30.0, gof=False)
    assert np.isnan(s["fraction_by_horizon_km"])
    assert np.isfinite(s["fraction_by_horizon_exp"])


def test_two_phase_release_is_detected_and_its_phases_recovered():
    rng = np.random.default_rng(0)  # Wald coverage of the three intervals over 20 seeds: 0.9-1.0
    p, k_fast, k_slow, n = 0.6, 0.5, 0.03, 1500
    fast = rng.random(n) < p
    true_times = np.where(fast, rng.exponential(1 / k_fast, n), rng.exponential(1 / k_slow, n))
    t, d = _censored(rng, true_times, follow_up_min=90.0)
    check = goodness_of_fit(t, d)
    assert check["verdict"] == "two-phase" and check["p_value"] < 1e-6
    fit = check["two_phase"]
    for name, true in (("p_fast", p), ("k_fast_per_min", k_fast), ("k_slow_per_min", k_slow)):
        assert fit[f"{name}_ci_low"] <= true <= fit[f"{name}_ci_high"], (name, fit)
    # the fitted curve runs inside the KM band
    km = kaplan_meier(t, d)
    model = two_phase_survival(fit, km["time_min"])
    assert ((km["ci_low"] <= model + 0.01) & (model - 0.01 <= km["ci_high"])).mean() > 0.9


def test_few_events_give_no_verdict():
    s = survival_summary(np.array([1.0, 2, 3, 4]), np.array([1, 0, 1, 0], bool))
    assert s["verdict"] == "too few events"


def _particles(track_states: dict[int, list[tuple[int, str, int]]]) -> pd.DataFrame:
    rows = [{"track_id": tid, "frame": f, "state": s, "cell_id": c}
            for tid, states in track_states.items() for f, s, c in states]
    return pd.DataFrame(rows)


def test_spells_follow_the_event_frame_convention():
    p = _particles({
        # bound 0-2, vesicular from frame 3 (internalization), released from frame 7
        1: [(0, "membrane_bound", 5), (1, "membrane_bound", 5), (2, "membrane_bound", 5),
            (3, "vesicular", 5), (5, "vesicular", 5), (7, "released", 5)],
        # first seen vesicular (entry unknown), censored at frame 4
        2: [(2, "vesicular", 6), (4, "vesicular", 6)],
    })
    s = spells(p, frame_interval_s=6.0)
    one = s[s["track_id"] == 1].set_index("state")
    assert one.loc["membrane_bound", "exit"] == "internalization"
    assert one.loc["membrane_bound", "duration_min"] == pytest.approx(3 * 0.1)
    assert one.loc["vesicular", "entry"] == "internalization"
    assert one.loc["vesicular", "exit"] == "release"
    assert one.loc["vesicular", "duration_min"] == pytest.approx(4 * 0.1)
    two = s[s["track_id"] == 2].iloc[0]
    assert two["entry"] == "" and two["exit"] == "" and two["duration_min"] == pytest.approx(0.2)
    t, d, _ = spells_for(s, "release")
    assert t.tolist() == pytest.approx([0.4]) and d.tolist() == [True]


def test_per_cell_rows_of_the_survival_table_recover_their_own_rates():
    rng = np.random.default_rng(4)
    rows = []
    for cell, k in ((1, 0.1), (2, 0.4)):
        t, d = _censored(rng, rng.exponential(1 / k, 400), follow_up_min=30.0)
        rows.append(pd.DataFrame({"track_id": np.arange(len(t)) + 1000 * cell, "cell_id": cell,
                                  "state": "vesicular", "first_frame": 0, "last_frame": 0, "duration_min": t,
                                  "exit": np.where(d, "release", ""), "entry": "internalization"}))
    table = survival_table(pd.concat(rows, ignore_index=True))
    rel = table[table["kind"] == "release"].set_index("cell_id")
    for cell, k in ((1, 0.1), (2, 0.4)):
        assert rel.loc[cell, "k_per_min_ci_low"] <= k <= rel.loc[cell, "k_per_min_ci_high"]
    assert rel.loc[0, "verdict"] == "two-phase"  # two cells with 4x different rates pooled: not one rate
