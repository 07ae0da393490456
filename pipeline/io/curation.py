"""Reviewers' corrections on disk: the versioned curation record and the ``curated/`` tables.

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
        tracks.geff             the GEFF graph of the corrected particles (as tracks.geff)

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

Recomputation (:func:`pipeline.run.curate.apply_curation`): corrections applied
(:func:`pipeline.stages.corrections.apply_corrections`), events from the corrected states,
then the track table, cells, movie and kinetics (:func:`pipeline.stages.kinetics.kinetics_tables`,
with the run's ``kinetics`` config and the pipeline's cell geometry). A detection corrected out of
``released`` keeps the cell it was released from as its ``cell_id``.
"""

from __future__ import annotations

import getpass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import InputError
from pipeline.io import store
from pipeline.io.results import CURATED, load_results, read_table
from pipeline.vocabulary import CORRECTION_ACTIONS as ACTIONS
from pipeline.vocabulary import STATES

__all__ = ["ACTIONS", "CORRECTION_COLUMNS", "curation_versions", "empty_corrections", "read_corrections",
           "save_corrections", "validate_corrections", "curation_entry", "write_curated"]

#: Group of the curation record.
CURATION = "curation"
#: Columns and dtypes of a corrections table.
CORRECTION_COLUMNS = {"track_id": "int64", "first_frame": "int64", "last_frame": "int64",
                      "action": "str", "state": "str"}


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




def curation_versions(path: str | Path) -> list[dict]:
    """The versions of a store's curation record, oldest first (empty if none)."""
    store.read_attrs(path)
    return list(store.read_group_attrs(path, CURATION).get("versions", []))


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
    store.update_group_attrs(path, CURATION, versions=[*versions, entry])
    return version



def curation_entry(path: str | Path, version: int | None = None) -> dict:
    """The record entry of one curation version (default: the latest): version, table, author, ..."""
    return _version_entry(path, curation_versions(path), version)


def write_curated(path: str | Path, tables: dict, version: int) -> None:
    """Write the tables and kinetics recomputed with curation ``version`` under ``curated/``.

    ``curated/`` loses its ``curation_version`` attribute first and gets it back last, so an
    interrupted write is never read as curated results.

    Parameters
    ----------
    path : str or Path
        A complete store.
    tables : dict
        ``particles``, ``events``, ``tracks``, ``cells``, ``movie`` (DataFrames) and ``kinetics``
        (xarray.Dataset), as :func:`pipeline.run.curate.recompute` returns them.
    version : int
        The curation version they were made with.
    """
    tables = dict(tables)
    store.update_group_attrs(path, CURATED, remove=("curation_version",))
    store.write_kinetics(path, tables.pop("kinetics"), name=f"{CURATED}/kinetics")
    for name, table in tables.items():
        store.write_table(path, name, table, group=CURATED)
    attrs = store.read_attrs(path)
    store.write_geff(path, tables["particles"], attrs["pixel_size_um"], attrs["frame_interval_s"],
                     z_step_um=attrs.get("z_step_um"), name=f"{CURATED}/{store.GEFF}")
    store.update_group_attrs(path, CURATED, curation_version=version, created=store.utc_now())


def _version_entry(path: str | Path, versions: list[dict], version: int | None) -> dict:
    """The record entry of ``version`` (the latest if None)."""
    if version is None and versions:
        return versions[-1]
    for entry in versions:
        if entry["version"] == version:
            return entry
    available = [entry["version"] for entry in versions]
    raise InputError(f"{path}: no curation version {version}; versions: {available or 'none'}")
