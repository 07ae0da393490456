"""Reviewers' corrections: a versioned curation record in the store, and kinetics recomputed with it.

The pipeline's own output (``tables/``, ``kinetics``) is never changed. Corrections
made in the napari plugin (or by hand) are saved as a new version of the curation
record, and the tables that depend on states are recomputed from the pipeline's
particles with that version applied::

    <name>.zarr/
      curation/                 attrs ``versions``: one entry per save, oldest first:
                                version, table, author, created (UTC, ISO 8601),
                                note, n_corrections
        corrections_v<N>        the full set of corrections in force at version N
      curated/                  attrs ``curation_version`` (N applied; absent while
                                being written), ``created``
        particles, events, tracks, cells, movie    tables recomputed with version N
        kinetics                per-cell time series recomputed with version N

``pipeline.io.results.load_results(path, curated=True)`` reads the curated tables.

Corrections table (one row per correction, applied in row order):

=============  ======  ==========================================================
column         dtype   meaning
=============  ======  ==========================================================
``track_id``   int64   the particle track
``first_frame`` int64  first frame the correction applies to
``last_frame`` int64   last frame it applies to (inclusive)
``action``     str     ``set_state``: the track's detections in the frame range
                       take ``state``; ``false_track``: they are removed (not a
                       particle)
``state``      str     one of :data:`pipeline.vocabulary.STATES` for
                       ``set_state``; empty for ``false_track``
=============  ======  ==========================================================

Recomputation: events from the corrected states
(:func:`pipeline.stages.classify.events_from_states`), the track table, and the cells,
movie and kinetics (:mod:`pipeline.stages.kinetics`, with the run's ``kinetics`` config
and the pipeline's cell geometry). A detection corrected out of ``released``
keeps the cell it was released from as its ``cell_id``.
"""

from __future__ import annotations

import getpass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from pipeline.errors import InputError
from pipeline.io import store
from pipeline.io.results import CURATED, Results, load_results, read_table
from pipeline.stages.classify import events_from_states, summarize_tracks
from pipeline.stages.kinetics import KineticsParams, cell_kinetics, cell_rates
from pipeline.vocabulary import STATES

__all__ = ["ACTIONS", "CORRECTION_COLUMNS", "apply_corrections", "apply_curation", "curation_versions",
           "empty_corrections", "read_corrections", "recompute", "save_corrections", "validate_corrections"]

#: Group of the curation record.
CURATION = "curation"
#: What a correction does.
ACTIONS = ("set_state", "false_track")
#: Columns and dtypes of a corrections table.
CORRECTION_COLUMNS = {"track_id": "int64", "first_frame": "int64", "last_frame": "int64",
                      "action": "str", "state": "str"}
_GEOMETRY = ["cell_id", "first_frame", "last_frame", "mean_area_um2"]


def empty_corrections() -> pd.DataFrame:
    """A corrections table with no rows."""
    return pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in CORRECTION_COLUMNS.items()})


def validate_corrections(corrections: pd.DataFrame, track_ids: np.ndarray) -> pd.DataFrame:
    """Check a corrections table and return it with the documented dtypes and a RangeIndex.

    Parameters
    ----------
    corrections : DataFrame
        Columns of :data:`CORRECTION_COLUMNS`.
    track_ids : array of int
        The tracks of the pipeline's particles table.

    Raises
    ------
    InputError
        Missing columns, unknown tracks, actions or states, or ``first_frame`` after
        ``last_frame``; the message lists the offending rows.
    """
    missing = set(CORRECTION_COLUMNS) - set(corrections.columns)
    if missing:
        raise InputError(f"corrections lack columns {sorted(missing)}; expected {list(CORRECTION_COLUMNS)}")
    table = corrections[list(CORRECTION_COLUMNS)].fillna({"state": ""}).astype(CORRECTION_COLUMNS)
    table = table.reset_index(drop=True)
    set_state = table["action"] == "set_state"
    problems = {
        "unknown track_id": ~table["track_id"].isin(track_ids),
        f"action not one of {ACTIONS}": ~table["action"].isin(ACTIONS),
        f"set_state needs a state of {STATES}": set_state & ~table["state"].isin(STATES),
        "false_track takes no state": ~set_state & (table["state"] != ""),
        "first_frame after last_frame": table["first_frame"] > table["last_frame"],
    }
    errors = [f"rows {np.flatnonzero(bad).tolist()}: {what}" for what, bad in problems.items() if bad.any()]
    if errors:
        raise InputError("invalid corrections: " + "; ".join(errors))
    return table


def apply_corrections(
    particles: pd.DataFrame, corrections: pd.DataFrame, *, frame_interval_s: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The particles with corrected states (false detections removed) and their events.

    Parameters
    ----------
    particles : DataFrame
        The pipeline's particles table (``track_id``, ``frame``, ``cell_id``, ``state``).
    corrections : DataFrame
        A valid corrections table (:func:`validate_corrections`), applied in row order.
    frame_interval_s : float
        Time between frames, s.

    Returns
    -------
    particles, events : DataFrame
        As :func:`pipeline.stages.classify.events_from_states` returns them.
    """
    track = particles["track_id"].to_numpy(np.int64)
    frame = particles["frame"].to_numpy(np.int64)
    order = np.lexsort((frame, track))
    sorted_track = track[order]
    state = particles["state"].to_numpy(dtype=object).copy()
    keep = np.ones(len(particles), bool)
    for row in corrections.itertuples(index=False):
        lo, hi = np.searchsorted(sorted_track, [row.track_id, row.track_id + 1])
        rows = order[lo:hi]
        rows = rows[(frame[rows] >= row.first_frame) & (frame[rows] <= row.last_frame)]
        if row.action == "false_track":
            keep[rows] = False
        else:
            state[rows] = row.state
    kept = particles[keep].reset_index(drop=True)
    codes = pd.Categorical(state[keep], categories=STATES).codes.astype(np.int64)
    return events_from_states(kept, codes, frame_interval_s=frame_interval_s)


def recompute(results: Results, corrections: pd.DataFrame) -> dict:
    """Tables and kinetics of a run with corrections applied.

    Parameters
    ----------
    results : Results
        The pipeline's own output (``load_results(path)``, not curated).
    corrections : DataFrame
        A valid corrections table.

    Returns
    -------
    dict
        ``particles``, ``events``, ``tracks``, ``cells``, ``movie`` (DataFrames) and
        ``kinetics`` (xarray.Dataset), in the layouts of pipeline/README.md.
    """
    dt_s = results.frame_interval_s
    particles, events = apply_corrections(results.particles, corrections, frame_interval_s=dt_s)
    params = KineticsParams(**results.attrs.get("config", {}).get("kinetics", {}))
    cells, movie = cell_rates(particles, events, frame_interval_s=dt_s, params=params,
                              cells=results.cells[_GEOMETRY])
    kinetics = cell_kinetics(particles, events, frame_interval_s=dt_s, n_frames=results.kinetics.sizes["frame"],
                             cell_ids=cells["cell_id"].to_numpy())
    return {"particles": particles, "events": events, "tracks": summarize_tracks(particles),
            "cells": cells, "movie": movie, "kinetics": kinetics}


def curation_versions(path: str | Path) -> list[dict]:
    """The versions of a store's curation record, oldest first (empty if none)."""
    store.read_attrs(path)
    group = Path(path) / CURATION
    if not (group / "zarr.json").exists():
        return []
    return list(zarr.open_group(group, mode="r", zarr_format=3).attrs.get("versions", []))


def read_corrections(path: str | Path, version: int | None = None) -> pd.DataFrame:
    """The corrections of one version of the curation record (default: the latest).

    Returns an empty table when the store has no curation record.

    Raises
    ------
    InputError
        If ``version`` is not in the record.
    """
    versions = curation_versions(path)
    if not versions:
        if version is not None:
            raise InputError(f"{path}: no curation record, so no version {version}")
        return empty_corrections()
    return read_table(path, _version_entry(path, versions, version)["table"], group=CURATION)


def save_corrections(path: str | Path, corrections: pd.DataFrame, *, author: str | None = None,
                     note: str = "") -> int:
    """Save the full set of corrections as the next version of the store's curation record.

    Parameters
    ----------
    path : str or Path
        A complete store.
    corrections : DataFrame
        Every correction in force (not only the new ones); see the module docstring.
    author : str, optional
        Who made them; default: the login name.
    note : str
        Free text saved with the version.

    Returns
    -------
    int
        The new version number (1 for the first save).
    """
    results = load_results(path)
    table = validate_corrections(corrections, results.particles["track_id"].unique())
    versions = curation_versions(path)
    version = versions[-1]["version"] + 1 if versions else 1
    name = f"corrections_v{version}"
    store.write_table(path, name, table, group=CURATION)
    entry = {"version": version, "table": name, "author": author or getpass.getuser(), "created": store.utc_now(),
             "note": note, "n_corrections": len(table)}
    zarr.open_group(Path(path) / CURATION, mode="r+", zarr_format=3).attrs["versions"] = [*versions, entry]
    return version


def apply_curation(path: str | Path, version: int | None = None) -> int | None:
    """Recompute the curated tables and kinetics of a store with one curation version.

    Parameters
    ----------
    path : str or Path
        A complete store.
    version : int, optional
        Version of the curation record to apply; default: the latest.

    Returns
    -------
    int or None
        The version applied; None (nothing written) when the store has no curation record.
    """
    path = Path(path)
    versions = curation_versions(path)
    if not versions and version is None:
        return None
    entry = _version_entry(path, versions, version)
    tables = recompute(load_results(path), read_corrections(path, entry["version"]))
    curated = zarr.open_group(path, mode="r+", zarr_format=3).require_group(CURATED)
    curated.attrs.pop("curation_version", None)
    store.write_kinetics(path, tables.pop("kinetics"), name=f"{CURATED}/kinetics")
    for name, table in tables.items():
        store.write_table(path, name, table, group=CURATED)
    curated.attrs.update({"curation_version": entry["version"], "created": store.utc_now()})
    return entry["version"]


def _version_entry(path: str | Path, versions: list[dict], version: int | None) -> dict:
    """The record entry of ``version`` (the latest if None)."""
    if version is None and versions:
        return versions[-1]
    for entry in versions:
        if entry["version"] == version:
            return entry
    available = [entry["version"] for entry in versions]
    raise InputError(f"{path}: no curation version {version}; versions: {available or 'none'}")
