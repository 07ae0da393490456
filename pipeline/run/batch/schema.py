"""The batch config: movies, shared run settings, output, compute; loading and validation."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.errors import InputError
from pipeline.io.results import TABLE_COLUMNS
from pipeline.params import Params
from pipeline.run.compute import ComputeConfig
from pipeline.run.config import format_validation_error, read_yaml_mapping, resolve_config_paths, resolve_model_path, resolve_path

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
        check_metadata_keys(value)
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
        check_metadata_keys(value)
        return value


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
        settings = merge_settings(_read_run_config(config.run_config), settings)
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


def merge_settings(base: dict, top: dict) -> dict:
    """``top`` over ``base``, recursively for mappings."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_settings(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def check_metadata_keys(metadata: dict) -> None:

    reserved = {*LEAD_COLUMNS, *STATUS_COLUMNS, *TAIL_COLUMNS, *TABLE_COLUMNS["cells"]}
    for key in metadata:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"metadata key {key!r}: use letters, digits and _ (a column name)")
        if key in reserved:
            raise ValueError(f"metadata key {key!r} is a column of the summary already; rename it")


def json_schemas() -> dict[str, dict]:
    """JSON Schemas (draft 2020-12) of the run and batch configs, for editors and other tools.

    ``configs/run.schema.json`` and ``configs/batch.schema.json`` are these, written by
    ``python -m pipeline.run.batch.schema`` (a test keeps them current). A YAML config that names
    one (``# yaml-language-server: $schema=run.schema.json``) gets completion, field descriptions
    with units and errors for unknown fields in VS Code and other editors with a YAML language server.

    Returns
    -------
    dict
        ``{"run": schema, "batch": schema}``.
    """
    from pipeline.run.config import RunConfig

    schemas = {}
    for kind, model in (("run", RunConfig), ("batch", BatchConfig)):
        schema = model.model_json_schema()
        schemas[kind] = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return schemas


if __name__ == "__main__":
    import json

    folder = Path(__file__).resolve().parents[3] / "configs"
    for kind, schema in json_schemas().items():
        (folder / f"{kind}.schema.json").write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
