"""The run config: one YAML file, one pydantic model per stage, validated up front.

Each stage defines its own parameter model in its module (``SegmentParams`` in
``segment.py``, ...); :class:`RunConfig` composes them with the input, output and
compute sections. Unknown fields are errors, and every error names the config file,
the field and what is allowed. ``--set key.sub=value`` overrides any field.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from pipeline.errors import InputError
from pipeline.params import Params
from pipeline.run.compute import ComputeConfig
from pipeline.stages.classify import ClassifyParams
from pipeline.stages.compartments import CompartmentParams
from pipeline.stages.detect import DetectParams
from pipeline.stages.kinetics import KineticsParams
from pipeline.stages.link import LinkParams
from pipeline.stages.segment import SegmentParams
from pipeline.stages.track_cells import CellTrackParams
from pipeline.stages.zones import ZoneParams


class ChannelsConfig(Params):
    """Which channel of the movie holds what (index from 0, or OME channel name)."""

    cells: int | str = Field(0, description="Cell stain channel (cytoplasm or membrane).")
    particles: int | str = Field(1, description="Particle / EV channel.")
    nuclei: int | str | None = Field(None, description="Optional nuclear stain channel.")
    markers: dict[str, int | str] = Field({}, description="Compartment marker channels, name -> channel, e.g. "
                                          "{lysosome: LysoTracker, early_endosome: 3} (colocalisation, arrival rates).")


class InputConfig(Params):
    """The movie to analyse and the metadata that override the file's."""

    path: Path = Field(description="Movie: TIFF, OME-TIFF or OME-Zarr (T[Z]CYX).")
    channels: ChannelsConfig = ChannelsConfig()
    pixel_size_um: float | None = Field(
        None, gt=0, description="Pixel size, µm; overrides the file's metadata."
    )
    frame_interval_s: float | None = Field(
        None, gt=0, description="Time between frames, s; overrides the file's metadata."
    )
    axes: str | None = Field(
        None, description="Axes of a plain TIFF without metadata, e.g. TCYX (with n_channels for a page stack)."
    )
    n_channels: int | None = Field(
        None, ge=1, description="Channels of a plain TIFF stored as one page per image (T×C pages, "
                                "channels interleaved as axes says); needed with axes TCYX or CTYX there."
    )


class OutputConfig(Params):
    """Where results go."""

    dir: Path = Field(Path("results"), description="Folder for the result store(s).")
    name: str | None = Field(None, description="Store name; default: the movie's file stem.")
    overwrite: bool = Field(
        False, description="Replace a complete store of the same name instead of stopping."
    )
    image_downsample: int = Field(
        1, ge=1, le=64,
        description="The store root holds the movie as an OME-Zarr image (napari-ome-zarr, Fiji open the store "
                    "with its labels over it). 1: a full-resolution copy; n > 1: y and x binned n x n (mean), "
                    "for movies of tens of GB (2: a quarter of the size, 4: a sixteenth). Labels stay full size.",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value in (".", "..") or "/" in value or "\\" in value):
            raise ValueError(f"{value!r} is not a plain file name; the store goes inside output.dir, so give a "
                             "name without '/' or '..' (set output.dir to choose the folder)")
        return value


#: Backends that start Dask workers as batch jobs through dask-jobqueue.
class RunConfig(Params):
    """Everything ``uptrack run`` needs, one section per stage."""

    input: InputConfig
    output: OutputConfig = OutputConfig()
    segment: SegmentParams = SegmentParams()
    track_cells: CellTrackParams = CellTrackParams()
    detect: DetectParams = DetectParams()
    link: LinkParams = LinkParams()
    zones: ZoneParams = ZoneParams()
    classify: ClassifyParams = ClassifyParams()
    kinetics: KineticsParams = KineticsParams()
    compartments: CompartmentParams = CompartmentParams()
    compute: ComputeConfig = ComputeConfig()


def apply_overrides(raw: dict, overrides: list[str], source: str) -> dict:
    """Apply ``key.sub=value`` overrides (``--set``) to a raw config dict; values are parsed as YAML.

    Raises
    ------
    InputError
        An item without ``=``, a value that is not valid YAML, or a key through a non-section.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. --set detect.min_snr=4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0]
            raise InputError(f"--set {item!r}: the value {text!r} is not valid YAML ({problem}); "
                             "quote text values, e.g. --set 'segment.model=\"my model\"'") from None
        set_dotted(raw, key.strip(), value, f"--set {item!r} ({source})")
    return raw


def set_dotted(raw: dict, key: str, value, source: str) -> None:
    """Set ``raw[a][b][c] = value`` for ``key = "a.b.c"``, creating sections as needed.

    Raises
    ------
    InputError
        A part of the key names a field that is not a section; the message starts with ``source``.
    """
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"{source}: {key}: {part} is not a section")
    node[parts[-1]] = value


def resolve_path(value: str | Path, base: Path) -> str:
    """An absolute path: ``~`` and ``$VARS`` expanded, relative paths taken from ``base``."""
    return os.path.normpath(base / Path(os.path.expandvars(str(value))).expanduser())


def resolve_model_path(value: str, base: Path) -> str:
    """A ``segment.model`` value: a path (has a slash, or names a file beside the config) made
    absolute with :func:`resolve_path`; a built-in model name unchanged."""
    if "/" in value or "\\" in value or (base / value).exists():
        return resolve_path(value, base)
    return value


def resolve_config_paths(raw: dict, base: Path) -> None:
    """Make the run config's paths absolute (:func:`resolve_path`), relative to ``base``."""
    for section, field in (("input", "path"), ("output", "dir")):
        node = raw.get(section)
        if isinstance(node, dict) and node.get(field):
            node[field] = resolve_path(node[field], base)
    segment = raw.get("segment")
    if isinstance(segment, dict) and isinstance(segment.get("model"), str):
        segment["model"] = resolve_model_path(segment["model"], base)


def format_validation_error(exc: ValidationError, source: str, *, root: type[BaseModel] | None = None,
                            what: str = "config") -> str:
    """Turn pydantic errors into lines naming the file, the field and the fix.

    Parameters
    ----------
    exc
        The validation error.
    source
        The file (and what in it) that was validated, for the first line.
    root
        The model that was validated (default: RunConfig), to list the allowed fields.
    what
        What the file is ("config", "batch config").
    """
    lines = [f"{source}: invalid {what}"]
    for err in exc.errors():
        loc = err["loc"]
        field = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown field; {_allowed_fields(root or RunConfig, loc)}")
        elif err["type"] == "missing":
            lines.append(f"  {field}: required field is missing")
        elif err["type"] == "value_error":  # a validator's own message says what is wrong
            lines.append(f"  {field}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {field}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _allowed_fields(root: type[BaseModel], loc: tuple) -> str:
    """The fields allowed where ``loc`` points (list items and optional sections followed)."""
    model = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part))
        annotation = info.annotation if info else None
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return "check the spelling"
    return "allowed: " + ", ".join(model.model_fields)


def config_reference(model: type[BaseModel] = RunConfig, prefix: str = "") -> str:
    """Markdown reference of every config field: name, type, default, description.

    ``configs/REFERENCE.md`` is this text (a test keeps it up to date).
    """
    if not prefix:
        lines = ["# Run config reference", "",
                 "Generated from the pydantic models (`pipeline.run.config.config_reference`); every field of",
                 "a run config, by section. Units are in the names (`_um`, `_s`, `_per_min`). Unknown fields",
                 "are errors. Override any field with `--set section.field=value`.", ""]
    else:
        lines = []
    rows, sections = [], []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections.append((f"{prefix}{name}", annotation))
            continue
        default = "required" if field.is_required() else f"`{_plain(field.default)}`"
        if get_origin(annotation) is Literal:
            kind = "one of " + ", ".join(_plain(v) for v in get_args(annotation))
        else:
            kind = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        cells = [f"`{name}`", kind, default, (field.description or "").replace("\n", " ")]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if rows:
        lines += [f"## `{prefix.rstrip('.') or 'run'}`", "", "| field | type | default | what it is |",
                  "|---|---|---|---|", *rows, ""]
    for name, section in sections:
        lines.append(config_reference(section, f"{name}.").rstrip("\n") + "\n")
    return "\n".join(lines).rstrip("\n") + "\n"


def _plain(value) -> str:
    """A default value as it would be written in YAML."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BaseModel):
        return "{...}"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def config_from_dict(raw: dict[str, Any], *, base: Path, source: str) -> RunConfig:
    """Validate a raw config dict; relative paths are taken relative to ``base``."""
    resolve_config_paths(raw, base)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, source)) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read, override and validate a run config YAML file.

    Parameters
    ----------
    path
        YAML file.
    overrides
        ``key.sub=value`` strings (``--set`` on the command line).

    Returns
    -------
    RunConfig

    Raises
    ------
    InputError
        Missing or unreadable file, bad YAML, or invalid fields (all listed).
    """
    path = Path(path)
    raw = read_yaml_mapping(path, overrides, what="config",
                            sections="input:, segment:, detect:, ...")
    return config_from_dict(raw, base=path.resolve().parent, source=str(path))


def read_yaml_mapping(path: Path, overrides: Sequence[str], *, what: str, sections: str) -> dict:
    """A YAML file's top-level mapping with ``--set`` overrides applied.

    Parameters
    ----------
    path
        YAML file.
    overrides
        ``key.sub=value`` strings.
    what
        What the file is, for error messages ("config", "batch config").
    sections
        The sections it holds, named in the error when the file is not a mapping.

    Raises
    ------
    InputError
        Missing or unreadable file, bad YAML, not a mapping, or a bad override.
    """
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: a {what} is a mapping of sections ({sections})")
    return apply_overrides(raw, list(overrides), str(path))


def dump_config(config: RunConfig) -> dict:
    """The config as plain JSON-able data (for the store's attrs and saved YAML)."""
    return config.model_dump(mode="json")
