"""States over time: a hidden Markov model per track, and the events it implies.

A per-frame rule (zone ``inside`` → vesicular, ``membrane`` → membrane_bound,
...) turns every wobble of a particle across the membrane band into false
events. Here each track is a hidden Markov model whose states are those of
:data:`pipeline.vocabulary.STATES`: extracellular (E), membrane_bound (M),
vesicular (V) and released (R).

Dynamics
    A continuous-time Markov chain with only the transitions of the biology:
    E→M (binding), M→E (unbinding), M→V (internalization), V→R (release); R is
    absorbing. Its generator ``Q`` (rates in 1/min) gives the transition matrix
    between two detections ``expm(Q · Δt)``, with ``Δt`` the actual time between
    them, so tracks that skip frames are handled exactly. A jump that needs more
    than one transition within one interval (E→V, M→R, E→R, only likely over
    gaps) is read as the chain of events along the only allowed path, all at
    the frame of the detection after the jump. Tracks start in E, M or V with
    learned probabilities (R needs a vesicular past).
Emissions
    Two features, independent given the state.
    Distance: the continuous signed distance to the membrane ``d`` (µm,
    negative inside; :mod:`pipeline.stages.zones`), not just the zone. With
    ``σ = membrane_sigma_um``: M ~ Normal(0, σ); V ∝ Φ(-d/σ) / L (flat inside,
    soft edge); E and R ∝ Φ(d/σ) / L (flat outside: ``released`` is history,
    not geometry), with ``L = free_extent_um``; each mixed with a 0.01 %
    outlier component flat over ±L, so one detection on the wrong side of a
    segmentation error (or a released particle drifting over a neighbour)
    costs a bounded penalty instead of an impossible path. Detections with
    ``cell_id`` 0 (no cell within reach) or no distance can only be E or R.
    Motion: the displacement ``ℓ`` (px) from the track's previous detection,
    Rayleigh with scale² ``g · s²`` over a gap of ``g`` frames, one ``s`` per
    motion class (free: E and R; membrane: M; vesicle: V), plus a 1 % broad
    outlier component so a linking error or a vesicle run cannot force a state
    change. Distance alone cannot tell a free particle resting against a cell
    from a bound one; motion can (free particles diffuse, bound ones ride the
    membrane). The scales start equal (uninformative) and are learned.
Learning
    Up to ``em_iterations`` rounds of Baum-Welch, pooled over all tracks (at
    most 200 000 detections, whole tracks in a seeded random draw), re-estimate
    the four rates (expected events / expected time at risk, each with one
    pseudo-event at its prior rate), ``σ`` and the motion scales (each with
    one pseudo-observation at its starting value) and the initial
    probabilities, so the switching penalties and emission widths come from
    the data rather than from tuning. Rounds stop early once the
    log-likelihood gains less than 1e-5 per detection.
Decoding
    Viterbi in log space, vectorised over tracks (tracks sorted by length, so
    the tracks still running at step ``t`` are a prefix).

Cells of events and of released particles: binding and internalization happen
at the cell the particle is at; unbinding and release at the cell it was last
membrane-bound or vesicular in. Rows in state ``released`` keep that origin
cell as their ``cell_id`` (their distance stays that to the nearest membrane),
so per-cell counts of released particles and release events agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import Field
from scipy.linalg import expm
from scipy.special import log_ndtr

from pipeline.errors import UptrackError
from pipeline.params import Params
from pipeline.vocabulary import BACKGROUND, EVENT_OF_TRANSITION, INSIDE, MEMBRANE, STATE_CODE, STATES

__all__ = ["ClassifyParams", "classify_tracks", "classify_by_zone", "summarize_tracks", "events_from_states",
           "EVENTS_OF_JUMP", "TIME_SHARE"]

E, M, V, R = (STATE_CODE[s] for s in ("extracellular", "membrane_bound", "vesicular", "released"))
#: The only order in which states can follow each other (M → E aside).
_FORWARD = (E, M, V, R)


def _jump_path(a: int, b: int) -> list[int] | None:
    """States visited from ``a`` to ``b`` along allowed transitions (None: not reachable)."""
    if a == b:
        return [a]
    if _FORWARD.index(b) > _FORWARD.index(a):
        return list(_FORWARD[_FORWARD.index(a): _FORWARD.index(b) + 1])
    if (a, b) == (M, E):
        return [M, E]
    return None


def _jump_tables():
    events = [[() for _ in STATES] for _ in STATES]
    share = np.zeros((4, 4, 4))
    transitions = np.zeros((4, 4, 4, 4))
    for a in range(4):
        for b in range(4):
            path = _jump_path(a, b)
            if path is None:  # not a jump the biology allows (only a per-frame rule makes it): no events
                share[a, b, [a, b]] = 0.5
                continue
            steps = list(zip(path, path[1:]))
            events[a][b] = tuple(EVENT_OF_TRANSITION[(STATES[s], STATES[t])] for s, t in steps)
            share[a, b, path] += 1.0 / len(path)
            for s, t in steps:
                transitions[a, b, s, t] = 1.0
    return tuple(tuple(row) for row in events), share, transitions


#: Events implied by a state change between two consecutive detections, ``EVENTS_OF_JUMP[a][b]``
#: (state indices into STATES); several along the allowed path for multi-step jumps.
#: TIME_SHARE[a, b, s]: fraction of the interval between the two detections spent in state s:
#: all of it when a == b, otherwise split equally among the states of the path (the change
#: times are unknown within the interval; equal shares are their expected positions).
#: _TRANSITIONS_OF_JUMP[a, b, s, t]: 1 where the direct transition s → t lies on that path.
EVENTS_OF_JUMP, TIME_SHARE, _TRANSITIONS_OF_JUMP = _jump_tables()


class ClassifyParams(Params):
    """Parameters of the temporal model (``classify:`` in a run config)."""

    membrane_sigma_um: float = Field(
        0.25,
        gt=0,
        description="Spread of a membrane-bound particle's signed distance around the mask boundary, µm: "
        "segmentation boundary error (~0.2 µm) and localisation error (~0.07 µm) in quadrature. Also "
        "the softness of the vesicular / extracellular edges. Starting value when em_iterations > 0.",
    )
    free_extent_um: float = Field(
        5.0,
        gt=0,
        description="Depth (inside) and reach (outside) over which vesicular and extracellular positions "
        "spread, µm (about a cell radius). Sets the membrane/free balance: with the defaults a single "
        "detection is equally likely membrane_bound and vesicular at d ≈ -0.5 µm, the zones' band edge.",
    )
    binding_rate_per_min: float = Field(0.1, gt=0, description="Prior binding rate (E→M), 1/min.")
    unbinding_rate_per_min: float = Field(0.05, gt=0, description="Prior unbinding rate (M→E), 1/min.")
    internalization_rate_per_min: float = Field(0.1, gt=0, description="Prior internalization rate (M→V), 1/min.")
    release_rate_per_min: float = Field(
        0.03, gt=0, description="Prior release rate (V→R), 1/min (half-life ~23 min, the order published for "
        "quantum dots).")
    em_iterations: int = Field(
        10, ge=0, description="Baum-Welch rounds pooled over all tracks that re-estimate rates, sigma and initial "
        "state probabilities before decoding; 0 decodes with the priors.")
    min_contact_frames: int = Field(
        3, ge=1, description="Minimum dwell for a contact and for an unbinding, detections: a membrane_bound "
        "stretch between extracellular ones shorter than this is decoded extracellular (a free particle "
        "touching a cell: neither binding nor unbinding); an extracellular stretch after membrane_bound that is "
        "shorter and ends the track or returns to membrane_bound is decoded membrane_bound (no unbinding). "
        "1 keeps every decoded change.")


#: Motion class of each state: free (E, R), membrane (M), vesicle (V).
_MOTION_CLASS = np.array([0, 1, 2, 0])
#: Fraction of steps (and of distances) drawn from a broad outlier component (linking errors,
#: vesicle runs, segmentation errors), and the step's scale relative to the broadest class: one
#: wild observation then costs at most ~log(1/0.01) nats instead of forcing a state change.
_OUTLIER_FRACTION = 0.01
_OUTLIER_SCALE2 = 25.0
#: The same for the distance to the membrane, flat over ±free_extent_um; rarer than wild steps
#: (a free particle inside a cell costs ~10 nats per detection, as much as two events).
_DISTANCE_OUTLIER_FRACTION = 1e-4
#: Baum-Welch learns from at most this many detections (whole tracks, seeded draw) and stops when
#: the log-likelihood gains less than _EM_TOLERANCE per detection in a round.
_EM_MAX_DETECTIONS = 200_000
_EM_TOLERANCE = 1e-5


@dataclass(frozen=True)
class _Model:
    rates_per_min: np.ndarray  # (4, 4) generator off-diagonals, 1/min
    log_initial: np.ndarray  # (4,)
    sigma_um: float  # spread of membrane_bound distances, µm
    motion_px2: np.ndarray  # (3,) Rayleigh scale² of one frame's displacement per motion class, px²

    def generator(self) -> np.ndarray:
        q = self.rates_per_min.copy()
        np.fill_diagonal(q, -q.sum(axis=1))
        return q


@dataclass(frozen=True)
class _Observations:
    """Per detection, in track order: signed distance (µm), whether a cell is in reach, and the
    squared displacement from the previous detection per frame of gap (px²; NaN at track starts)."""

    distance_um: np.ndarray
    near: np.ndarray
    step2_px2: np.ndarray


class _Tracks:
    """Detections sorted into tracks, longest first, for time-stepped vectorised passes.

    ``order`` maps sorted positions to input rows; track ``i`` occupies sorted
    positions ``starts[i] .. starts[i] + lengths[i] - 1``; ``n_active[t]`` tracks
    have a detection at step ``t``.
    """

    def __init__(self, track_id: np.ndarray, frame: np.ndarray):
        _, inverse, counts = np.unique(track_id, return_inverse=True, return_counts=True)
        self.order = np.lexsort((frame, inverse, -counts[inverse]))
        # tracks appear in sorted rows in order of decreasing length, ties by track id
        self.lengths = counts[np.argsort(-counts, kind="stable")]
        self.starts = np.cumsum(self.lengths) - self.lengths
        max_len = int(self.lengths[0]) if len(self.lengths) else 0
        self.n_active = np.searchsorted(-self.lengths, -np.arange(max_len), side="left")
        sorted_frame = frame[self.order]
        self.gap = np.zeros(len(frame), np.int64)
        self.gap[1:] = np.diff(sorted_frame)
        self.gap[self.starts] = 0
        self.is_start = np.zeros(len(frame), bool)
        self.is_start[self.starts] = True

    def steps(self, reverse: bool = False):
        """Yield the sorted positions of the detections at step t = 1, 2, ... (or reversed)."""
        ts = range(len(self.n_active) - 1, 0, -1) if reverse else range(1, len(self.n_active))
        for t in ts:
            yield self.starts[: self.n_active[t]] + t


def classify_tracks(
    particles: pd.DataFrame, *, frame_interval_s: float, params: ClassifyParams
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode each track's states with the HMM and list the events.

    Parameters
    ----------
    particles : DataFrame
        One row per detection with ``track_id``, ``frame``, ``y``, ``x`` (px),
        ``cell_id`` and ``distance_um`` (µm, from :func:`pipeline.stages.zones.assign_zones`).
    frame_interval_s : float
        Time between frames, s.
    params : ClassifyParams

    Returns
    -------
    particles : DataFrame
        A copy (same row order) with ``state`` added; rows in ``released`` carry
        their origin cell as ``cell_id`` (see the module docstring).
    events : DataFrame
        ``track_id``, ``cell_id``, ``frame`` (first frame in the new state),
        ``time_s``, ``kind``; sorted by frame and track; and from the HMM's
        forward-backward posterior: ``p_event`` (probability of the decoded
        jump, previous state → new state, exactly between the previous detection
        and this one), ``p_event_window`` (the same summed over the 3
        detections either side: the probability the jump happened near here)
        and ``frame_sd`` (posterior standard deviation of the jump's frame in
        that window, frames).
    """
    _require(particles, ("track_id", "frame", "y", "x", "cell_id", "distance_um"))
    if particles.empty:
        out, events = events_from_states(particles, np.zeros(0, np.int64), frame_interval_s=frame_interval_s)
        return out, events.assign(**{name: np.zeros(0) for name in EVENT_POSTERIOR_COLUMNS})
    track_id = particles["track_id"].to_numpy(np.int64)
    dt_min = frame_interval_s / 60.0
    model = _fit(particles.iloc[_training_rows(track_id)], params, dt_min)
    tracks = _Tracks(track_id, particles["frame"].to_numpy(np.int64))
    log_emission, _, _ = _log_emission(_observations(particles, tracks), model, params)
    decoded = _viterbi(tracks, log_emission, _log_transitions(model, tracks.gap, dt_min), model)
    decoded = _drop_short_contacts(tracks, decoded, params.min_contact_frames)
    a, gap_index = _transition_matrices(model, tracks.gap, dt_min)
    emission = np.exp(log_emission - log_emission.max(axis=1, keepdims=True))
    *_, xi = _forward_backward(tracks, emission, a, gap_index, model.log_initial)
    sorted_frame = particles["frame"].to_numpy(np.int64)[tracks.order]
    posteriors = _event_posteriors(tracks, decoded, xi, sorted_frame)
    states = np.empty(len(particles), np.int64)
    states[tracks.order] = decoded
    out, events = events_from_states(particles, states, frame_interval_s=frame_interval_s)
    return out, _with_posteriors(events, particles, tracks, posteriors)


#: The events table's frame convention (also in its ``attrs``, for the store's metadata).
EVENT_FRAME_CONVENTION = "frame = first frame in the new state (the detection after the change); time_s = frame * dt"
#: Columns the HMM adds to the events table (see classify_tracks).
EVENT_POSTERIOR_COLUMNS = ("p_event", "p_event_window", "frame_sd")


def _with_posteriors(events: pd.DataFrame, particles: pd.DataFrame, tracks: _Tracks,
                     posteriors: tuple[np.ndarray, np.ndarray, np.ndarray]) -> pd.DataFrame:
    """``events`` with the posterior columns of the detection each event is at (track, frame)."""
    key = pd.MultiIndex.from_arrays([particles["track_id"].to_numpy(np.int64)[tracks.order],
                                     particles["frame"].to_numpy(np.int64)[tracks.order]])
    at = key.get_indexer(pd.MultiIndex.from_arrays([events["track_id"].to_numpy(np.int64),
                                                    events["frame"].to_numpy(np.int64)]))
    events = events.copy()
    for name, values in zip(EVENT_POSTERIOR_COLUMNS, posteriors, strict=True):
        events[name] = values[at] if len(at) else np.zeros(0)
    events.attrs["frame_convention"] = EVENT_FRAME_CONVENTION
    return events


def classify_by_zone(particles: pd.DataFrame, *, frame_interval_s: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-frame rule, the baseline the HMM is measured against (no temporal model).

    ``inside`` → vesicular, ``membrane`` → membrane_bound, ``outside`` →
    extracellular, or released when the track was inside before. Same outputs
    as :func:`classify_tracks`.
    """
    _require(particles, ("track_id", "frame", "cell_id", "zone"))
    zone = particles["zone"].to_numpy()
    states = np.select([zone == INSIDE, zone == MEMBRANE], [V, M], E)
    order = np.lexsort((particles["frame"].to_numpy(), particles["track_id"].to_numpy()))
    sorted_states = states[order]
    was_inside = pd.Series(sorted_states == V).groupby(particles["track_id"].to_numpy()[order]).cummax()
    sorted_states[(sorted_states == E) & was_inside.to_numpy()] = R
    states[order] = sorted_states
    return events_from_states(particles, states, frame_interval_s=frame_interval_s)


def events_from_states(
    particles: pd.DataFrame, states: np.ndarray, *, frame_interval_s: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attach ``state`` (indices into STATES, one per row) and list the events of the state changes.

    Consecutive detections of a track in states ``a`` → ``b`` give the events
    ``EVENTS_OF_JUMP[a][b]`` at the frame of the second. Event cells and the
    ``cell_id`` of released rows follow the module docstring. Returns
    ``(particles, events)`` as :func:`classify_tracks` does.
    """
    out = particles.copy()
    order = np.lexsort((particles["frame"].to_numpy(), particles["track_id"].to_numpy()))
    track = particles["track_id"].to_numpy(np.int64)[order]
    frame = particles["frame"].to_numpy(np.int64)[order]
    cell = particles["cell_id"].to_numpy(np.int64)[order]
    state = np.asarray(states, np.int64)[order]
    attached = (state == M) | (state == V)
    origin = (pd.Series(np.where(attached, cell, np.nan)).groupby(track).ffill()
              .fillna(pd.Series(cell)).to_numpy(np.int64))
    cell_out = np.where(state == R, origin, cell)
    out["cell_id"] = _unsort(cell_out, order)
    out["state"] = np.asarray(STATES)[states]

    second = np.flatnonzero((track[1:] == track[:-1]) & (state[1:] != state[:-1])) + 1
    pairs = [(i, kind) for i in second for kind in EVENTS_OF_JUMP[state[i - 1]][state[i]]]
    rows = np.array([i for i, _ in pairs], np.int64)
    kinds = [kind for _, kind in pairs]
    events = pd.DataFrame({
        "track_id": track[rows],
        "cell_id": origin[rows],
        "frame": frame[rows],
        "time_s": frame[rows] * float(frame_interval_s),
        "kind": pd.Series(kinds, dtype=str),
    })
    events = events.sort_values(["frame", "track_id"], kind="stable", ignore_index=True)
    return out, events


def summarize_tracks(particles: pd.DataFrame) -> pd.DataFrame:
    """One row per track (the ``tracks`` table of pipeline/README.md).

    Parameters
    ----------
    particles : DataFrame
        Classified detections: ``track_id``, ``frame``, ``cell_id``, ``state``
        and optionally ``mass``.

    Returns
    -------
    DataFrame
        ``track_id``, ``first_frame``, ``last_frame``, ``n_detections``,
        ``cell_id`` (cell of the track's longest run of consecutive
        membrane_bound / vesicular detections in one cell, ties to the earliest;
        0 if none), ``final_state``, ``mean_mass`` (NaN without a ``mass``
        column) and ``n_<state>`` for each state.
    """
    p = particles.sort_values(["track_id", "frame"], kind="stable", ignore_index=True)
    grouped = p.groupby("track_id", sort=True)
    tracks = pd.DataFrame({
        "first_frame": grouped["frame"].min(),
        "last_frame": grouped["frame"].max(),
        "n_detections": grouped.size(),
    })
    attached = p["state"].isin(["membrane_bound", "vesicular"]).to_numpy()
    track, cell = p["track_id"].to_numpy(), p["cell_id"].to_numpy(np.int64)
    new_run = np.ones(len(p), bool)
    new_run[1:] = (track[1:] != track[:-1]) | (cell[1:] != cell[:-1]) | (attached[1:] != attached[:-1])
    runs = pd.DataFrame({"track_id": track, "cell_id": cell, "run": np.cumsum(new_run)})[attached]
    run_sizes = runs.groupby(["track_id", "run"], sort=True).agg(cell_id=("cell_id", "first"),
                                                                 size=("cell_id", "size")).reset_index()
    longest = run_sizes.sort_values(["track_id", "size", "run"], ascending=[True, False, True], kind="stable")
    tracks["cell_id"] = longest.drop_duplicates("track_id").set_index("track_id")["cell_id"]
    tracks["cell_id"] = tracks["cell_id"].fillna(BACKGROUND).astype(np.int64)
    tracks["final_state"] = grouped["state"].last()
    tracks["mean_mass"] = grouped["mass"].mean() if "mass" in p else np.nan
    counts = pd.crosstab(p["track_id"], p["state"]).reindex(columns=list(STATES), fill_value=0)
    for state in STATES:
        tracks[f"n_{state}"] = counts[state].astype(np.int64)
    tracks = tracks.reset_index()
    tracks["track_id"] = tracks["track_id"].astype(np.int64)
    return tracks


# -- model pieces -------------------------------------------------------------------------------------------


def _require(df: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in df]
    if missing:
        raise UptrackError(f"classify: particles table lacks column(s) {missing}; run the zones stage first")


def _unsort(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[order] = values
    return out


def _rate_matrix(binding: float, unbinding: float, internalization: float, release: float) -> np.ndarray:
    rates = np.zeros((4, 4))
    rates[E, M], rates[M, E], rates[M, V], rates[V, R] = binding, unbinding, internalization, release
    return rates


def _training_rows(track_id: np.ndarray) -> np.ndarray:
    """Rows Baum-Welch learns from: all, or whole tracks drawn at random (seeded) up to
    _EM_MAX_DETECTIONS detections; pooled parameters need no more."""
    if len(track_id) <= _EM_MAX_DETECTIONS:
        return np.arange(len(track_id))
    _, inverse, counts = np.unique(track_id, return_inverse=True, return_counts=True)
    drawn = np.random.default_rng(0).permutation(len(counts))
    n_tracks = np.searchsorted(np.cumsum(counts[drawn]), _EM_MAX_DETECTIONS) + 1
    chosen = np.zeros(len(counts), bool)
    chosen[drawn[:n_tracks]] = True
    return np.flatnonzero(chosen[inverse])


def _fit(particles: pd.DataFrame, params: ClassifyParams, dt_min: float) -> _Model:
    """The model after up to ``params.em_iterations`` Baum-Welch rounds (stopping once converged)."""
    tracks = _Tracks(particles["track_id"].to_numpy(np.int64), particles["frame"].to_numpy(np.int64))
    obs = _observations(particles, tracks)
    finite = np.isfinite(obs.step2_px2)
    # motion starts uninformative (one scale for all classes); Baum-Welch separates the classes
    typical = np.median(obs.step2_px2[finite]) / (2 * np.log(2)) if finite.any() else 1.0
    model = _Model(
        rates_per_min=_rate_matrix(params.binding_rate_per_min, params.unbinding_rate_per_min,
                                   params.internalization_rate_per_min, params.release_rate_per_min),
        log_initial=np.array([np.log(1 / 3)] * 3 + [-np.inf]),
        sigma_um=params.membrane_sigma_um,
        motion_px2=np.full(3, max(typical, 1e-6)),
    )
    prior, previous = model, -np.inf
    for _ in range(params.em_iterations):
        model, log_likelihood = _baum_welch_step(tracks, obs, model, prior, dt_min, params)
        if log_likelihood - previous < _EM_TOLERANCE * len(particles):
            break
        previous = log_likelihood
    return model


def _observations(particles: pd.DataFrame, tracks: _Tracks) -> _Observations:
    y = particles["y"].to_numpy(float)[tracks.order]
    x = particles["x"].to_numpy(float)[tracks.order]
    step2 = np.full(len(y), np.nan)
    moved = ~tracks.is_start & (tracks.gap > 0)
    prev = np.flatnonzero(moved) - 1
    step2[moved] = ((y[moved] - y[prev]) ** 2 + (x[moved] - x[prev]) ** 2) / tracks.gap[moved]
    return _Observations(
        distance_um=particles["distance_um"].to_numpy(float)[tracks.order],
        near=particles["cell_id"].to_numpy(np.int64)[tracks.order] != BACKGROUND,
        step2_px2=step2,
    )


def _log_distance_emission(distance_um: np.ndarray, near: np.ndarray, sigma: float,
                           extent_um: float) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) log-likelihood of each detection's signed distance (µm) under each state, and the
    posterior probability that it came from the state's own density rather than the outlier one
    (a fraction _DISTANCE_OUTLIER_FRACTION spread evenly over ±free_extent_um: a segmentation or
    linking error can put one detection anywhere, and must not make every path impossible)."""
    d = np.where(np.isnan(distance_um), np.inf, distance_um) / sigma
    own = np.empty((len(d), 4))
    with np.errstate(invalid="ignore", over="ignore"):
        own[:, M] = -0.5 * d**2 - np.log(sigma * np.sqrt(2 * np.pi))
    own[:, V] = log_ndtr(-d) - np.log(extent_um)
    own[:, E] = log_ndtr(d) - np.log(extent_um)
    own[:, R] = own[:, E]
    own = np.nan_to_num(own, nan=-np.inf) + np.log1p(-_DISTANCE_OUTLIER_FRACTION)
    outlier = np.where(np.isfinite(distance_um), np.log(_DISTANCE_OUTLIER_FRACTION / (2 * extent_um)),
                       -np.inf)[:, None]
    total = np.logaddexp(own, outlier)
    total[~near, M] = -np.inf  # no cell within reach: neither bound nor inside one
    total[~near, V] = -np.inf
    with np.errstate(invalid="ignore"):
        return total, np.nan_to_num(np.exp(own - total), nan=0.0)


def _log_motion_components(step2_px2: np.ndarray, motion_px2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per motion class: log-likelihood of each step (terms common to all classes dropped) and the
    posterior probability that it came from the class's own Rayleigh rather than the outlier one."""
    scale2 = np.append(motion_px2, _OUTLIER_SCALE2 * motion_px2.max())
    s2 = np.nan_to_num(step2_px2, nan=0.0)[:, None]
    log_parts = -np.log(scale2) - s2 / (2 * scale2)  # (n, 4): three classes, then the outlier
    own = np.log1p(-_OUTLIER_FRACTION) + log_parts[:, :3]
    outlier = np.log(_OUTLIER_FRACTION) + log_parts[:, 3:]
    total = np.logaddexp(own, outlier)
    total[np.isnan(step2_px2)] = 0.0
    return total, np.exp(own - total)


def _log_emission(obs: _Observations, model: _Model,
                  params: ClassifyParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, 4) log-likelihood of each detection under each state, and the posteriors that its step
    (n, 3 motion classes) and its distance (n, 4 states) came from the own, not the outlier, part."""
    motion, own_motion = _log_motion_components(obs.step2_px2, model.motion_px2)
    distance, own_distance = _log_distance_emission(obs.distance_um, obs.near, model.sigma_um,
                                                    params.free_extent_um)
    return distance + motion[:, _MOTION_CLASS], own_motion, own_distance


def _transition_matrices(model: _Model, gap: np.ndarray, dt_min: float) -> tuple[np.ndarray, np.ndarray]:
    """Distinct gaps' transition matrices (G, 4, 4) and each detection's index into them."""
    gaps, index = np.unique(gap, return_inverse=True)
    q = model.generator()
    return np.stack([expm(q * g * dt_min) for g in gaps]), index


def _log_transitions(model: _Model, gap: np.ndarray, dt_min: float) -> tuple[np.ndarray, np.ndarray]:
    matrices, index = _transition_matrices(model, gap, dt_min)
    with np.errstate(divide="ignore"):
        return np.log(np.clip(matrices, 0, None)), index


def _viterbi(tracks: _Tracks, log_emission: np.ndarray, log_transitions: tuple[np.ndarray, np.ndarray],
             model: _Model) -> np.ndarray:
    """Most likely state of each detection (sorted order)."""
    log_a, gap_index = log_transitions
    starts = tracks.starts
    delta = model.log_initial + log_emission[starts]
    back = np.zeros(log_emission.shape, np.int8)
    for idx in tracks.steps():
        m = len(idx)
        scores = delta[:m, :, None] + log_a[gap_index[idx]]
        back[idx] = scores.argmax(axis=1)
        delta[:m] = scores.max(axis=1) + log_emission[idx]
    states = np.zeros(len(log_emission), np.int64)
    states[starts + tracks.lengths - 1] = delta.argmax(axis=1)
    for idx in tracks.steps(reverse=True):
        states[idx - 1] = back[idx, states[idx]]
    return states


def _forward_backward(tracks: _Tracks, emission: np.ndarray, a: np.ndarray, gap_index: np.ndarray,
                      log_initial: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scaled forward-backward over all tracks (sorted order).

    Returns ``alpha``, ``beta`` (n, 4), the per-row scales (n,) and ``xi`` (n, 4, 4): the
    posterior probability of states (a, b) at the previous and this detection (zero at track
    starts).
    """
    starts = tracks.starts
    alpha = np.zeros_like(emission)
    scale = np.ones(len(emission))
    first = np.exp(log_initial) * emission[starts]
    scale[starts] = first.sum(axis=1)
    alpha[starts] = first / scale[starts, None]
    for idx in tracks.steps():
        step = np.einsum("ij,ijk->ik", alpha[idx - 1], a[gap_index[idx]]) * emission[idx]
        scale[idx] = step.sum(axis=1)
        alpha[idx] = step / scale[idx, None]
    beta = np.ones_like(emission)
    xi = np.zeros((len(emission), 4, 4))
    for idx in tracks.steps(reverse=True):
        weighted = emission[idx] * beta[idx] / scale[idx, None]
        xi[idx] = alpha[idx - 1][:, :, None] * a[gap_index[idx]] * weighted[:, None, :]
        beta[idx - 1] = np.einsum("ijk,ik->ij", a[gap_index[idx]], weighted)
    return alpha, beta, scale, xi


def _drop_short_contacts(tracks: _Tracks, states: np.ndarray, min_frames: int) -> np.ndarray:
    """States (sorted order) with short stretches (under ``min_frames`` detections) that the data
    cannot support as events relabelled: a membrane_bound stretch entered from and left to
    extracellular becomes extracellular (a free particle touching a cell: no binding, no
    unbinding); an extracellular stretch after a membrane_bound one that ends the track or is
    followed by membrane_bound again becomes membrane_bound (an unbinding needs ``min_frames``
    detections off the cell)."""
    if min_frames <= 1 or len(states) == 0:
        return states
    out = states.copy()
    track = np.repeat(np.arange(len(tracks.lengths)), tracks.lengths)
    change = np.ones(len(states), bool)
    change[1:] = (states[1:] != states[:-1]) | (track[1:] != track[:-1])
    run_start = np.flatnonzero(change)
    run_end = np.append(run_start[1:], len(states)) - 1
    for first, last in zip(run_start, run_end, strict=True):
        if last - first + 1 >= min_frames or first == 0 or track[first - 1] != track[first]:
            continue
        before = states[first - 1]
        after = states[last + 1] if last + 1 < len(states) and track[last + 1] == track[first] else None
        if states[first] == M and before == E and after == E:
            out[first:last + 1] = E
        elif states[first] == E and before == M and after in (None, M):
            out[first:last + 1] = M
    return out


def _event_posteriors(tracks: _Tracks, states: np.ndarray, xi: np.ndarray, frame: np.ndarray,
                      window: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per detection (sorted order) where the decoded state changes: the posterior probability of
    that jump (previous state → this state) exactly there, summed over the ``window`` detections
    either side in the same track, and the posterior standard deviation of its frame there
    (frames). NaN elsewhere."""
    n = len(states)
    p_here, p_near, frame_sd = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    track = np.repeat(np.arange(len(tracks.lengths)), tracks.lengths)
    for i in np.flatnonzero((np.arange(n) > 0) & ~tracks.is_start & (np.diff(states, prepend=states[:1]) != 0)):
        a, b = states[i - 1], states[i]
        lo, hi = max(i - window, 0), min(i + window, n - 1)
        js = np.arange(lo, hi + 1)
        js = js[(track[js] == track[i]) & ~tracks.is_start[js]]
        w = xi[js, a, b]
        p_here[i], p_near[i] = xi[i, a, b], w.sum()
        if w.sum() > 0:
            mean = np.sum(w * frame[js]) / w.sum()
            frame_sd[i] = np.sqrt(np.sum(w * (frame[js] - mean) ** 2) / w.sum())
    return p_here, p_near, frame_sd


def _baum_welch_step(tracks: _Tracks, obs: _Observations, model: _Model, prior: _Model, dt_min: float,
                     params: ClassifyParams) -> tuple[_Model, float]:
    """One pooled Baum-Welch round (scaled forward-backward).

    Returns the re-estimated model and the log-likelihood of the data under ``model``.
    """
    log_e, own_motion, own_distance = _log_emission(obs, model, params)
    row_max = log_e.max(axis=1, keepdims=True)
    emission = np.exp(log_e - row_max)  # per-row scale cancels in the posteriors
    a, gap_index = _transition_matrices(model, tracks.gap, dt_min)
    starts = tracks.starts
    alpha, beta, scale, xi = _forward_backward(tracks, emission, a, gap_index, model.log_initial)
    jumps = np.eye(len(a))[gap_index].T @ xi.reshape(-1, 16)  # expected (from, to) counts per distinct gap
    gamma = alpha * beta
    gamma /= gamma.sum(axis=1, keepdims=True)

    # rates: expected events / expected time at risk, plus one pseudo-event at the prior rate
    jumps = jumps.reshape(-1, 4, 4)
    time_min = np.einsum("gab,abs,g->s", jumps, TIME_SHARE, np.unique(tracks.gap) * dt_min)
    counts = np.einsum("gab,abst->st", jumps, _TRANSITIONS_OF_JUMP)
    allowed = prior.rates_per_min > 0
    rates = np.zeros((4, 4))
    prior_time = 1.0 / np.where(allowed, prior.rates_per_min, 1.0)
    rates[allowed] = ((counts + 1.0) / (time_min[:, None] + prior_time))[allowed]

    # motion scales: responsibility-weighted mean of step² / 2, plus one pseudo-step at the prior
    has_step = np.isfinite(obs.step2_px2)
    class_weight = np.stack([gamma[:, _MOTION_CLASS == c].sum(axis=1) for c in range(3)], axis=1)
    weight = (class_weight * own_motion)[has_step]
    motion = ((weight * obs.step2_px2[has_step, None]).sum(axis=0) / 2 + prior.motion_px2) / (weight.sum(axis=0) + 1)

    # membrane spread: responsibility-weighted RMS distance, plus one pseudo-detection at the prior
    bound = gamma[:, M] * own_distance[:, M] * np.isfinite(obs.distance_um)
    d2 = np.nan_to_num(obs.distance_um, nan=0.0, posinf=0.0, neginf=0.0) ** 2
    sigma = np.sqrt((np.sum(bound * d2) + prior.sigma_um**2) / (bound.sum() + 1))

    initial = gamma[starts].sum(axis=0) + np.array([1.0, 1.0, 1.0, 0.0])
    with np.errstate(divide="ignore"):
        log_initial = np.log(initial / initial.sum())
    log_likelihood = float(np.log(scale).sum() + row_max.sum())
    model = _Model(rates_per_min=rates, log_initial=log_initial, sigma_um=float(sigma), motion_px2=motion)
    return model, log_likelihood
