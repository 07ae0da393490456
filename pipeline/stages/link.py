"""Particle linking: detections of consecutive frames joined into tracks with trackpy.

``link_tracks`` runs ``trackpy.link`` (Crocker-Grier: each frame's detections
are matched to the previous frame's within a search radius, minimising the
summed squared displacement over every ambiguous subnetwork) and adds
``track_id`` (int64, 0, 1, 2, ... in order of first appearance).

- **Search range.** Given directly (``search_range_um``) or from the fastest
  diffusion to follow (``max_diffusion_um2_s``): a particle's displacement per
  axis over one frame interval has standard deviation
  ``s = sqrt(2 D Δt + 2 ε²)`` (ε: the detections' median localisation error,
  their ``ep`` column), and the search radius is ``SEARCH_SIGMAS × s``, which
  a Brownian step exceeds with probability ``exp(-SEARCH_SIGMAS² / 2)``.
- **Brightness.** Particles differ in brightness (log-normal, CV 0.4-0.6) far
  more than one particle does between frames, so links are scored in
  (y, x, log mass) space: a first, position-only pass measures the typical
  frame-to-frame spread of log mass along tracks (tail-aware: the larger of the
  MAD and the 90th percentile, since real particles' brightness jumps; none if
  brightness varies along tracks nearly as much as between particles, then
  linking is by position only), and the final pass adds the
  change in log mass, in units of ``mass_sigmas`` such spreads, as a third
  coordinate worth one displacement standard deviation. This halves the
  swaps between neighbours of different brightness.
- **Gaps.** ``memory_frames`` lets a track skip frames where its particle was
  not detected (dim frames, blinking) and resume within the search range.
- **Dense regions.** When a subnetwork of candidate links is too large to
  solve exactly, trackpy's adaptive search shrinks the radius for that
  subnetwork (by ``adaptive_step`` per try, down to ``adaptive_stop_um``), so
  linking time stays bounded. Free particles faster than the search range
  (e.g. 1 µm²/s at 3 s frames: 7-12 px per frame at 0.2 µm px) cannot be
  followed: they give short tracks, which are real detections and are kept
  unless ``min_track_length`` says otherwise.

``close_gaps`` then joins track segments frame-by-frame linking left apart
(u-track's gap closing): every track end is paired with at most one track
start 1 to ``close_gaps_frames`` frames later, within the Brownian search
radius for that gap, by one global assignment that minimises the summed
negative log-likelihood of the jumps (position, and brightness as in
linking); an end or start may stay unpaired at the cost of a jump at the edge
of the search radius. Frame-by-frame linking breaks tracks where particles
crowd (the adaptive search shrinks the radius there; a neighbour takes the
link) and where a particle is missed for more than ``memory_frames``; such
breaks cut a particle's history at the moments that matter (binding,
internalization, release happen next to the crowded membrane).

``fill_gaps`` then recovers the frames a track skipped: in each, it looks for
the particle where the track's neighbouring detections put it (a Brownian
bridge: the search radius shrinks towards the known ends) with a lower
significance threshold (``fill_gaps_min_snr``), sound because the position is
known beforehand. It needs the movie, so the runner calls it after linking.
"""

from __future__ import annotations

import functools
import logging
import threading
from contextlib import contextmanager

import numpy as np
import pandas as pd
import trackpy
from pydantic import Field
from trackpy.linking.utils import SubnetOversizeException

from pipeline.errors import UptrackError
from pipeline.params import Params
from pipeline.stages.detect import DetectParams, detect_near

#: Fewest links of the first pass that make a measurement of the brightness spread.
MIN_LINKS_FOR_MASS = 20

#: Brightness is left out of linking when its tail-aware frame-to-frame spread along first-pass
#: tracks reaches this fraction of the spread of log mass over all detections (0.49 on the virus
#: movie, 0.60 on simulated movies with truth-based detections).
MAX_MASS_SPREAD_RATIO = 0.75

#: Search radius in standard deviations of the per-axis displacement; a
#: Brownian step exceeds it with probability exp(-SEARCH_SIGMAS**2 / 2) ≈ 0.2 %.
SEARCH_SIGMAS = 3.5
#: Fewest first-pass steps that measure the step size of a crowded movie (:func:`dense_search_px`).
MIN_STEPS_FOR_RANGE = 200


class LinkParams(Params):
    """Parameters of particle linking (config section ``link:``)."""

    max_diffusion_um2_s: float = Field(
        0.1,
        gt=0,
        description="Fastest diffusion coefficient to follow, µm²/s. Sets the search range when "
        "search_range_um is unset: 0.1 gives 2.7 µm per 3 s frame, which covers sedimented particles, "
        "membrane-bound and vesicular ones (~0.001-0.05) and the jumps that come with events (a vesicle "
        "pulled ~2 µm inwards on internalization or running out to fuse; measured on simulated movies, "
        "0.05 broke ~10 % of the tracks at internalization and release).",
    )
    search_range_um: float | None = Field(
        None,
        gt=0,
        description="Farthest a particle may move between two frames and keep its track, µm. Unset: "
        f"{SEARCH_SIGMAS} × sqrt(2 D Δt + 2 ε²) from max_diffusion_um2_s, the frame interval and "
        "the detections' localisation error ε.",
    )
    mass_sigmas: float | None = Field(
        1.5,
        gt=0,
        description="Score links by brightness too: a change in log mass of mass_sigmas × its typical "
        "frame-to-frame spread (measured from the data) costs as much as a one-sigma step. Unset: "
        "position only (e.g. for strongly blinking or defocusing particles).",
    )
    memory_frames: int = Field(
        2,
        ge=0,
        description="Frames a particle may go undetected (dim, blinking) and still continue its track.",
    )
    adaptive_step: float = Field(
        0.9,
        gt=0,
        lt=1,
        description="Where a subnetwork of candidate links is too large to solve, the search range "
        "there is multiplied by this factor until it can be solved.",
    )
    adaptive_stop_um: float = Field(
        0.02,
        gt=0,
        description="Smallest search range the adaptive search may reach, µm; below it linking fails.",
    )
    fill_gaps_min_snr: float | None = Field(
        3.0,
        gt=0,
        description="fill_gaps: detection threshold (detect.min_snr units) for a particle in the frames "
        "its track skipped, looked for at its interpolated position. Unset: no gap filling.",
    )
    close_gaps_frames: int = Field(
        4,
        ge=0,
        description="Gap closing: join a track that ends to one that starts up to this many frames later "
        "(ends and starts paired by a global assignment on the Brownian likelihood of the jump). Catches "
        "the breaks frame-by-frame linking leaves where particles crowd. 0: no gap closing.",
    )
    min_track_length: int = Field(
        1,
        ge=1,
        description="Drop tracks with fewer detections than this. 1 keeps everything: particles too "
        "fast to follow give short tracks that are still real detections.",
    )


def search_range_px(detections: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float,
                    params: LinkParams) -> float:
    """The search radius :func:`link_tracks` uses, px.

    Parameters
    ----------
    detections : DataFrame
        Detections; their ``ep`` column (px), if present, gives the localisation error.
    pixel_size_um : float
    frame_interval_s : float
    params : LinkParams

    Returns
    -------
    float
        ``search_range_um`` in px if given, else ``SEARCH_SIGMAS × sqrt(2 D Δt + 2 ε²)``.
    """
    if params.search_range_um is not None:
        return params.search_range_um / pixel_size_um
    step_px2, error_px2 = _motion_px2(detections, pixel_size_um, frame_interval_s, params)
    return SEARCH_SIGMAS * float(np.sqrt(step_px2 + 2.0 * error_px2))


def dense_search_px(table: pd.DataFrame, particle: np.ndarray, search: float) -> float:
    """A search radius from the measured steps when the movie is crowded, else ``search`` (px).

    Where the search radius from ``max_diffusion_um2_s`` is wider than the typical distance between
    neighbours in a frame, every particle has several candidates and long tracks break at swaps. Then
    the steps of a first linking pass (consecutive frames) measure how far particles really move:
    the radius becomes ``SEARCH_SIGMAS`` × the per-axis step sigma (the upper-quartile step over its
    Rayleigh quantile, 1.665 σ: robust to the wrong links of the first pass), never wider than ``search``. A movie whose
    neighbours are farther apart than ``search`` keeps it.

    Parameters
    ----------
    table : DataFrame
        Detections sorted by frame (``frame``, ``y``, ``x`` in px).
    particle : (n,) int array
        First-pass track ids of the rows.
    search : float
        The physical search radius, px.

    Returns
    -------
    float
    """
    from scipy.spatial import cKDTree

    frames = table["frame"].to_numpy()
    yx = table[["y", "x"]].to_numpy(float)
    neighbour = []
    for f in np.unique(frames)[:: max(1, len(np.unique(frames)) // 20)]:
        points = yx[frames == f]
        if len(points) >= 2:
            neighbour.append(cKDTree(points).query(points, 2)[0][:, 1])
    if not neighbour or np.median(np.concatenate(neighbour)) >= search:
        return search
    order = np.lexsort((frames, particle))
    same = (particle[order][1:] == particle[order][:-1]) & (np.diff(frames[order]) == 1)
    steps = np.hypot(*(np.diff(yx[order], axis=0)[same]).T)
    if len(steps) < MIN_STEPS_FOR_RANGE:
        return search
    sigma = float(np.quantile(steps, 0.75)) / 1.665
    return float(min(search, max(SEARCH_SIGMAS * sigma, 1.0)))


def _motion_px2(detections: pd.DataFrame, pixel_size_um: float, frame_interval_s: float,
                params: LinkParams) -> tuple[float, float]:
    """Variance of one Brownian step per axis (2 D Δt) and of a localisation (median ``ep`` squared), px²."""
    ep = detections["ep"].to_numpy(float) if "ep" in detections else np.zeros(0)
    ep = ep[np.isfinite(ep)]
    error_px = float(np.median(ep)) if len(ep) else 0.0
    return 2.0 * params.max_diffusion_um2_s * frame_interval_s / pixel_size_um**2, error_px**2


def link_tracks(detections: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float,
                params: LinkParams) -> pd.DataFrame:
    """Link detections into tracks.

    Parameters
    ----------
    detections : DataFrame
        One row per detection with at least ``frame`` (int), ``y``, ``x`` (px).
    pixel_size_um : float
        Pixel size, µm.
    frame_interval_s : float
        Time between frames, s.
    params : LinkParams

    Returns
    -------
    DataFrame
        The detections (sorted by frame, then y, x; index 0..n-1; tracks shorter
        than ``min_track_length`` dropped) with ``track_id`` (int64): tracks
        numbered 0, 1, 2, ... in order of first appearance.

    Raises
    ------
    UptrackError
        If a subnetwork stays too large down to ``adaptive_stop_um``.
    """
    missing = {"frame", "y", "x"} - set(detections.columns)
    if missing:
        raise ValueError(f"link_tracks: detections lack the columns {sorted(missing)}")
    table = detections.sort_values(["frame", "y", "x"], kind="stable", ignore_index=True)
    table["frame"] = table["frame"].astype(np.int64)
    if len(table) == 0:
        return table.assign(track_id=pd.Series(dtype=np.int64))
    search = search_range_px(table, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s,
                             params=params)
    stop = min(params.adaptive_stop_um / pixel_size_um, 0.5 * search)
    link = functools.partial(_link, search=search, memory=params.memory_frames, stop=stop,
                             step=params.adaptive_step, stop_um=params.adaptive_stop_um)
    particle = link(table[["frame", "y", "x"]])
    dense = dense_search_px(table, particle, search) if params.search_range_um is None else search
    if dense < search:  # crowded: the physical range reaches past the neighbours; the steps say how far to look
        search, stop = dense, min(stop, 0.5 * dense)
        link = functools.partial(_link, search=search, memory=params.memory_frames, stop=stop,
                                 step=params.adaptive_step, stop_um=params.adaptive_stop_um)
        particle = link(table[["frame", "y", "x"]])
    if params.mass_sigmas is not None and "mass" in table:
        coordinates = _with_brightness(table, particle, search / SEARCH_SIGMAS / params.mass_sigmas)
        if coordinates is not None:
            particle = link(coordinates)
    table["track_id"] = _first_appearance_ids(particle)
    if params.min_track_length > 1:
        length = table.groupby("track_id")["track_id"].transform("size")
        table = table[length >= params.min_track_length].reset_index(drop=True)
        table["track_id"] = _first_appearance_ids(table["track_id"].to_numpy())
    return table


def close_gaps(tracks: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float,
               params: LinkParams) -> pd.DataFrame:
    """Join tracks that end to tracks that start a few frames later (gap closing).

    A pair (end of track ``a`` at frame ``f_a``, start of track ``b`` at
    ``f_b``), ``1 ≤ g = f_b - f_a ≤ close_gaps_frames``, with a jump ``ℓ``
    (px), costs ``ℓ² / (2 s(g)²) + log(s(g)² / s(1)²) - SEARCH_SIGMAS² / 2``:
    the negative log-likelihood ratio of one track against two, so a pair is
    a candidate only inside ``SEARCH_SIGMAS × s(g)`` and longer gaps cost more.
    ``s(g)² = v g + 2 ε²`` per axis, with ``v`` the two tracks' own step
    variance (their steps pooled with two pseudo-steps at the median of all
    tracks', capped at ``2 D Δt`` from ``max_diffusion_um2_s``; ε: the median
    ``ep``): slow particles (bound, vesicular) get a tight radius, free ones a
    wide one. With ``mass_sigmas`` set, the change in log mass in units of its
    measured spread adds its square over two, as in :func:`link_tracks`. One
    assignment (``scipy.optimize.linear_sum_assignment``) per connected group
    of candidates picks the pairs of least total cost; chains (a→b→c) form
    when ``b`` is both a start and an end.

    Parameters
    ----------
    tracks : DataFrame
        Output of :func:`link_tracks`.
    pixel_size_um, frame_interval_s : float
    params : LinkParams

    Returns
    -------
    DataFrame
        ``tracks`` with joined tracks sharing one ``track_id`` (renumbered 0, 1,
        2, ... in order of first appearance); rows and their order unchanged.
    """
    if params.close_gaps_frames == 0 or tracks.empty:
        return tracks
    ends, starts = _track_ends(tracks)
    pairs = _gap_candidates(ends, starts, tracks, pixel_size_um=pixel_size_um,
                            frame_interval_s=frame_interval_s, params=params)
    if pairs.empty:
        return tracks
    joined = _assign_pairs(pairs)
    parent = dict(zip(joined["end_track"], joined["start_track"]))
    # every chain a -> b -> c takes the id of its first track
    root = {track: track for track in tracks["track_id"].unique()}
    for a in sorted(parent, key=lambda t: ends.loc[t, "frame"]):
        root[parent[a]] = root[a]
    out = tracks.copy()
    out["track_id"] = _first_appearance_ids(out["track_id"].map(root).to_numpy())
    return out


def _track_ends(tracks: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Last and first detection of every track (frame, y, x, log mass), indexed by track id, with
    the track's own squared steps: ``ss`` (sum over its steps of ℓ² / 2 / gap, px²) and ``n`` (steps)."""
    t = tracks.sort_values(["track_id", "frame"], kind="stable")
    same = np.append(t["track_id"].to_numpy()[1:] == t["track_id"].to_numpy()[:-1], False)
    nxt = np.roll(np.arange(len(t)), -1)
    y, x, f = t["y"].to_numpy(), t["x"].to_numpy(), t["frame"].to_numpy()
    half_step2 = np.where(same, ((y[nxt] - y) ** 2 + (x[nxt] - x) ** 2) / 2 / np.maximum(f[nxt] - f, 1), 0.0)
    # velocity of the step into each detection, px per frame (0 at a track's first detection)
    into = np.append(False, same[:-1])
    prev = np.roll(np.arange(len(t)), 1)
    gap = np.maximum(f - f[prev], 1)
    t = t.assign(ss=half_step2, n=same.astype(float), vy=np.where(into, (y - y[prev]) / gap, 0.0),
                 vx=np.where(into, (x - x[prev]) / gap, 0.0))
    if "mass" in t:
        t = t.assign(log_mass=_log_mass(t))
    columns = ["frame", "y", "x"] + (["log_mass"] if "log_mass" in t else [])
    grouped = t.groupby("track_id", sort=True)
    motion = grouped[["ss", "n"]].sum()
    return grouped[columns + ["vy", "vx"]].last().join(motion), grouped[columns].first().join(motion)


def _gap_candidates(ends: pd.DataFrame, starts: pd.DataFrame, tracks: pd.DataFrame, *, pixel_size_um: float,
                    frame_interval_s: float, params: LinkParams) -> pd.DataFrame:
    """Candidate (end track, start track, cost) pairs; cost < 0: more likely one track than two.

    Each pair's per-axis step variance comes from the two tracks' own steps (their sum of ℓ²/2
    per frame of gap over their number of steps), with two pseudo-steps at the median of all
    tracks' variances and capped at the linking one (``max_diffusion_um2_s``): slow (bound,
    vesicular) particles get a tight radius, free ones a wide one.
    """
    from scipy.spatial import cKDTree

    step_px2, error_px2 = _motion_px2(tracks, pixel_size_um, frame_interval_s, params)
    max_gap = params.close_gaps_frames
    radius = SEARCH_SIGMAS * np.sqrt(step_px2 * max_gap + 2.0 * error_px2)
    mass_spread = (_log_mass_spread(tracks, tracks["track_id"].to_numpy())
                   if params.mass_sigmas is not None and "log_mass" in ends else None)
    end_index, start_index = [], []
    end_frame = ends["frame"].to_numpy()
    for frame, group in starts.groupby("frame"):
        near = np.flatnonzero((end_frame < frame) & (end_frame >= frame - max_gap))
        if len(near) == 0:
            continue
        tree = cKDTree(ends[["y", "x"]].to_numpy()[near])
        for row, hits in zip(starts.index.get_indexer(group.index),
                             tree.query_ball_point(group[["y", "x"]].to_numpy(), radius)):
            end_index += [near[h] for h in hits]
            start_index += [row] * len(hits)
    e, b = ends.iloc[end_index], starts.iloc[start_index]
    own = ends["ss"] / ends["n"].where(ends["n"] > 0)
    typical = float(np.nanmedian(own)) if own.notna().any() else step_px2
    # per axis and frame, px², 2ε² included: the faster of the two (motion changes at events)
    variance = np.maximum((e["ss"].to_numpy() + 2 * typical) / (e["n"].to_numpy() + 2),
                          (b["ss"].to_numpy() + 2 * typical) / (b["n"].to_numpy() + 2))
    one_frame = np.clip(variance, 2.0 * error_px2 + 1e-9, step_px2 + 2.0 * error_px2)  # no better than ε allows
    gap = b["frame"].to_numpy() - e["frame"].to_numpy()
    s2 = (one_frame - 2.0 * error_px2).clip(min=0) * gap + 2.0 * error_px2
    dy, dx = b["y"].to_numpy() - e["y"].to_numpy(), b["x"].to_numpy() - e["x"].to_numpy()
    # the jump as Brownian motion from the end, or as the end's last step carried on (a directed
    # run, e.g. a vesicle heading for the membrane to fuse), whichever is more likely
    d2 = np.minimum(dy**2 + dx**2, (dy - gap * e["vy"].to_numpy()) ** 2 + (dx - gap * e["vx"].to_numpy()) ** 2)
    # negative log-likelihood ratio of one track against two: a jump inside the gate beats none,
    # longer gaps cost the log of their wider spread
    cost = d2 / (2 * s2) + np.log(s2 / one_frame) - SEARCH_SIGMAS**2 / 2
    if mass_spread:
        change = (b["log_mass"].to_numpy() - e["log_mass"].to_numpy()) / (params.mass_sigmas * mass_spread)
        cost += 0.5 * change**2
    keep = cost < 0
    return pd.DataFrame({"end_track": e.index[keep], "start_track": b.index[keep], "cost": cost[keep]})


def _log_mass(table: pd.DataFrame) -> np.ndarray:
    """Natural log of the ``mass`` column (floored at 1e-12 so that zero masses stay finite)."""
    return np.log(np.clip(table["mass"].to_numpy(float), 1e-12, None))


def _log_mass_spread(table: pd.DataFrame, particle: np.ndarray) -> float | None:
    """Spread of the change in log mass between consecutive detections of the same particle label,
    weighted for its tails, or None: brightness is not used.

    Measured on the clean links only: consecutive-frame links whose next detection has no other
    detection within 3 × the step (≥ 0.5 px), so that the first pass's own swaps do not pass for
    brightness changes. Real particles change brightness far more, and with far heavier tails, than
    simulated ones (focus, blinking, overlaps: on the MosaicSuite virus movie the 99th percentile of
    the clean changes is 2.9 Gaussian-equivalent MADs, on simulated movies 1.2), and a Gaussian cost
    sized on the core breaks real tracks at every large change. So the tail spread is the largest of
    1.4826 × MAD and the 90th and 99th percentiles of |change - median| over their Gaussian quantiles
    (1.645, 2.576), and the returned spread is that × (tail / core spread): unchanged for Gaussian
    changes, ~3 × weaker brightness on the virus movie. None if fewer than MIN_LINKS_FOR_MASS links,
    no spread, or brightness unstable along tracks: the tail spread reaches MAX_MASS_SPREAD_RATIO ×
    the spread of log mass over all detections (then brightness cannot tell particles apart).
    """
    from scipy.spatial import cKDTree

    log_mass = _log_mass(table)
    frames = table["frame"].to_numpy()
    order = np.lexsort((frames, particle))
    linked = (particle[order][1:] == particle[order][:-1]) & (np.diff(frames[order]) == 1)
    before, after = order[:-1][linked], order[1:][linked]
    clean = np.zeros(len(before), bool)
    if {"y", "x"} <= set(table.columns) and len(before):
        yx = table[["y", "x"]].to_numpy(float)
        step = np.hypot(*(yx[after] - yx[before]).T)
        for f in np.unique(frames[after]):
            rows = np.flatnonzero(frames[after] == f)
            points = yx[frames == f]
            if len(points) < 2:
                clean[rows] = True
                continue
            second = cKDTree(points).query(yx[before[rows]], 2)[0][:, 1]
            clean[rows] = second > 3 * np.maximum(step[rows], 0.5)
    change = log_mass[after] - log_mass[before]
    if clean.sum() >= MIN_LINKS_FOR_MASS:
        change = change[clean]
    change = change[np.isfinite(change)]
    if len(change) < MIN_LINKS_FOR_MASS:
        return None
    deviation = np.abs(change - np.median(change))
    core = 1.4826 * float(np.median(deviation))
    tail = max(core, float(np.percentile(deviation, 90)) / 1.645, float(np.percentile(deviation, 99)) / 2.576)
    population = 1.4826 * float(np.median(np.abs(log_mass - np.median(log_mass))))
    if tail <= 0 or tail >= MAX_MASS_SPREAD_RATIO * population:
        return None
    return tail * max(1.0, tail / core) if core > 0 else tail


def _assign_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs a minimum-cost assignment keeps; ``cost`` is relative to leaving both unpaired, so
    only pairs with cost < 0 (from :func:`_gap_candidates`) can gain."""
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    end_codes, end_ids = pd.factorize(pairs["end_track"])
    start_codes, start_ids = pd.factorize(pairs["start_track"])
    n_end, n_start = len(end_ids), len(start_ids)
    graph = coo_matrix((np.ones(len(pairs)), (end_codes, n_end + start_codes)),
                       shape=(n_end + n_start,) * 2)
    _, component = connected_components(graph, directed=False)
    keep = []
    by_group = pd.Series(np.arange(len(pairs))).groupby(component[end_codes])
    for rows in by_group.indices.values():
        e, e_index = np.unique(end_codes[rows], return_inverse=True)
        s, s_index = np.unique(start_codes[rows], return_inverse=True)
        cost = np.zeros((len(e), len(s)))  # 0: not paired (the reference)
        cost[e_index, s_index] = pairs["cost"].to_numpy()[rows]
        row_of = np.full(cost.shape, -1)
        row_of[e_index, s_index] = rows
        chosen_e, chosen_s = linear_sum_assignment(cost)
        real = cost[chosen_e, chosen_s] < 0
        keep += list(row_of[chosen_e[real], chosen_s[real]])
    return pairs.iloc[sorted(keep)]


def fill_gaps(tracks: pd.DataFrame, frames, *, pixel_size_um: float, frame_interval_s: float,
              detect_params: DetectParams, params: LinkParams, first_frame: int = 0) -> pd.DataFrame:
    """Recover the frames each track skipped by looking for its particle where the track puts it.

    For every frame ``f`` strictly between two consecutive detections of a
    track (frames ``a`` and ``b``), the particle is expected at the linear
    interpolation of the two positions, within ``SEARCH_SIGMAS`` standard
    deviations of a Brownian bridge, ``sqrt(2 D Δt (f-a)(b-f)/(b-a) + 2 ε²)``
    per axis (D: ``max_diffusion_um2_s``, ε: the median ``ep``), capped at the
    linking search range. :func:`pipeline.stages.detect.detect_near` fits it together
    with the frame's detections and keeps it if its significance reaches
    ``fill_gaps_min_snr``.

    Parameters
    ----------
    tracks : DataFrame
        Output of :func:`link_tracks` (detection columns and ``track_id``).
    frames : (T, Y, X) array-like
        The particle channel; ``frames[f - first_frame]`` is frame ``f``
        (numpy or dask; one frame is read at a time).
    pixel_size_um, frame_interval_s : float
    detect_params : DetectParams
        The detection parameters used for ``tracks``.
    params : LinkParams
    first_frame : int
        Frame index of ``frames[0]``.

    Returns
    -------
    DataFrame
        ``tracks`` plus the recovered detections (same columns), sorted by
        frame, then y, x, index 0..n-1. Unchanged if ``fill_gaps_min_snr`` is unset.
    """
    if params.fill_gaps_min_snr is None or len(tracks) == 0:
        return tracks
    gaps = _gap_positions(tracks, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s, params=params)
    found = []
    for frame, expected in gaps.groupby("frame", sort=True):
        known = tracks[tracks["frame"] == frame]
        rows = detect_near(np.asarray(frames[frame - first_frame]), frame, expected["y"].to_numpy(),
                           expected["x"].to_numpy(), pixel_size_um=pixel_size_um, params=detect_params,
                           min_snr=params.fill_gaps_min_snr, max_shift_px=expected["radius"].to_numpy(),
                           known=known)
        rows["track_id"] = expected["track_id"].to_numpy()[rows.pop("candidate").to_numpy()]
        found.append(rows)
    if not found:
        return tracks
    filled = pd.concat([tracks, *found], ignore_index=True)
    return filled.sort_values(["frame", "y", "x"], kind="stable", ignore_index=True)


def _gap_positions(tracks: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float,
                   params: LinkParams) -> pd.DataFrame:
    """Expected positions (frame, track_id, y, x, radius px) in the frames each track skipped."""
    search = search_range_px(tracks, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s,
                             params=params)
    step_px2, error_px2 = _motion_px2(tracks, pixel_size_um, frame_interval_s, params)
    t = tracks.sort_values(["track_id", "frame"], kind="stable")
    same = t["track_id"].to_numpy()[1:] == t["track_id"].to_numpy()[:-1]
    frame = t["frame"].to_numpy()
    gap = (frame[1:] - frame[:-1]) * same
    start = np.flatnonzero(gap > 1)
    if len(start) == 0:
        return pd.DataFrame(columns=["frame", "track_id", "y", "x", "radius"])
    length = gap[start]
    pair = np.repeat(start, length - 1)  # one row per skipped frame
    k = np.arange(len(pair)) - np.repeat(np.cumsum(length - 1) - (length - 1), length - 1) + 1
    n = gap[pair]
    w = k / n
    y, x = t["y"].to_numpy(), t["x"].to_numpy()
    bridge = np.sqrt(step_px2 * k * (n - k) / n + 2.0 * error_px2)
    return pd.DataFrame({
        "frame": frame[pair] + k,
        "track_id": t["track_id"].to_numpy()[pair],
        "y": y[pair] + w * (y[pair + 1] - y[pair]),
        "x": x[pair] + w * (x[pair + 1] - x[pair]),
        "radius": np.minimum(SEARCH_SIGMAS * bridge, search),
    })


def _link(coordinates: pd.DataFrame, *, search: float, memory: int, stop: float, step: float,
          stop_um: float) -> np.ndarray:
    """trackpy.link on ``frame`` and the other columns as coordinates; particle labels in row order."""
    pos_columns = [c for c in coordinates.columns if c != "frame"]
    try:
        with _quiet_trackpy():
            linked = trackpy.link(coordinates, search, pos_columns=pos_columns, t_column="frame", memory=memory,
                                  adaptive_stop=stop, adaptive_step=step)
    except SubnetOversizeException as exc:
        raise UptrackError(
            f"link: a cluster of particles could not be linked even at a search range of {stop_um} µm "
            f"({exc}); lower link.adaptive_stop_um or link.search_range_um"
        ) from exc
    return linked["particle"].sort_index().to_numpy()


def _with_brightness(table: pd.DataFrame, particle: np.ndarray, step_px: float) -> pd.DataFrame | None:
    """(frame, y, x, m) with m the log mass scaled so that its typical change along the first-pass
    tracks (``particle``) counts ``step_px`` px; None if too few links or no spread to measure."""
    spread = _log_mass_spread(table, particle)
    if spread is None:
        return None
    return table[["frame", "y", "x"]].assign(m=_log_mass(table) * step_px / spread)


def _first_appearance_ids(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0, 1, 2, ... in order of first occurrence (rows are in frame order)."""
    return pd.factorize(labels, sort=False)[0].astype(np.int64)


_QUIET_LOCK = threading.Lock()
_QUIET = {"depth": 0, "level": logging.NOTSET}


@contextmanager
def _quiet_trackpy():
    """Silence trackpy's per-frame INFO messages while any call in this process links.

    The ``trackpy`` logger is process-wide and Dask workers link in several threads at once, so the
    level is raised by the first caller and restored by the last (a per-call save and restore lets
    two overlapping calls leave it raised for good, or lower it under the other's feet).
    """
    logger = logging.getLogger("trackpy")
    with _QUIET_LOCK:
        if _QUIET["depth"] == 0:
            _QUIET["level"] = logger.level
            logger.setLevel(max(logger.level, logging.WARNING))
        _QUIET["depth"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET["depth"] -= 1
            if _QUIET["depth"] == 0:
                logger.setLevel(_QUIET["level"])
