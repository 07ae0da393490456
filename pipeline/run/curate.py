"""Curation, end to end: read a store's corrections, apply them, recompute the kinetics, write ``curated/``.

The record and the curated tables on disk belong to :mod:`pipeline.io.curation`; applying
corrections to tables is :func:`pipeline.stages.corrections.apply_corrections`; the tables that
follow from states are :func:`pipeline.stages.kinetics.kinetics_tables`, as in a run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.io.curation import curation_entry, curation_versions, read_corrections, write_curated
from pipeline.io.results import Results, load_results
from pipeline.stages.corrections import apply_corrections
from pipeline.stages.kinetics import KineticsParams, kinetics_tables

#: Cell geometry columns of the cells table, reused when kinetics are recomputed.
_GEOMETRY = ["cell_id", "first_frame", "last_frame", "mean_area_um2"]


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
    tables = kinetics_tables(particles, events, frame_interval_s=dt_s, n_frames=results.kinetics.sizes["frame"],
                             params=params, cells=results.cells[_GEOMETRY])
    return {"particles": particles, "events": events, **tables}


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
    if not curation_versions(path) and version is None:
        return None
    entry = curation_entry(path, version)
    tables = recompute(load_results(path), read_corrections(path, entry["version"]))
    write_curated(path, tables, entry["version"])
    return entry["version"]
