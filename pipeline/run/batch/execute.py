"""Running a batch: each movie on one shared Dask client, several at once; failures isolated."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

from pipeline.errors import InputError
from pipeline.io import store
from pipeline.run.batch.display import BatchDisplay
from pipeline.run.batch.outcome import BatchReport, MovieOutcome, one_line
from pipeline.run.batch.plan import BatchPlan, MovieJob
from pipeline.run.batch.summary import summary_table, write_table_atomic
from pipeline.run.compute import dask_client, progress_to
from pipeline.run.runner import Run, log_to_file, run
from pipeline.stages.segment import resolve_model

log = logging.getLogger(__name__)


def run_movie(job: MovieJob, client, *, overwrite: bool, display: BatchDisplay | None = None
              ) -> MovieOutcome:
    """Run one movie of a batch; never raises for the movie's own failure (it is reported).

    A complete store of the same config and input is kept (skipped); an unfinished one
    is resumed; a complete store from another config or input is replaced only with
    ``overwrite``.
    """

    start = time.perf_counter()
    job.log_file.parent.mkdir(parents=True, exist_ok=True)
    if display:
        display.movie_started(job.name)
    note = ""
    try:
        with log_to_file(job.log_file):
            log.info("movie %s: %s (metadata %s)", job.name, job.path, job.metadata)
            try:
                decision = Run(job.config).store_decision(skip_complete=True)
                if decision.action == "skip":
                    if store.read_attrs(job.store).get("metadata") != job.metadata:
                        store.update_attrs(job.store, metadata=job.metadata)
                    note = "complete already, skipped"
                    log.info("%s is complete (same config and input): skipped", job.store)
                elif decision.action == "refuse":
                    raise InputError(decision.reason)
                else:
                    if decision.action == "resume":
                        note = f"resumed after {', '.join(decision.done) or 'start'}"
                    callbacks = {}
                    if display:
                        callbacks["on_stage"] = lambda stage, done: display.stage(job.name, stage, done)
                    sink = ((lambda desc, n, total: display.tasks(job.name, desc, n, total))
                            if display else (lambda *_: None))
                    with progress_to(sink):
                        run(job.config, client=client, metadata=job.metadata, log_file=job.log_file,
                            stages_on_cluster=client is not None, **callbacks)
            except Exception as exc:
                log.info("movie %s failed: %s", job.name, one_line(exc))
                with open(job.log_file, "a", encoding="utf-8") as fh:
                    fh.write("".join(traceback.format_exception(exc)))
                outcome = MovieOutcome(job.name, "failed", one_line(exc), job.store,
                                       time.perf_counter() - start)
            else:
                outcome = MovieOutcome(job.name, "ok", None, job.store,
                                       time.perf_counter() - start, note)
    except OSError as exc:  # the log file itself cannot be written
        outcome = MovieOutcome(job.name, "failed", one_line(exc), job.store,
                               time.perf_counter() - start)
    if display:
        display.movie_finished(job.name, outcome)
    return outcome


def check_models(plan: BatchPlan) -> None:
    """Check that every Cellpose model the batch uses is on this machine (no download).

    Raises
    ------
    InputError
        With the fix (pre-fetch the weights, e.g. on an HPC login node).
    """

    for model in sorted({job.config.segment.model for job in plan.jobs}):
        resolve_model(model)


@contextmanager
def _client_for(plan: BatchPlan, client) -> Iterator[object | None]:
    if client is not None:
        yield client
        return

    with dask_client(plan.compute) as own:
        yield own


def run_batch(plan: BatchPlan, *, client=None, display: BatchDisplay | None = None) -> BatchReport:
    """Run every movie of a plan and write the batch summary.

    Parameters
    ----------
    plan
        From `plan_batch` / `load_plan`.
    client
        A ``distributed.Client`` to use; by default one is made from the plan's
        ``compute`` section for the batch.
    display
        Progress display; None shows none.

    Returns
    -------
    BatchReport
        Outcomes in plan order, the summary table and where it was written.
    """
    plan.logs_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[MovieOutcome]
    dashboard = None
    with _client_for(plan, client) as active:
        if active is not None:
            dashboard = getattr(active, "dashboard_link", None)
            if display and dashboard:
                display.message(f"Dask dashboard: {dashboard}")
        if display:
            display.message(f"{len(plan.jobs)} movies, {plan.movies_at_once} at a time; logs in "
                            f"{plan.logs_dir}")
        with (ThreadPoolExecutor(plan.movies_at_once, thread_name_prefix="movie")
              if plan.movies_at_once > 1 else nullcontext()) as pool:
            if pool is None:
                outcomes = [run_movie(job, active, overwrite=plan.overwrite, display=display)
                            for job in plan.jobs]
            else:
                futures = [pool.submit(run_movie, job, active, overwrite=plan.overwrite,
                                       display=display) for job in plan.jobs]
                outcomes = [future.result() for future in futures]
    summary = summary_table(plan, outcomes)
    write_table_atomic(summary, plan.summary_csv, plan.summary_parquet)
    return BatchReport(outcomes, summary, plan.summary_csv, plan.summary_parquet, dashboard)
