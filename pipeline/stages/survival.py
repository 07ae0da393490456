"""Release and retention curves: dwell spells, Kaplan–Meier, exponential and two-phase fits.

The rates of :mod:`pipeline.stages.kinetics` assume one exponential dwell time per state.
This module shows whether one rate describes the data, and gives the numbers papers quote
("x % released within 30 min", the half-life of the exocytosed fraction).

Spells
    A *spell* is one uninterrupted stay of a track in one state: consecutive detections in
    that state. It starts at its first detection and ends either with a state change
    (observed exit; duration = first frame in the new state − first frame of the spell,
    the event-frame convention of DESIGN.md) or with the end of the track (right-censored
    at its last detection). A spell whose track was already in the state at its first
    detection has an unknown start (left-truncated, ``entered = False``); curves "time
    since internalization" use only spells with an observed entry.

Curves (``kind``)
    ``release``: vesicular spells entered by internalization; exit by release.
    ``membrane_dwell``: membrane_bound spells entered by binding; exit by internalization
    or unbinding (any exit).
    ``internalization``: the same membrane_bound spells, internalization as the event and
    unbinding as censoring (cause-specific: the curve the internalization rate describes).

Estimators
    Kaplan–Meier survival with Greenwood's variance and the log(−log) interval
    (Kalbfleisch & Prentice 2002), which stays within [0, 1]. The median time (the
    half-life for an exponential) with the Brookmeyer–Crowley interval: the times where the
    band crosses 0.5. The exponential fit is the rate of :func:`poisson_rate_ci` (events /
    time at risk, exact interval) over the same spells.

Goodness of fit
    The exponential is tested against a two-phase model
    ``S(t) = p·exp(−k_fast·t) + (1 − p)·exp(−k_slow·t)`` (``k_slow`` may be 0: a fraction
    that is never released, the saturating curves of the literature), both fit by censored
    maximum likelihood. Likelihood-ratio statistic ``2·(ℓ₂ − ℓ₁)`` against χ² with 2 degrees
    of freedom (approximate: the null sits on the boundary of the two-phase model, where the
    χ² reference is only a guide), and AIC. Verdict ``two-phase`` when
    ``p_value < GOF_ALPHA`` and the two-phase AIC is lower, else ``one rate``; ``too few
    events`` below :data:`MIN_EVENTS_GOF` events. Two-phase parameter intervals are Wald
    intervals on log rates and logit fraction (inverse Hessian), mapped back.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.special import expit, logit
from scipy.stats import chi2, norm

from pipeline.stages.kinetics import poisson_rate_ci
from pipeline.vocabulary import BACKGROUND, EVENT_OF_TRANSITION

__all__ = ["CURVES", "SPELL_COLUMNS", "kaplan_meier", "spells", "spells_for", "survival_summary",
           "survival_table", "two_phase_fit", "goodness_of_fit", "median_time", "survival_at"]

#: Curve kind -> (state of the spell, entry event, events counted as the exit).
CURVES = {
    "release": ("vesicular", "internalization", ("release",)),
    "membrane_dwell": ("membrane_bound", "binding", ("internalization", "unbinding")),
    "internalization": ("membrane_bound", "binding", ("internalization",)),
}
#: Columns of the spells table (one row per spell).
SPELL_COLUMNS = ("track_id", "cell_id", "state", "first_frame", "last_frame", "duration_min", "exit",
                 "entry")
#: Significance level of the exponential-vs-two-phase test.
GOF_ALPHA = 0.01
#: Fewer observed events than this: no goodness-of-fit verdict.
MIN_EVENTS_GOF = 20


def spells(particles: pd.DataFrame, *, frame_interval_s: float) -> pd.DataFrame:
    """One row per spell (uninterrupted stay of a track in one state).

    Parameters
    ----------
    particles : DataFrame
        Classified detections: ``track_id``, ``frame``, ``cell_id``, ``state``.
    frame_interval_s : float
        Time between frames, s.

    Returns
    -------
    DataFrame
        :data:`SPELL_COLUMNS`: ``cell_id`` of the spell's first detection, ``first_frame`` and
        ``last_frame`` (its detections), ``duration_min`` (to the first frame of the next state
        when it exits, to its last detection when censored), ``exit`` (event ending it, "" when
        censored), ``entry`` (event that started it, "" when the track was first seen in it).
    """
    if not len(particles):
        return pd.DataFrame({c: pd.Series(dtype=d) for c, d in zip(
            SPELL_COLUMNS, ("int64", "int64", "str", "int64", "int64", "float64", "str", "str"))})
    p = particles.sort_values(["track_id", "frame"], kind="stable")
    track, frame = p["track_id"].to_numpy(np.int64), p["frame"].to_numpy(np.int64)
    state, cell = p["state"].to_numpy(str), p["cell_id"].to_numpy(np.int64)
    start = np.ones(len(p), bool)
    start[1:] = (track[1:] != track[:-1]) | (state[1:] != state[:-1])
    first = np.flatnonzero(start)
    last = np.append(first[1:], len(p)) - 1
    same_track_next = np.append(track[first[1:]] == track[first[:-1]], False)
    same_track_prev = np.insert(track[first[1:]] == track[first[:-1]], 0, False)
    nxt = np.minimum(np.append(first[1:], 0), len(p) - 1)
    end_frame = np.where(same_track_next, frame[nxt], frame[last])
    prev_state = np.where(same_track_prev, state[np.maximum(first - 1, 0)], "")
    next_state = np.where(same_track_next, state[nxt], "")
    spell_state = state[first]
    return pd.DataFrame({
        "track_id": track[first], "cell_id": cell[first], "state": spell_state,
        "first_frame": frame[first], "last_frame": frame[last],
        "duration_min": (end_frame - frame[first]) * frame_interval_s / 60.0,
        "exit": [EVENT_OF_TRANSITION.get((a, b), "") for a, b in zip(spell_state, next_state)],
        "entry": [EVENT_OF_TRANSITION.get((a, b), "") for a, b in zip(prev_state, spell_state)],
    })


def spells_for(table: pd.DataFrame, kind: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Durations (min), event flags and rows of the spells behind curve ``kind`` (:data:`CURVES`)."""
    state, entry, exits = CURVES[kind]
    rows = table[(table["state"] == state) & (table["entry"] == entry)]
    return rows["duration_min"].to_numpy(float), rows["exit"].isin(exits).to_numpy(), rows


def kaplan_meier(duration_min: np.ndarray, observed: np.ndarray, *, ci_level: float = 0.95) -> pd.DataFrame:
    """Kaplan–Meier survival with Greenwood's log(−log) confidence band.

    Parameters
    ----------
    duration_min : array of float
        Time from entry to exit or censoring, min.
    observed : array of bool
        True where the exit was observed, False where censored.
    ci_level : float
        Confidence level of the band.

    Returns
    -------
    DataFrame
        A step function: ``time_min`` (0 then each distinct event time), ``n_at_risk``,
        ``n_events``, ``survival``, ``ci_low``, ``ci_high``; the survival holds from each
        time until the next. Censored at the same time as an event count as at risk.
    """
    t = np.asarray(duration_min, float)
    d = np.asarray(observed, bool)
    times = np.unique(t[d])
    at_risk = len(t) - np.searchsorted(np.sort(t), times, side="left")
    events = np.bincount(np.searchsorted(times, t[d]), minlength=len(times)) if len(times) else np.zeros(0, int)
    with np.errstate(divide="ignore", invalid="ignore"):
        surv = np.cumprod(1.0 - events / at_risk)
        greenwood = np.cumsum(events / (at_risk * (at_risk - events)))
        z = norm.ppf(0.5 + ci_level / 2)
        log_s = np.log(surv)
        se = np.sqrt(greenwood) / np.abs(log_s)
        low = np.exp(-np.exp(np.log(-log_s) + z * se))
        high = np.exp(-np.exp(np.log(-log_s) - z * se))
    low = np.where(surv > 0, low, 0.0)
    high = np.where(surv > 0, high, np.where(np.isfinite(high), high, 0.0))
    high = np.where(np.isnan(high), 1.0, high)  # all at risk left (last events): Greenwood undefined
    return pd.DataFrame({
        "time_min": np.concatenate([[0.0], times]),
        "n_at_risk": np.concatenate([[len(t)], at_risk]).astype(np.int64),
        "n_events": np.concatenate([[0], events]).astype(np.int64),
        "survival": np.concatenate([[1.0], surv]),
        "ci_low": np.concatenate([[1.0], low]),
        "ci_high": np.concatenate([[1.0], high]),
    })


def survival_at(km: pd.DataFrame, time_min: float, follow_up_min: float) -> tuple[float, float, float]:
    """KM survival (and band) at ``time_min``; NaN beyond the longest follow-up."""
    if not len(km) or time_min > follow_up_min:
        return (np.nan, np.nan, np.nan)
    row = km.iloc[np.searchsorted(km["time_min"].to_numpy(), time_min, side="right") - 1]
    return float(row["survival"]), float(row["ci_low"]), float(row["ci_high"])


def median_time(km: pd.DataFrame) -> tuple[float, float, float]:
    """Median time (min) of a KM curve and its Brookmeyer–Crowley interval (NaN where not reached)."""

    def first_below(values: np.ndarray) -> float:
        below = np.flatnonzero(values <= 0.5)
        return float(km["time_min"].iloc[below[0]]) if len(below) else np.nan

    return first_below(km["survival"].to_numpy()), first_below(km["ci_low"].to_numpy()), \
        first_below(km["ci_high"].to_numpy())


def _two_phase_nll(theta: np.ndarray, t: np.ndarray, d: np.ndarray) -> float:
    p, k1, k2 = expit(theta[0]), np.exp(theta[1]), np.exp(theta[2])
    s = p * np.exp(-k1 * t) + (1 - p) * np.exp(-k2 * t)
    f = p * k1 * np.exp(-k1 * t) + (1 - p) * k2 * np.exp(-k2 * t)
    with np.errstate(divide="ignore"):
        ll = np.sum(np.log(np.maximum(f[d], 1e-300))) + np.sum(np.log(np.maximum(s[~d], 1e-300)))
    return -ll


def _hessian(fun, x: np.ndarray, step: float = 1e-4) -> np.ndarray:
    n = len(x)
    h = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            e_i, e_j = np.eye(n)[i] * step, np.eye(n)[j] * step
            h[i, j] = h[j, i] = (fun(x + e_i + e_j) - fun(x + e_i - e_j) - fun(x - e_i + e_j)
                                 + fun(x - e_i - e_j)) / (4 * step * step)
    return h


def two_phase_fit(duration_min: np.ndarray, observed: np.ndarray, *, ci_level: float = 0.95) -> dict:
    """Censored maximum-likelihood fit of ``p·exp(−k_fast·t) + (1 − p)·exp(−k_slow·t)``.

    Returns
    -------
    dict
        ``p_fast``, ``k_fast_per_min``, ``k_slow_per_min`` each with ``_ci_low`` / ``_ci_high``
        (Wald on logit / log scale; NaN where the Hessian is singular), ``loglik``, ``theta``
        and ``cov`` (estimate and covariance on the transformed scale).
    """
    t, d = np.asarray(duration_min, float), np.asarray(observed, bool)
    n_ev, total = d.sum(), t.sum()
    k0 = max(n_ev, 1) / max(total, 1e-9)
    best = None
    for p0, fast, slow in ((0.5, 3.0, 0.3), (0.3, 5.0, 0.5), (0.7, 2.0, 0.1), (0.5, 10.0, 0.01), (0.9, 1.5, 0.05)):
        x0 = np.array([logit(p0), np.log(k0 * fast), np.log(k0 * slow)])
        res = optimize.minimize(_two_phase_nll, x0, args=(t, d), method="Nelder-Mead",
                                options={"xatol": 1e-6, "fatol": 1e-8, "maxiter": 4000})
        if best is None or res.fun < best.fun:
            best = res
    theta = best.x.copy()
    if theta[2] > theta[1]:  # order the phases: fast first
        theta = np.array([-theta[0], theta[2], theta[1]])
    cov = np.full((3, 3), np.nan)
    try:
        h = _hessian(lambda x: _two_phase_nll(x, t, d), theta)
        c = np.linalg.inv(h)
        if np.all(np.diag(c) > 0):
            cov = c
    except np.linalg.LinAlgError:
        pass
    z = norm.ppf(0.5 + ci_level / 2)
    se = np.sqrt(np.diag(cov))
    out = {"loglik": -float(best.fun), "theta": theta, "cov": cov}
    for i, (name, back) in enumerate((("p_fast", expit), ("k_fast_per_min", np.exp), ("k_slow_per_min", np.exp))):
        out[name] = float(back(theta[i]))
        out[f"{name}_ci_low"] = float(back(theta[i] - z * se[i]))
        out[f"{name}_ci_high"] = float(back(theta[i] + z * se[i]))
    return out


def two_phase_survival(fit: dict, time_min: np.ndarray) -> np.ndarray:
    """Survival of a two-phase fit at ``time_min``."""
    p, k1, k2 = fit["p_fast"], fit["k_fast_per_min"], fit["k_slow_per_min"]
    t = np.asarray(time_min, float)
    return p * np.exp(-k1 * t) + (1 - p) * np.exp(-k2 * t)


def goodness_of_fit(duration_min: np.ndarray, observed: np.ndarray, *, ci_level: float = 0.95) -> dict:
    """Exponential against two-phase: likelihood ratio, AIC and a verdict (module docstring).

    Returns
    -------
    dict
        ``loglik_exponential``, ``loglik_two_phase``, ``lr_statistic``, ``p_value``,
        ``aic_exponential``, ``aic_two_phase``, ``verdict`` (``one rate`` / ``two-phase`` /
        ``too few events``) and ``two_phase`` (the :func:`two_phase_fit` dict, or None).
    """
    t, d = np.asarray(duration_min, float), np.asarray(observed, bool)
    n_ev, total = int(d.sum()), float(t.sum())
    out = {"verdict": "too few events", "two_phase": None}
    for key in ("loglik_exponential", "loglik_two_phase", "lr_statistic", "p_value", "aic_exponential",
                "aic_two_phase"):
        out[key] = np.nan
    if n_ev < MIN_EVENTS_GOF or total <= 0:
        return out
    k = n_ev / total
    ll1 = n_ev * np.log(k) - k * total
    fit = two_phase_fit(t, d, ci_level=ci_level)
    ll2 = max(fit["loglik"], ll1)
    lr = 2 * (ll2 - ll1)
    out.update(loglik_exponential=ll1, loglik_two_phase=ll2, lr_statistic=lr, p_value=float(chi2.sf(lr, 2)),
               aic_exponential=2 - 2 * ll1, aic_two_phase=6 - 2 * ll2, two_phase=fit)
    out["verdict"] = ("two-phase" if out["p_value"] < GOF_ALPHA and out["aic_two_phase"] < out["aic_exponential"]
                      else "one rate")
    return out


def survival_summary(duration_min: np.ndarray, observed: np.ndarray, *, horizon_min: float = 30.0,
                     ci_level: float = 0.95, gof: bool = True) -> dict:
    """The numbers of one curve: counts, exponential rate, half-life, fraction by the horizon, fit check.

    Parameters
    ----------
    duration_min, observed
        Spells of one curve (:func:`spells_for`).
    horizon_min : float
        Time at which the fraction that has left the state is reported ("x % released within
        30 min"), min.
    ci_level : float
    gof : bool
        Run the two-phase goodness-of-fit check (the slow part).

    Returns
    -------
    dict
        ``n_spells``, ``n_events``, ``follow_up_min`` (longest spell), ``k_per_min`` (+ CI: exact
        Poisson), ``half_life_min`` (ln 2 / k, + CI), ``km_median_min`` (+ Brookmeyer–Crowley CI;
        NaN when the curve stays above 0.5), ``fraction_by_horizon_km`` (+ CI; NaN beyond the
        follow-up), ``fraction_by_horizon_exp`` (1 − exp(−k·horizon), + CI from k's interval)
        and, with ``gof``, ``verdict``, ``p_value``, ``lr_statistic`` and the two-phase fit
        (``p_fast``, ``k_fast_per_min``, ``k_slow_per_min`` + CIs) when the verdict is two-phase.
    """
    t, d = np.asarray(duration_min, float), np.asarray(observed, bool)
    rate, low, high = (float(v[0]) for v in poisson_rate_ci(np.array([d.sum()]), np.array([t.sum()]), ci_level))
    km = kaplan_meier(t, d, ci_level=ci_level)
    follow_up = float(t.max()) if len(t) else 0.0
    s, s_low, s_high = survival_at(km, horizon_min, follow_up)
    med = median_time(km)
    ln2 = np.log(2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "n_spells": int(len(t)), "n_events": int(d.sum()), "follow_up_min": follow_up,
            "horizon_min": float(horizon_min),
            "k_per_min": rate, "k_per_min_ci_low": low, "k_per_min_ci_high": high,
            "half_life_min": ln2 / rate, "half_life_min_ci_low": ln2 / high, "half_life_min_ci_high": ln2 / low,
            "km_median_min": med[0], "km_median_min_ci_low": med[1], "km_median_min_ci_high": med[2],
            "fraction_by_horizon_km": 1 - s, "fraction_by_horizon_km_ci_low": 1 - s_high,
            "fraction_by_horizon_km_ci_high": 1 - s_low,
            "fraction_by_horizon_exp": 1 - np.exp(-rate * horizon_min),
            "fraction_by_horizon_exp_ci_low": 1 - np.exp(-low * horizon_min),
            "fraction_by_horizon_exp_ci_high": 1 - np.exp(-high * horizon_min),
        }
    if gof:
        check = goodness_of_fit(t, d, ci_level=ci_level)
        out.update({key: check[key] for key in ("verdict", "p_value", "lr_statistic")})
        fit = check["two_phase"]
        for name in ("p_fast", "k_fast_per_min", "k_slow_per_min"):
            for part in ("", "_ci_low", "_ci_high"):
                out[f"{name}{part}"] = fit[f"{name}{part}"] if fit is not None else np.nan
    return out


def survival_table(spell_table: pd.DataFrame, *, horizon_min: float = 30.0, ci_level: float = 0.95) -> pd.DataFrame:
    """:func:`survival_summary` of every curve, pooled (``cell_id`` 0, with the fit check) and per cell.

    Returns
    -------
    DataFrame
        One row per (``kind``, ``cell_id``); ``cell_id`` 0 (:data:`BACKGROUND`) is the pooled
        movie row, the only one with the goodness-of-fit columns filled.
    """
    rows = []
    for kind in CURVES:
        t, d, sel = spells_for(spell_table, kind)
        rows.append({"kind": kind, "cell_id": BACKGROUND,
                     **survival_summary(t, d, horizon_min=horizon_min, ci_level=ci_level)})
        cells = sel["cell_id"].to_numpy(np.int64)
        for cell in np.unique(cells[cells != BACKGROUND]):
            mine = cells == cell
            rows.append({"kind": kind, "cell_id": int(cell),
                         **survival_summary(t[mine], d[mine], horizon_min=horizon_min, ci_level=ci_level,
                                            gof=False)})
    table = pd.DataFrame(rows)
    if "verdict" in table:
        table["verdict"] = table["verdict"].fillna("").astype(str)
    return table
