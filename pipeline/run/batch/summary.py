"""The batch summary table: one row per movie and per cell, written atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from pipeline.io.results import TABLE_COLUMNS, load_results
from pipeline.run.batch.outcome import MovieOutcome, one_line
from pipeline.run.batch.plan import BatchPlan
from pipeline.run.batch.schema import LEAD_COLUMNS, STATUS_COLUMNS, TAIL_COLUMNS


def summary_table(plan: BatchPlan, outcomes: list[MovieOutcome]) -> pd.DataFrame:
    """One row per movie and one per cell, with the movies' metadata (reads the stores).

    Columns: ``level`` (movie / cell), ``movie``, the metadata columns, ``status``,
    ``error``, ``cell_id`` (cell rows), ``n_cells`` (movie rows), the columns of the
    stores' ``cells`` table (movie rows: the pooled ``movie`` table), ``store``,
    ``input_path``. A failed movie has its movie row only, with its error.
    """

    rate_columns = [c for c in TABLE_COLUMNS["cells"] if c != "cell_id"]
    frames = []
    for job, outcome in zip(plan.jobs, outcomes, strict=True):
        common = {"movie": job.name, **job.metadata}
        tail = {"store": str(job.store), "input_path": str(job.path)}
        row = {"level": "movie", **common, "status": outcome.status, "error": outcome.error}
        cells = None
        if outcome.status == "ok":
            try:
                results = load_results(job.store)
                cells, movie = results.cells, results.movie
            except Exception as exc:  # a store that cannot be read back fails the movie
                row.update(status="failed", error=f"reading results: {one_line(exc)}")
                outcome.status, outcome.error = "failed", row["error"]
            else:
                row.update({c: movie[c].iloc[0] for c in rate_columns if c in movie.columns})
                row["n_cells"] = len(cells)
        frames.append(pd.DataFrame([{**row, **tail}]))
        if cells is not None and len(cells):
            part = cells.copy()
            for key, value in reversed(list(common.items())):
                part.insert(0, key, value)
            part.insert(0, "level", "cell")
            part["status"], part["error"] = "ok", None
            part["store"], part["input_path"] = tail["store"], tail["input_path"]
            frames.append(part)
    columns = [*LEAD_COLUMNS, *plan.metadata_columns, *STATUS_COLUMNS, *rate_columns,
               *TAIL_COLUMNS]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    table = table.reindex(columns=columns)
    integers = ["cell_id", "n_cells",
                *(c for c in rate_columns if TABLE_COLUMNS["cells"][c] == "int64")]
    for column in integers:  # nullable: movie rows have no cell_id, failed movies no counts
        table[column] = table[column].astype("Int64")
    for column in plan.metadata_columns:
        table[column] = _uniform(table[column])
    for column in ("error",):
        table[column] = table[column].astype(object).where(table[column].notna(), None)
    return table


def _uniform(series: pd.Series) -> pd.Series:
    """A metadata column with one type: numbers stay numbers unless mixed with text."""
    values = series.dropna()
    if values.map(lambda v: isinstance(v, bool)).all():
        return series.astype("boolean") if len(values) else series
    if values.map(lambda v: isinstance(v, int) and not isinstance(v, bool)).all():
        return series.astype("Int64")
    if values.map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all():
        return pd.to_numeric(series).astype("float64")
    return series.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                      else str(v)).astype(object)


def write_table_atomic(table: pd.DataFrame, csv: Path, parquet: Path) -> None:
    """Write the table as CSV and Parquet, each to a temporary name renamed into place."""
    for path, write in ((csv, lambda p: table.to_csv(p, index=False)),
                        (parquet, lambda p: table.to_parquet(p, index=False))):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
