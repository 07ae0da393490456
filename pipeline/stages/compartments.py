"""Compartment markers: colocalisation of vesicular particles with marker channels, arrival rates.

Colocalisation (per detection, per marker channel)
    At each vesicular detection, the marker's mean in a disk of ``disk_radius_px`` around the
    particle minus the median of an annulus (``annulus_px``: inner, outer radius) is the local
    marker excess; divided by the noise of a disk mean (the frame's robust noise, 1.4826 × MAD,
    over √(disk pixels)) it is the ``<name>_enrichment``. A detection is in the compartment
    (``in_<name>``) when the enrichment is at least ``min_enrichment`` (default 10: a 10-sigma
    excess of the disk mean) and the centroid of the excess in the disk lies within
    ``max_offset_px`` of the particle: vesicles crowd in cells, and a compartment 2-3 px away
    lights the disk of its neighbours too (without the centroid check, arrival rates on the
    test movie came out ~2x too high: neighbours "arrived" early).

Defaults and what they were chosen on
    ``min_enrichment`` 10, ``max_offset_px`` 0.5, ``min_frames`` 3 were picked on one simulated
    movie (tests/test_compartments.py, 4 marker seeds, true k = 1/min, realised 0.91-1.15):
    estimates 0.88-1.17 /min. Looser settings (5, 0.8, 2) gave 1.15-1.7 /min (early false
    arrivals); stricter offsets (0.3 px) 0.65-0.69 /min (missed arrivals). Check them on real
    marker channels (a different compartment size or brightness moves the balance). Rows that are not vesicular get NaN and False.

Arrival (per vesicular spell entered by internalization, :func:`pipeline.stages.survival.spells`)
    The first detection of the first run of ``min_frames`` consecutive in-compartment detections
    is the arrival (its frame: the event-frame convention, first frame in the new condition).
    Time from internalization to arrival: arrival frame − first vesicular frame; spells that end
    (release, track end) before an arrival are right-censored at their last detection. The rate
    ``k_arrival`` is arrivals / time at risk with the exact Poisson interval, via
    :func:`pipeline.stages.survival.survival_summary` (which also gives the KM half-time).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field

from pipeline.params import Params
from pipeline.stages.survival import spells, spells_for, survival_summary

__all__ = ["CompartmentParams", "colocalize", "arrivals", "compartment_rates", "colocalization_over_time"]


class CompartmentParams(Params):
    """Parameters of the compartment analysis (module docstring)."""

    disk_radius_px: float = Field(2.0, gt=0, description="Radius of the disk the marker is measured in, px.")
    annulus_px: tuple[float, float] = Field((4.0, 7.0), description="Inner and outer radius of the local "
                                            "background annulus, px.")
    min_enrichment: float = Field(10.0, gt=0, description="Least marker excess (in noise units of the disk mean) "
                                  "of a detection in the compartment.")
    max_offset_px: float = Field(0.5, gt=0, description="Largest distance between the particle and the centroid "
                                 "of the marker excess in the disk, px (a neighbouring compartment pulls it away).")
    min_frames: int = Field(3, ge=1, description="Consecutive in-compartment detections that make an arrival.")


def _offsets(r_in: float, r_out: float) -> tuple[np.ndarray, np.ndarray]:
    half = int(np.ceil(r_out))
    dy, dx = np.mgrid[-half:half + 1, -half:half + 1]
    r = np.hypot(dy, dx)
    keep = (r >= r_in) & (r <= r_out)
    return dy[keep], dx[keep]


def colocalize(particles: pd.DataFrame, markers: dict[str, np.ndarray], *,
               params: CompartmentParams | None = None) -> pd.DataFrame:
    """Marker enrichment and in-compartment flag of every vesicular detection, for each marker.

    Parameters
    ----------
    particles : DataFrame
        Classified detections: ``frame``, ``y``, ``x`` (px), ``state``.
    markers : dict
        Marker name -> its channel, (T, Y, X) array (or a lazy array indexable by frame).
    params : CompartmentParams

    Returns
    -------
    DataFrame
        ``particles`` with ``<name>_enrichment`` (float) and ``in_<name>`` (bool) per marker.
    """
    params = params or CompartmentParams()
    out = particles.copy()
    disk = _offsets(0, params.disk_radius_px)
    ring = _offsets(*params.annulus_px)
    vesicular = np.flatnonzero(out["state"].to_numpy(str) == "vesicular")
    frames = out["frame"].to_numpy(np.int64)[vesicular]
    iy = np.rint(out["y"].to_numpy(float)[vesicular]).astype(int)
    ix = np.rint(out["x"].to_numpy(float)[vesicular]).astype(int)
    for name, channel in markers.items():
        enrichment, offset = np.full(len(out), np.nan), np.full(len(out), np.nan)
        for t in np.unique(frames):
            image = np.asarray(channel[t], float)
            h, w = image.shape
            sel = np.flatnonzero(frames == t)
            med = np.median(image)
            noise = 1.4826 * np.median(np.abs(image - med))
            py, px = iy[sel][:, None], ix[sel][:, None]
            patch = image[np.clip(py + disk[0], 0, h - 1), np.clip(px + disk[1], 0, w - 1)]
            b = np.median(image[np.clip(py + ring[0], 0, h - 1), np.clip(px + ring[1], 0, w - 1)], axis=1)
            enrichment[vesicular[sel]] = (patch.mean(axis=1) - b) / max(noise / np.sqrt(len(disk[0])), 1e-9)
            weight = np.clip(patch - b[:, None], 0, None)
            total = np.maximum(weight.sum(axis=1), 1e-9)
            cy = (weight * disk[0]).sum(axis=1) / total + py[:, 0] - out["y"].to_numpy(float)[vesicular[sel]]
            cx = (weight * disk[1]).sum(axis=1) / total + px[:, 0] - out["x"].to_numpy(float)[vesicular[sel]]
            offset[vesicular[sel]] = np.hypot(cy, cx)
        out[f"{name}_enrichment"] = enrichment
        out[f"in_{name}"] = (enrichment >= params.min_enrichment) & (offset <= params.max_offset_px)
    return out


def arrivals(particles: pd.DataFrame, name: str, *, frame_interval_s: float,
             params: CompartmentParams | None = None) -> pd.DataFrame:
    """Time from internalization to arrival in compartment ``name``, one row per vesicular spell.

    Parameters
    ----------
    particles : DataFrame
        Output of :func:`colocalize` (``in_<name>`` column).

    Returns
    -------
    DataFrame
        The spells table rows (:data:`pipeline.stages.survival.SPELL_COLUMNS`) of vesicular
        spells, ``duration_min`` now to the arrival (``exit`` = ``arrival``) or to the spell's
        last detection (censored, ``exit`` = "").
    """
    params = params or CompartmentParams()
    table = spells(particles, frame_interval_s=frame_interval_s)
    _, _, rows = spells_for(table, "release")
    rows = rows.copy()
    p = particles.sort_values(["track_id", "frame"])
    by_track = {tid: g for tid, g in p.groupby("track_id", sort=False)}
    durations, exits = [], []
    k = params.min_frames
    for spell in rows.itertuples(index=False):
        g = by_track[spell.track_id]
        g = g[(g["frame"] >= spell.first_frame) & (g["frame"] <= spell.last_frame)]
        flag = g[f"in_{name}"].to_numpy(bool)
        run = np.convolve(flag.astype(int), np.ones(k, int), mode="valid") == k if len(flag) >= k else np.zeros(0, bool)
        hit = np.flatnonzero(run)
        if len(hit):
            durations.append((g["frame"].iloc[hit[0]] - spell.first_frame) * frame_interval_s / 60.0)
            exits.append("arrival")
        else:
            durations.append((spell.last_frame - spell.first_frame) * frame_interval_s / 60.0)
            exits.append("")
    rows["duration_min"] = np.asarray(durations, float)
    rows["exit"] = exits
    return rows.reset_index(drop=True)


def compartment_rates(particles: pd.DataFrame, names: list[str], *, frame_interval_s: float,
                      params: CompartmentParams | None = None, ci_level: float = 0.95) -> pd.DataFrame:
    """Arrival rate in each compartment with its CI (module docstring), one row per marker.

    Returns
    -------
    DataFrame
        ``compartment`` and the :func:`pipeline.stages.survival.survival_summary` columns
        (``n_spells``, ``n_events`` = arrivals, ``k_per_min`` + CI = ``k_arrival``,
        ``half_life_min`` + CI, ``km_median_min`` + CI, ...).
    """
    rows = []
    for name in names:
        a = arrivals(particles, name, frame_interval_s=frame_interval_s, params=params)
        s = survival_summary(a["duration_min"].to_numpy(float), (a["exit"] == "arrival").to_numpy(),
                             ci_level=ci_level, gof=False)
        rows.append({"compartment": name, **s})
    return pd.DataFrame(rows)


def colocalization_over_time(particles: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Per frame and marker: vesicular detections, those in the compartment, and their fraction."""
    ves = particles[particles["state"] == "vesicular"]
    rows = []
    for name in names:
        g = ves.groupby("frame")[f"in_{name}"].agg(["size", "sum"]).reset_index()
        rows.append(pd.DataFrame({"frame": g["frame"], "compartment": name, "n_vesicular": g["size"],
                                  "n_in_compartment": g["sum"].astype(np.int64),
                                  "fraction": g["sum"] / g["size"]}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["frame", "compartment", "n_vesicular", "n_in_compartment", "fraction"])
