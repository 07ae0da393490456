"""``uptrack batch BATCH.yaml``: many movies, one store each, and a batch summary table."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from pipeline.cli import add_set_option

HELP = "run the pipeline on many movies (batch config YAML) on one Dask cluster"

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("config", type=Path,
                        help="batch config (YAML), e.g. configs/batch.yaml or configs/hpc_slurm.yaml")
    add_set_option(parser, "a batch config field", "--set compute.n_workers=4 --set run.detect.min_snr=4")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the work plan (and the job script for SLURM/PBS/LSF); run nothing")
    parser.add_argument("--no-progress", action="store_true",
                        help="no live progress (bars or per-stage lines); one line per finished movie is still printed")


def main(args) -> int:
    from pipeline.run.batch import BatchDisplay, check_models, describe_plan, load_plan, run_batch

    plan = load_plan(args.config, args.overrides, strict=not args.dry_run)
    if args.dry_run:
        print(describe_plan(plan))
        return 0
    check_models(plan)
    display = BatchDisplay(len(plan.jobs), plan.movies_at_once, stream=sys.stderr,
                           live=not args.no_progress)
    try:
        with nullcontext() if args.verbose else _quiet_console():
            report = run_batch(plan, client=None, display=display)
    finally:
        display.close()
    ok = len(report.outcomes) - len(report.failed)
    print(f"\n{ok} of {len(report.outcomes)} movies ok" +
          (f", {len(report.failed)} failed:" if report.failed else ""))
    for outcome in report.failed:
        print(f"  {outcome.name}: {outcome.error}\n    log: {plan.logs_dir / (outcome.name + '.log')}")
    print(f"summary: {report.summary_csv}\n         {report.summary_parquet}")
    print(f"stores:  {plan.output_dir}/<movie>.zarr   logs: {plan.logs_dir}")
    written = write_reports([o.store for o in report.outcomes if o.status == "ok"], plan.output_dir)
    if written["movies"]:
        print(f"reports: {plan.output_dir}/<movie>.report.html ({written['movies']} movies)")
    if written.get("compare"):
        print(f"compare: {written['compare']}  (conditions side by side; `uptrack compare` redoes it)")
    return report.exit_code


def write_reports(stores: list[Path], output_dir: Path, *, by: str = "condition") -> dict:
    """Each movie's HTML report beside its store, and the condition comparison when there are two or more.

    A report that cannot be made is a warning: the batch's results stand without it.

    Returns
    -------
    dict
        ``movies``: how many movie reports were written; ``compare``: the comparison report's path (or None).
    """
    from pipeline.eval.compare import batch_tables
    from pipeline.eval.html_report import write_batch_report, write_movie_report
    from pipeline.io.results import load_results

    written = {"movies": 0, "compare": None}
    for path in stores:
        try:
            write_movie_report(load_results(path))
            written["movies"] += 1
        except Exception as exc:  # a report is an extra: never fail the batch for it
            log.warning("%s: no HTML report (%s: %s)", path, type(exc).__name__, exc)
    try:
        cells, spell_table, results = batch_tables(list(stores), by=by)
        if cells[by].nunique() >= 2:
            written["compare"] = write_batch_report(cells, spell_table, results, output_dir / "compare")["report"]
    except Exception as exc:
        log.warning("no condition comparison (%s: %s); run `uptrack compare %s`", type(exc).__name__, exc, output_dir)
    return written


@contextmanager
def _quiet_console() -> Iterator[None]:
    """Keep the pipeline's INFO lines off the terminal (they go to each movie's log file)."""

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith("pipeline")

    handlers = [h for h in logging.getLogger().handlers if not isinstance(h, logging.FileHandler)]
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)
