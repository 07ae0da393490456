"""Per-cell kinetics: state counts over time and rates with exact confidence intervals.

Rates (see docs/DESIGN.md "Rates, honestly estimated")
-------------------------------------------------
Dwell times are exponential with rate ``k``; tracks end for reasons that are
not biology (movie end, particle leaves the field, lost track), so they are
right-censored. The maximum-likelihood rate is

    k = events / time at risk,

e.g. ``k_internalization = n_internalization / membrane_bound particle-time``,
and ``n`` given the time at risk ``T`` is Poisson, which gives the exact
(Garwood) interval ``[gamma.ppf(α/2, n) / T, gamma.ppf(1 - α/2, n + 1) / T]``
with ``α = 1 - ci_level`` (lower bound 0 when ``n = 0``). With ``T = 0`` the
rate and its interval are NaN, not 0.

Time at risk comes from the intervals between consecutive detections of a
track. An interval in one state counts fully for that state (gaps included: the
track was in that state on both sides). An interval across a state change is
split equally among the states of the change
(:data:`pipeline.stages.classify.TIME_SHARE`): the change happened somewhere in it,
half-way on average. The last detection of a track adds nothing: the track is
right-censored there, and crediting time after it would add time in which an
event could have happened unseen (biasing ``k`` low). The first detection
starts the clock; by memorylessness a track first seen already in a state is
as good as one seen entering it.

Derived quantities
    ``exocytosis_half_life_min = ln 2 / k_release``, interval ``ln 2 / k``
    at the rate's bounds (inverted). ``membrane_dwell_min = 1 / (k_internalization +
    k_unbinding)``: both exits share the membrane_bound time ``T``, so their
    sum is one Poisson count ``n_internalization + n_unbinding`` over ``T``;
    its exact interval, inverted, is the dwell interval.

Cells
    Events count for their ``cell_id`` (see :mod:`pipeline.stages.classify`); time
    in a state counts for the cell of the detection in that state. The pooled
    (movie) row sums everything, detections without a cell (``cell_id`` 0)
    included, so cell rows sum to the movie row when every event has a cell.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import Field
from scipy.stats import gamma

from pipeline.params import Params
from pipeline.stages.classify import TIME_SHARE, summarize_tracks
from pipeline.vocabulary import BACKGROUND, EVENTS, RATES, STATE_CODE, STATES

__all__ = ["KineticsParams", "cell_kinetics", "cell_rates", "poisson_rate_ci"]

_M, _V = STATE_CODE["membrane_bound"], STATE_CODE["vesicular"]


class KineticsParams(Params):
    """Parameters of the kinetics stage (``kinetics:`` in a run config)."""

    ci_level: float = Field(
        0.95, gt=0, lt=1, description="Confidence level of the rate, half-life and dwell intervals (fraction)."
    )


def poisson_rate_ci(n: np.ndarray, time: np.ndarray, ci_level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rate ``n / time`` and its exact Poisson (gamma) interval.

    Parameters
    ----------
    n : array of int
        Event counts.
    time : array of float
        Times at risk (any unit; the rate is per that unit).
    ci_level : float
        Confidence level, e.g. 0.95.

    Returns
    -------
    rate, low, high : arrays of float
        NaN where ``time`` is 0; ``low`` is 0 where ``n`` is 0.
    """
    n = np.asarray(n, float)
    time = np.asarray(time, float)
    alpha = 1.0 - ci_level
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(time > 0, time, np.nan)
        rate = n / t
        low = np.where(n > 0, gamma.ppf(alpha / 2, np.maximum(n, 1)), 0.0) / t
        high = gamma.ppf(1 - alpha / 2, n + 1) / t
    return rate, low, high


def kinetics_tables(
    particles: pd.DataFrame,
    events: pd.DataFrame,
    *,
    frame_interval_s: float,
    n_frames: int,
    params: KineticsParams,
    cells: pd.DataFrame | None = None,
) -> dict:
    """The back end after classification: tracks, per-cell and pooled rates, per-cell time series.

    The one place the tables that follow from states and events are made: the runner's
    ``kinetics`` stage, recomputation after curation and the tests' ground-truth stores all
    call it with the same arguments.

    Parameters
    ----------
    particles : DataFrame
        Classified detections (``track_id``, ``frame``, ``cell_id``, ``state``, ...).
    events : DataFrame
        Their events (:func:`pipeline.stages.classify.events_from_states`).
    frame_interval_s : float
        Time between frames, s.
    n_frames : int
        Frames in the movie.
    params : KineticsParams
    cells : DataFrame, optional
        Cell geometry (:func:`pipeline.stages.zones.cell_geometry`).

    Returns
    -------
    dict
        ``tracks``, ``cells``, ``movie`` (DataFrames, layouts in pipeline/README.md) and
        ``kinetics`` (xarray.Dataset of :func:`cell_kinetics`).
    """
    table, movie = cell_rates(particles, events, frame_interval_s=frame_interval_s, params=params, cells=cells)
    series = cell_kinetics(particles, events, frame_interval_s=frame_interval_s, n_frames=n_frames,
                           cell_ids=table["cell_id"].to_numpy())
    return {"tracks": summarize_tracks(particles), "cells": table, "movie": movie, "kinetics": series}


def cell_rates(
    particles: pd.DataFrame,
    events: pd.DataFrame,
    *,
    frame_interval_s: float,
    params: KineticsParams,
    cells: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-cell and pooled rates with exact confidence intervals (the ``cells`` and ``movie`` tables).

    Parameters
    ----------
    particles : DataFrame
        Classified detections: ``track_id``, ``frame``, ``cell_id``, ``state``.
    events : DataFrame
        ``cell_id``, ``kind`` (from :func:`pipeline.stages.classify.classify_tracks`).
    frame_interval_s : float
        Time between frames, s.
    params : KineticsParams
    cells : DataFrame, optional
        Cell geometry (:func:`pipeline.stages.zones.cell_geometry`: ``cell_id``,
        ``first_frame``, ``last_frame``, ``mean_area_um2``), merged in; its
        cells appear even without particles.

    Returns
    -------
    cells : DataFrame
        One row per cell id (> 0) seen in ``particles``, ``events`` or ``cells``:
        ``n_<event>``, ``membrane_bound_time_min``, ``vesicular_time_min``,
        ``k_internalization_per_min``, ``k_release_per_min``,
        ``k_unbinding_per_min``, ``exocytosis_half_life_min``,
        ``membrane_dwell_min``, each estimate with ``_ci_low`` / ``_ci_high``.
    movie : DataFrame
        The same count, time and estimate columns pooled over the movie, one row.
    """
    cell, time_min = _time_at_risk(particles, frame_interval_s / 60.0)
    ids = np.unique(np.concatenate([cell, events["cell_id"].to_numpy(np.int64),
                                    [] if cells is None else cells["cell_id"].to_numpy(np.int64)]).astype(np.int64))
    ids = ids[ids != BACKGROUND]
    at = pd.Index(ids).get_indexer
    per_cell = {}
    kinds = events["kind"].to_numpy()
    event_cells = at(events["cell_id"].to_numpy(np.int64))
    for kind in EVENTS:
        sel = (kinds == kind) & (event_cells >= 0)
        per_cell[f"n_{kind}"] = np.bincount(event_cells[sel], minlength=len(ids)).astype(np.int64)
    time_cells = at(cell)
    has_cell = time_cells >= 0
    for state, column in ((_M, "membrane_bound_time_min"), (_V, "vesicular_time_min")):
        per_cell[column] = np.bincount(time_cells[has_cell], weights=time_min[has_cell, state], minlength=len(ids))
    table = _with_estimates(pd.DataFrame({"cell_id": ids, **per_cell}), params.ci_level)
    if cells is not None:
        table = cells.merge(table, on="cell_id", how="outer")
    movie = {f"n_{kind}": [int(np.sum(kinds == kind))] for kind in EVENTS}
    movie["membrane_bound_time_min"] = [time_min[:, _M].sum()]
    movie["vesicular_time_min"] = [time_min[:, _V].sum()]
    return table.reset_index(drop=True), _with_estimates(pd.DataFrame(movie), params.ci_level)


def cell_kinetics(
    particles: pd.DataFrame,
    events: pd.DataFrame,
    *,
    frame_interval_s: float,
    n_frames: int,
    cell_ids: np.ndarray,
) -> xr.Dataset:
    """Per-cell time series of state counts, cumulative events and internalised mass.

    A track is counted in the state of a detection from that detection's frame
    up to the frame before its next detection (the first frame in a new state is
    its event frame), so frames a track skipped keep its state and counts agree
    with the cumulative events; after its last detection it is not counted.

    Parameters
    ----------
    particles : DataFrame
        Classified detections: ``track_id``, ``frame``, ``cell_id``, ``state``
        and optionally ``mass`` (trackpy integrated brightness).
    events : DataFrame
        ``cell_id``, ``frame``, ``kind``.
    frame_interval_s : float
        Time between frames, s.
    n_frames : int
        Number of frames of the movie.
    cell_ids : array of int
        Cells to report, in this order (rows for other cells, and cell 0, are
        left out).

    Returns
    -------
    xarray.Dataset
        Dims ``cell_id`` × ``frame``, coordinate ``time_s`` (s) on ``frame``;
        int64 ``n_<state>`` (particles in that state), ``cum_<event>``
        (events up to and including the frame) and float64
        ``internalized_mass`` (summed ``mass`` of vesicular particles, a
        skipped frame carrying the last measured mass; NaN without ``mass``).
    """
    cell_ids = np.asarray(cell_ids, np.int64)
    shape = (len(cell_ids), n_frames)
    at = pd.Index(cell_ids).get_indexer
    p = particles.sort_values(["track_id", "frame"], kind="stable")
    track, frame = p["track_id"].to_numpy(np.int64), p["frame"].to_numpy(np.int64)
    same_next = np.append(track[1:] == track[:-1], False)
    until = np.where(same_next, np.append(frame[1:], 0) - 1, frame)
    repeat = np.maximum(until - frame + 1, 0)
    row = np.repeat(np.arange(len(p)), repeat)
    span_frame = frame[row] + np.arange(len(row)) - np.repeat(np.cumsum(repeat) - repeat, repeat)
    span_cell = at(p["cell_id"].to_numpy(np.int64)[row])
    keep = (span_cell >= 0) & (span_frame >= 0) & (span_frame < n_frames)
    flat = span_cell[keep] * n_frames + span_frame[keep]
    state = p["state"].to_numpy()[row][keep]

    def grid(sel: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(flat[sel], weights=weights, minlength=shape[0] * shape[1]).reshape(shape)

    data = {f"n_{s}": (("cell_id", "frame"), grid(state == s).astype(np.int64)) for s in STATES}
    kinds = events["kind"].to_numpy()
    event_cell, event_frame = at(events["cell_id"].to_numpy(np.int64)), events["frame"].to_numpy(np.int64)
    for kind in EVENTS:
        sel = (kinds == kind) & (event_cell >= 0) & (event_frame >= 0) & (event_frame < n_frames)
        counts = np.bincount(event_cell[sel] * n_frames + event_frame[sel], minlength=shape[0] * shape[1])
        data[f"cum_{kind}"] = (("cell_id", "frame"), np.cumsum(counts.reshape(shape), axis=1).astype(np.int64))
    vesicular = state == "vesicular"
    if "mass" in p:
        mass = grid(vesicular, p["mass"].to_numpy(float)[row][keep][vesicular])
    else:
        mass = np.full(shape, np.nan)
    data["internalized_mass"] = (("cell_id", "frame"), mass)
    return xr.Dataset(
        data,
        coords={"cell_id": cell_ids, "frame": np.arange(n_frames),
                "time_s": ("frame", np.arange(n_frames) * float(frame_interval_s))},
        attrs={"frame_interval_s": float(frame_interval_s)},
    )


def _time_at_risk(particles: pd.DataFrame, dt_min: float) -> tuple[np.ndarray, np.ndarray]:
    """Cell and time (min) per state for every piece of observed track time.

    Returns ``cell`` (k,) and ``time`` (k, 4): for each interval between
    consecutive detections, one piece for the earlier detection's state (at its
    cell) and one for the later's (at its cell); pieces of intermediate states
    of a multi-step change go with the later detection.
    """
    p = particles.sort_values(["track_id", "frame"], kind="stable")
    track, frame = p["track_id"].to_numpy(np.int64), p["frame"].to_numpy(np.int64)
    cell = p["cell_id"].to_numpy(np.int64)
    state = pd.Categorical(p["state"], categories=STATES).codes.astype(np.int64)
    second = np.flatnonzero(track[1:] == track[:-1]) + 1
    first = second - 1
    a, b = state[first], state[second]
    time = TIME_SHARE[a, b] * ((frame[second] - frame[first]) * dt_min)[:, None]  # (k, 4)
    with_first = np.zeros_like(time)
    rows = np.arange(len(second))
    with_first[rows, a] = time[rows, a]
    return np.concatenate([cell[first], cell[second]]), np.concatenate([with_first, time - with_first])


def _with_estimates(table: pd.DataFrame, ci_level: float) -> pd.DataFrame:
    """Add rates, half-life and dwell (with intervals) from the count and time columns."""
    out = table.copy()
    for column, kind, state in RATES:
        rate, low, high = poisson_rate_ci(out[f"n_{kind}"], out[f"{state}_time_min"], ci_level)
        out[column], out[f"{column}_ci_low"], out[f"{column}_ci_high"] = rate, low, high
    with np.errstate(divide="ignore"):
        ln2 = np.log(2.0)
        out["exocytosis_half_life_min"] = ln2 / out["k_release_per_min"]
        out["exocytosis_half_life_min_ci_low"] = ln2 / out["k_release_per_min_ci_high"]
        out["exocytosis_half_life_min_ci_high"] = ln2 / out["k_release_per_min_ci_low"]
        exit_rate, low, high = poisson_rate_ci(out["n_internalization"] + out["n_unbinding"],
                                               out["membrane_bound_time_min"], ci_level)
        out["membrane_dwell_min"] = 1.0 / exit_rate
        out["membrane_dwell_min_ci_low"] = 1.0 / high
        out["membrane_dwell_min_ci_high"] = 1.0 / low
    return out
