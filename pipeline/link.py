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
  frame-to-frame spread of log mass along tracks, and the final pass adds the
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

``fill_gaps`` then recovers the frames a track skipped: in each, it looks for
the particle where the track's neighbouring detections put it (a Brownian
bridge: the search radius shrinks towards the known ends) with a lower
significance threshold (``fill_gaps_min_snr``), sound because the position is
known beforehand. It needs the movie, so the runner calls it after linking.
"""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager

import numpy as np
import pandas as pd
import trackpy
from pydantic import BaseModel, ConfigDict, Field
from trackpy.linking.utils import SubnetOversizeException

from pipeline.detect import DetectParams, detect_near
from pipeline.errors import UptrackError

#: Fewest links of the first pass that make a measurement of the brightness spread.
MIN_LINKS_FOR_MASS = 20

#: Search radius in standard deviations of the per-axis displacement; a
#: Brownian step exceeds it with probability exp(-SEARCH_SIGMAS**2 / 2) ≈ 0.2 %.
SEARCH_SIGMAS = 3.5


class LinkParams(BaseModel):
    """Parameters of particle linking (config section ``link:``)."""

    model_config = ConfigDict(extra="forbid")

    max_diffusion_um2_s: float = Field(
        0.05,
        gt=0,
        description="Fastest diffusion coefficient to follow, µm²/s (sedimented particles, membrane-bound "
        "and vesicular ones: ~0.001-0.05). Sets the search range when search_range_um is unset.",
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


def fill_gaps(tracks: pd.DataFrame, frames, *, pixel_size_um: float, frame_interval_s: float,
              detect_params: DetectParams, params: LinkParams, first_frame: int = 0) -> pd.DataFrame:
    """Recover the frames each track skipped by looking for its particle where the track puts it.

    For every frame ``f`` strictly between two consecutive detections of a
    track (frames ``a`` and ``b``), the particle is expected at the linear
    interpolation of the two positions, within ``SEARCH_SIGMAS`` standard
    deviations of a Brownian bridge, ``sqrt(2 D Δt (f-a)(b-f)/(b-a) + 2 ε²)``
    per axis (D: ``max_diffusion_um2_s``, ε: the median ``ep``), capped at the
    linking search range. :func:`pipeline.detect.detect_near` fits it together
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
    log_mass = np.log(np.clip(table["mass"].to_numpy(float), 1e-12, None))
    order = np.lexsort((table["frame"].to_numpy(), particle))
    linked = particle[order][1:] == particle[order][:-1]
    change = np.diff(log_mass[order])[linked]
    change = change[np.isfinite(change)]
    if len(change) < MIN_LINKS_FOR_MASS:
        return None
    spread = 1.4826 * float(np.median(np.abs(change - np.median(change))))  # of a change between two frames
    if spread <= 0:
        return None
    return table[["frame", "y", "x"]].assign(m=log_mass * step_px / spread)


def _first_appearance_ids(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0, 1, 2, ... in order of first occurrence (rows are in frame order)."""
    return pd.factorize(labels, sort=False)[0].astype(np.int64)


@contextmanager
def _quiet_trackpy():
    """Silence trackpy's per-frame INFO messages for the duration of a call."""
    logger = logging.getLogger("trackpy")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
