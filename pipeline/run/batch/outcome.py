"""How the movies of a batch ended: one outcome per movie, and the batch's report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass
class MovieOutcome:
    """How one movie of a batch ended."""

    name: str
    status: str  # "ok" or "failed"
    error: str | None
    store: Path
    seconds: float
    note: str = ""  # "complete already, skipped", "resumed after segment, ...", ...


@dataclass
class BatchReport:
    """The result of `run_batch`."""

    outcomes: list[MovieOutcome]
    summary: pd.DataFrame
    summary_csv: Path
    summary_parquet: Path
    dashboard: str | None = None

    @property
    def failed(self) -> list[MovieOutcome]:
        return [o for o in self.outcomes if o.status != "ok"]

    @property
    def exit_code(self) -> int:
        """0 when every movie finished, 1 when any failed."""
        return 1 if self.failed else 0


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message with whitespace collapsed."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
