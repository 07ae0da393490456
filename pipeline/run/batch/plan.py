"""Planning a batch (pure): one MovieJob per movie, names, outputs, metadata."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from glob import glob, has_magic
from pathlib import Path

from pydantic import ValidationError

from pipeline.errors import InputError
from pipeline.io.movie import TIFF_SUFFIXES
from pipeline.run.batch.schema import BatchConfig, MetadataValue, MovieEntry, check_metadata_keys, load_batch_config, merge_settings
from pipeline.run.compute import ComputeConfig, n_worker_processes
from pipeline.run.config import RunConfig, format_validation_error, set_dotted
from pipeline.run.runner import movie_stem


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
            raw = merge_settings(settings, {})
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
        check_metadata_keys(values)
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
