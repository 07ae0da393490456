"""Batch runs: many movies, one config, one Dask cluster (``uptrack batch CONFIG.yaml``).

A batch config lists movies (paths or globs, each with optional metadata such as
condition, particle type, replicate), the run settings every movie shares (the
sections of a run config), the output folder and the ``compute`` section. Planning
turns it into one `MovieJob` per movie (pure: `plan_batch`; the globbing is done
before, by `find_movies`); `run_batch` runs the jobs on one shared Dask client,
several movies at once, and writes the batch summary.

Per movie: one store ``<output.dir>/<name>.zarr`` (the movie's metadata in its
``metadata`` attribute) and one log ``<output.dir>/logs/<name>.log``. For the batch:
``<output.dir>/<summary>.csv`` and ``.parquet`` with one row per movie
(``level == "movie"``: pooled rates, status ``ok`` / ``failed``, the error) and one
row per cell (``level == "cell"``), each with the movie's name and metadata columns.

Resume and isolation
    Each movie's store records the stages it finished and is marked complete only
    at the end (`pipeline.run.runner`). Started again after a kill, a batch skips movies
    whose store is complete (same config and input), resumes the others at their
    first unfinished stage, and starts the rest. A movie that fails (unreadable or
    corrupt file, a stage raising, a worker dying on it) is recorded as failed with
    its error in the summary and its log, and the other movies go on; the command
    then exits 1. Summary files are written whole and renamed into place.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from glob import glob, has_magic
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field, ValidationError, field_validator, model_validator
from tqdm.auto import tqdm

from pipeline.errors import InputError
from pipeline.io import store
from pipeline.io.movie import TIFF_SUFFIXES
from pipeline.io.results import TABLE_COLUMNS, load_results
from pipeline.params import Params
from pipeline.run.compute import dask_client, job_script, n_worker_processes, progress_to
from pipeline.run.config import (
    JOBQUEUE_BACKENDS,
    ComputeConfig,
    RunConfig,
    format_validation_error,
    read_yaml_mapping,
    resolve_config_paths,
    resolve_model_path,
    resolve_path,
    set_dotted,
)
from pipeline.run.runner import STAGES, Run, log_to_file, movie_stem, run
from pipeline.stages.segment import resolve_model

log = logging.getLogger(__name__)

MetadataValue = str | int | float | bool

#: Columns of the batch summary before the metadata columns.
LEAD_COLUMNS = ("level", "movie")
#: Columns after the metadata columns, before the rate columns.
STATUS_COLUMNS = ("status", "error", "cell_id", "n_cells")
#: Columns at the end.
TAIL_COLUMNS = ("store", "input_path")


class MovieEntry(Params):
    """One ``movies:`` item: a movie file (``path``) or every file matching ``glob``."""

    path: Path | None = Field(None, description="A movie file (relative to the batch config).")
    glob: str | None = Field(
        None, description="Files to run, e.g. 'movies/*.ome.tif' or 'plate1/**/*.tif' "
        "(relative to the batch config; ** descends into folders).")
    name: str | None = Field(
        None, description="Store name for a path entry; default: the file name without suffix.")
    name_pattern: str | None = Field(
        None, description="Regular expression searched in each file name; its named groups "
        r"become metadata, e.g. '(?P<condition>[a-z]+)_rep(?P<replicate>\d+)'.")
    metadata: dict[str, MetadataValue] = Field(
        {}, description="Values carried into the store and the summary, e.g. condition: control.")
    overrides: dict[str, Any] = Field(
        {}, description="Run settings for these movies only, by dotted key, e.g. "
        "{detect.min_snr: 4, input.pixel_size_um: 0.1}.")

    @field_validator("metadata")
    @classmethod
    def _metadata_keys(cls, value: dict) -> dict:
        _check_metadata_keys(value)
        return value

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.glob is None):
            raise ValueError("give exactly one of path or glob")
        if self.name is not None and self.glob is not None:
            raise ValueError("name is for a path entry; a glob entry names stores after its files")
        for key in self.overrides:
            if key == "input.path" or key.split(".")[0] in ("output", "compute"):
                raise ValueError(f"overrides: {key} cannot differ between the movies of a batch")
        if self.name_pattern is not None:
            try:
                re.compile(self.name_pattern)
            except re.error as exc:
                raise ValueError(f"name_pattern is not a valid regular expression: {exc}") from None
        return self


class BatchOutput(Params):
    """Where the stores, logs and summary of a batch go."""

    dir: Path = Field(Path("results"), description="Folder for the stores, logs/ and the summary.")
    summary: str = Field("batch_summary", description="File name (no suffix) of the summary table.")
    overwrite: bool = Field(
        False, description="Replace a complete store made from another config or input; "
        "complete stores of the same config and input are always kept and skipped.")


class BatchConfig(Params):
    """Everything ``uptrack batch`` needs."""

    movies: list[MovieEntry] = Field(min_length=1, description="Movies to run.")
    metadata: dict[str, MetadataValue] = Field(
        {}, description="Metadata of every movie (a movie's own metadata wins).")
    run_config: Path | None = Field(
        None, description="A run config (YAML) whose settings every movie starts from; its "
        "input.path, output and compute are replaced by the batch's.")
    run: dict[str, Any] = Field(
        {}, description="Run settings for every movie: the sections of a run config (input "
        "channels and calibration, segment, detect, ...), over run_config.")
    output: BatchOutput = BatchOutput()
    compute: ComputeConfig = ComputeConfig()
    movies_at_once: int | None = Field(
        None, ge=1, description="Movies run at the same time; default: one per worker process "
        "(at most the number of movies).")

    @model_validator(mode="after")
    def _check(self):
        for key in ("output", "compute"):
            if key in self.run:
                raise ValueError(f"run.{key}: set {key} at the top level of a batch config")
        if isinstance(self.run.get("input"), dict) and "path" in self.run["input"]:
            raise ValueError("run.input.path: movies come from the movies list")
        return self

    @field_validator("metadata")
    @classmethod
    def _metadata_keys(cls, value: dict) -> dict:
        _check_metadata_keys(value)
        return value


# --- loading --------------------------------------------------------------------------


def load_batch_config(path: str | Path, overrides: list[str] = ()) -> tuple[BatchConfig, dict]:
    """Read, override and validate a batch config; relative paths are made absolute.

    Parameters
    ----------
    path
        Batch config YAML.
    overrides
        ``key.sub=value`` strings (``--set``), e.g. ``compute.backend=slurm``.

    Returns
    -------
    (BatchConfig, dict)
        The validated config and the run settings every movie starts from (``run_config``
        merged with ``run``, paths absolute).

    Raises
    ------
    InputError
        Unreadable file, bad YAML, invalid fields (all listed, with the file's name).
    """
    path = Path(path)
    raw = read_yaml_mapping(path, overrides, what="batch config", sections="movies:, run:, output:, compute:")
    base = path.resolve().parent
    for entry in raw.get("movies") or []:
        if isinstance(entry, dict):
            if entry.get("path"):
                entry["path"] = resolve_path(entry["path"], base)
            if entry.get("glob"):
                entry["glob"] = resolve_path(entry["glob"], base)
            overrides = entry.get("overrides")
            if isinstance(overrides, dict):  # paths in per-movie settings, as in run:
                if isinstance(overrides.get("segment.model"), str):
                    overrides["segment.model"] = resolve_model_path(overrides["segment.model"], base)
    if isinstance(raw.get("output"), dict) and raw["output"].get("dir"):
        raw["output"]["dir"] = resolve_path(raw["output"]["dir"], base)
    if raw.get("run_config"):
        raw["run_config"] = resolve_path(raw["run_config"], base)
    jobqueue = (raw.get("compute") or {}).get("jobqueue") if isinstance(raw.get("compute"), dict) else None
    if isinstance(jobqueue, dict) and jobqueue.get("log_directory") and "$" not in str(jobqueue["log_directory"]):
        jobqueue["log_directory"] = resolve_path(jobqueue["log_directory"], base)
    try:
        config = BatchConfig.model_validate(raw)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, str(path), root=BatchConfig, what="batch config")) from None
    settings = copy.deepcopy(config.run)
    resolve_config_paths(settings, base)
    if config.run_config is not None:
        settings = _merge(_read_run_config(config.run_config), settings)
    return config, settings


def _read_run_config(path: Path) -> dict:
    """A run config's settings with its paths absolute, minus input.path, output, compute."""
    raw = read_yaml_mapping(path, (), what="run config (run_config: of the batch config)",
                            sections="input:, segment:, detect:, ...")
    resolve_config_paths(raw, path.parent)
    raw.pop("output", None)
    raw.pop("compute", None)
    if isinstance(raw.get("input"), dict):
        raw["input"].pop("path", None)
    return raw


def _merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``, recursively for mappings."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_metadata_keys(metadata: dict) -> None:

    reserved = {*LEAD_COLUMNS, *STATUS_COLUMNS, *TAIL_COLUMNS, *TABLE_COLUMNS["cells"]}
    for key in metadata:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"metadata key {key!r}: use letters, digits and _ (a column name)")
        if key in reserved:
            raise ValueError(f"metadata key {key!r} is a column of the summary already; rename it")


# --- planning (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class MovieJob:
    """One movie of a batch: what to run and where its results go."""

    name: str
    path: Path
    metadata: dict
    config: RunConfig
    store: Path
    log_file: Path


@dataclass(frozen=True)
class BatchPlan:
    """The movies of a batch, in order, and where the batch writes."""

    jobs: tuple[MovieJob, ...]
    output_dir: Path
    logs_dir: Path
    summary_csv: Path
    summary_parquet: Path
    compute: ComputeConfig
    movies_at_once: int
    overwrite: bool
    metadata_columns: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())


def find_movies(config: BatchConfig, *, strict: bool = True) -> list[list[Path]]:
    """The files of each ``movies:`` entry (globs expanded, sorted); a path entry as given.

    Raises
    ------
    InputError
        With ``strict``, a glob that matches no file (the message names it).
    """
    found = []
    for i, entry in enumerate(config.movies):
        if entry.path is not None:
            found.append([entry.path])
            continue
        files = sorted(Path(p) for p in glob(entry.glob, recursive=True) if _is_movie(Path(p)))
        if not files and strict:
            raise InputError(unmatched_message(i, entry.glob))
        found.append(files)
    return found


def _is_movie(path: Path) -> bool:
    """A TIFF file or an OME-Zarr folder (other files a glob catches are left out)."""

    if path.is_dir():
        return path.suffix.lower() == ".zarr"
    return path.suffix.lower() in TIFF_SUFFIXES


def unmatched_message(index: int, pattern: str) -> str:
    """Why a glob found nothing, with the likely cause."""
    hint = ""
    unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", pattern)
    if unset:
        hint = f" (environment variable {', '.join('$' + v for v in unset)} is not set)"
    elif not has_magic(pattern):
        hint = " (it has no wildcard: use path: for one file)"
    return f"movies[{index}].glob {pattern!r} matches no movie (TIFF or OME-Zarr){hint}"


def _stem(path: Path) -> str:

    return movie_stem(path)


def plan_batch(config: BatchConfig, settings: dict, found: list[list[Path]], *,
               source: str = "batch config") -> BatchPlan:
    """Turn a batch config and the files found for it into movie jobs (no I/O).

    Parameters
    ----------
    config
        The batch config.
    settings
        Run settings shared by every movie (from `load_batch_config`).
    found
        For each ``movies:`` entry, its files (`find_movies`).
    source
        Name of the config in error messages.

    Raises
    ------
    InputError
        Two movies with one name, a file name that does not match its entry's
        ``name_pattern``, or run settings that are not a valid run config.
    """
    out = Path(config.output.dir)
    jobs: list[MovieJob] = []
    seen: dict[str, Path] = {}
    for i, (entry, files) in enumerate(zip(config.movies, found, strict=True)):
        for path in files:
            name = entry.name or _stem(path)
            if name in seen:
                raise InputError(f"{source}: two movies are named {name!r} ({seen[name]} and "
                                 f"{path}); give one a name: (path entries) or rename the file")
            seen[name] = path
            metadata = {**config.metadata, **_pattern_metadata(entry, path, i, source),
                        **entry.metadata}
            raw = _merge(settings, {})
            raw.setdefault("input", {})["path"] = str(path)
            raw["output"] = {"dir": str(out), "name": name, "overwrite": config.output.overwrite}
            raw["compute"] = config.compute.model_dump(mode="json")
            for key, value in entry.overrides.items():
                set_dotted(raw, key, value, f"{source}: movies[{i}] override")
            try:
                run_config = RunConfig.model_validate(raw)
            except ValidationError as exc:
                raise InputError(format_validation_error(exc, f"{source} (run settings of movie {name!r})",
                                                         what="batch config")) from None
            jobs.append(MovieJob(name=name, path=path, metadata=metadata, config=run_config,
                                 store=out / f"{name}.zarr", log_file=out / "logs" / f"{name}.log"))
    columns: list[str] = []
    for job in jobs:
        columns += [key for key in job.metadata if key not in columns]

    at_once = config.movies_at_once or max(1, min(len(jobs), n_worker_processes(config.compute)))
    if config.compute.backend == "sync":
        at_once = 1
    warnings = tuple(unmatched_message(i, entry.glob)
                     for i, (entry, files) in enumerate(zip(config.movies, found, strict=True))
                     if entry.glob is not None and not files)
    return BatchPlan(jobs=tuple(jobs), output_dir=out, logs_dir=out / "logs", warnings=warnings,
                     summary_csv=out / f"{config.output.summary}.csv",
                     summary_parquet=out / f"{config.output.summary}.parquet",
                     compute=config.compute, movies_at_once=at_once,
                     overwrite=config.output.overwrite, metadata_columns=tuple(columns))


def _pattern_metadata(entry: MovieEntry, path: Path, index: int, source: str) -> dict:
    if entry.name_pattern is None:
        return {}
    match = re.search(entry.name_pattern, path.name)
    if match is None:
        raise InputError(f"{source}: movies[{index}].name_pattern {entry.name_pattern!r} does "
                         f"not match the file name {path.name!r}")
    values = {key: _number_or_text(value) for key, value in match.groupdict().items()
              if value is not None}
    try:
        _check_metadata_keys(values)
    except ValueError as exc:
        raise InputError(f"{source}: movies[{index}].name_pattern: {exc}") from None
    return values


def _number_or_text(value: str) -> MetadataValue:
    """'3' -> 3, '0.5' -> 0.5, anything else stays text."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def load_plan(path: str | Path, overrides: list[str] = (), *, strict: bool = True) -> BatchPlan:
    """Read a batch config, find its movies and plan the batch.

    ``strict=False`` (dry runs) lets a glob match nothing; the plan's ``warnings`` say so.
    """
    config, settings = load_batch_config(path, overrides)
    return plan_batch(config, settings, find_movies(config, strict=strict), source=str(path))


# --- progress ------------------------------------------------------------------------------


class BatchDisplay:
    """Per-movie and overall progress: tqdm bars on a terminal, timestamped lines otherwise.

    With ``live=False`` only the messages (dashboard address, one line per finished
    movie) are shown.

    Thread-safe: movies report from their own threads.
    """

    def __init__(self, n_movies: int, slots: int, stream=None, live: bool = True):

        self.stages = STAGES
        self.stream = stream if stream is not None else sys.stderr
        self.live = live  # False: only messages and one line per finished movie
        self.tty = live and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.lock = threading.Lock()
        self.n_movies, self.done, self.failed = n_movies, 0, 0
        self.free = list(range(slots))
        self.slot_of: dict[str, int] = {}
        self.bars: dict[int, object] = {}
        self.overall = None
        if self.tty:

            self.overall = tqdm(total=n_movies, desc="movies", unit="movie", position=0,
                                file=self.stream, leave=True, disable=False)
            for slot in range(slots):
                self.bars[slot] = tqdm(total=len(STAGES), desc="(idle)", unit="stage",
                                       position=slot + 1, file=self.stream, leave=False,
                                       disable=False, bar_format="{desc:<32} {bar} {n}/{total} stages{postfix}")

    def message(self, text: str) -> None:
        with self.lock:
            if self.tty:

                tqdm.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    def _line(self, text: str) -> None:
        if self.live and not self.tty:
            self.message(f"{datetime.now():%H:%M:%S} {text}")

    def movie_started(self, name: str) -> None:
        with self.lock:
            slot = self.free.pop(0) if self.free else 0
            self.slot_of[name] = slot
            if self.tty:
                bar = self.bars[slot]
                bar.reset(total=len(self.stages))
                bar.set_description_str(name[:32], refresh=False)
                bar.set_postfix_str("starting")
        self._line(f"{name}: started")

    def stage(self, name: str, stage: str, done: bool) -> None:
        if self.tty:
            with self.lock:
                bar = self.bars[self.slot_of[name]]
                if done:
                    bar.update()
                bar.set_postfix_str("" if done else stage)
        elif done:
            self._line(f"{name}: {stage} done ({self.stages.index(stage) + 1}/{len(self.stages)})")

    def tasks(self, name: str, desc: str, n: int, total: int) -> None:
        if self.tty:
            with self.lock:
                self.bars[self.slot_of[name]].set_postfix_str(f"{desc} {n}/{total}")

    def movie_finished(self, name: str, outcome: MovieOutcome) -> None:
        with self.lock:
            self.done += 1
            self.failed += outcome.status != "ok"
            slot = self.slot_of.pop(name, None)
            if slot is not None:
                self.free.append(slot)
                self.free.sort()
                if self.tty:
                    self.bars[slot].set_description_str("(idle)", refresh=False)
                    self.bars[slot].set_postfix_str("")
            if self.tty:
                self.overall.update()
                self.overall.set_postfix_str(f"{self.failed} failed" if self.failed else "")
        what = outcome.note or outcome.status
        if outcome.status != "ok":
            what = f"FAILED: {outcome.error}"
        self.message(f"[{self.done}/{self.n_movies}] {name}: {what} ({outcome.seconds:.0f} s)")

    def close(self) -> None:
        if self.tty:
            for bar in self.bars.values():
                bar.close()
            self.overall.close()


# --- running ----------------------------------------------------------------------------------


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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
                log.info("movie %s failed: %s", job.name, _one_line(exc))
                with open(job.log_file, "a", encoding="utf-8") as fh:
                    fh.write("".join(traceback.format_exception(exc)))
                outcome = MovieOutcome(job.name, "failed", _one_line(exc), job.store,
                                       time.perf_counter() - start)
            else:
                outcome = MovieOutcome(job.name, "ok", None, job.store,
                                       time.perf_counter() - start, note)
    except OSError as exc:  # the log file itself cannot be written
        outcome = MovieOutcome(job.name, "failed", _one_line(exc), job.store,
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


# --- summary ----------------------------------------------------------------------------------


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
                row.update(status="failed", error=f"reading results: {_one_line(exc)}")
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


# --- dry run ------------------------------------------------------------------------------------


def describe_plan(plan: BatchPlan) -> str:
    """The work plan as text: compute, each movie and its store's state, outputs (starts nothing)."""

    c = plan.compute
    lines = [f"uptrack batch: {len(plan.jobs)} movies -> {plan.output_dir}"]
    if c.backend == "local":
        workers = n_worker_processes(c)
        lines.append(f"compute: Dask LocalCluster, {workers} worker processes x "
                     f"{c.threads_per_worker} thread(s), memory per worker {c.memory_per_worker}")
    elif c.backend == "address":
        lines.append(f"compute: existing Dask scheduler {c.address}")
    elif c.backend == "sync":
        lines.append("compute: no cluster (sync, one process)")
    else:
        q = c.jobqueue
        scale = (f"adaptive, {q.adaptive_min_jobs} to {q.adaptive_max_jobs} jobs"
                 if q.adaptive_max_jobs else f"{q.jobs} job(s)")
        lines.append(f"compute: {c.backend.upper()} via dask-jobqueue, {scale}; each job "
                     f"{q.cores} cores, {q.memory}, {q.processes} worker processes, walltime "
                     f"{q.walltime}")
    lines.append(f"movies at once: {plan.movies_at_once}; frames per task: {c.frames_per_task}")
    lines += [f"warning: {w}" for w in plan.warnings]
    lines.append("")
    header = f"{'movie':<24} {'state':<34} {'frames':>6}  path / metadata"
    lines += [header, "-" * len(header)]
    for job in plan.jobs:
        state, frames = _describe_state(job, Run)
        meta = ", ".join(f"{k}={v}" for k, v in job.metadata.items())
        lines.append(f"{job.name:<24} {state:<34} {frames:>6}  {job.path}")
        if meta:
            lines.append(f"{'':<24} {'':<34} {'':>6}  {meta}")
    lines += ["", f"stores:  {plan.output_dir}/<movie>.zarr",
              f"logs:    {plan.logs_dir}/<movie>.log",
              f"summary: {plan.summary_csv}", f"         {plan.summary_parquet}"]
    if c.backend in JOBQUEUE_BACKENDS:
        lines += ["", f"job script ({c.backend.upper()}; the scheduler address is filled in "
                  "when the batch runs):", "", job_script(c).rstrip()]
    return "\n".join(lines)


def _describe_state(job: MovieJob, run_cls) -> tuple[str, str]:
    """What a run of this movie would do, and its frame count (reads metadata only)."""
    if not job.path.exists():
        return "will fail: file not found", "-"
    try:
        runner = run_cls(job.config)
        decision = runner.store_decision(skip_complete=True)
    except Exception as exc:
        return f"will fail: {_one_line(exc)[:60]}", "-"
    frames = str(runner.n_frames)
    if decision.action == "resume":
        return f"resume ({len(decision.done)}/{len(STAGES)} stages done)", frames
    if decision.action == "refuse":
        return f"will fail: {decision.label}", frames
    return {"skip": "complete: skip", "new": "new"}.get(decision.action, decision.label), frames
