"""Write one Zarr v3 store per movie (layout: docs/DESIGN.md, "Store"; read it with `pipeline.io.results`).

Layout::

    <name>.zarr/             root attributes: uptrack_version, config, input_path,
                             input_checksum, pixel_size_um, frame_interval_s,
                             channel_names, stages_completed, complete, created, updated;
                             ``ome``: NGFF 0.5 multiscales + omero of the movie image
      0                      the movie (t, c, [z,] y, x), full size or binned n x n
                             (config output.image_downsample), written by the export stage
      tables/<name>.parquet  one Parquet file per table
      labels/cells           NGFF 0.5 label image (t, [z,] y, x), uint32, level "0",
                             image-label colours + cell_id per label, source ../../
      kinetics               xarray Dataset (cell_id x frame), written by ``to_zarr``
      tracks.geff            GEFF graph of the particle tracks, Zarr v3
      .tmp/                  work area of unfinished writes (no Zarr metadata; ignored)

Tables
    Plain Parquet files (pyarrow), read by pandas, polars, R (arrow) and DuckDB with no
    uptrack code: ``pd.read_parquet("movie.zarr/tables/particles.parquet")``. Numeric
    and bool columns keep their numpy dtype; string columns stay strings (the words of
    pipeline/vocabulary.py), ``category`` columns are Parquet dictionaries. Each field's
    metadata holds its ``unit`` (from the column-name suffix, where known); the schema
    metadata ``uptrack`` (JSON) holds ``columns``, ``dtypes`` (pandas), ``units`` and
    ``n_rows``. The index is not stored. Stores written before (tables as Zarr groups of
    columns, strings as integer codes) are still read; `migrate_tables` (``uptrack
    migrate``) rewrites them.

Movie image
    The root is an OME-Zarr image so that OME-Zarr readers open the store with its
    labels over the movie. Copying the movie doubles the disk used; for movies of tens
    of GB set ``output.image_downsample`` (2: a quarter of the size, 4: a sixteenth): the
    scale then says ``pixel_size_um x n`` µm per pixel and the full-size labels still
    line up in physical units. Metadata is built with ome-zarr-models (validated when
    written).

Atomicity
    Tables, kinetics and the GEFF graph are written in full under ``.tmp/`` and then
    renamed into place (a directory rename on one file system). A killed write leaves
    the previous version, or nothing, under the real name; a replaced version is
    renamed aside before the new one is moved in. Labels are written frame by frame
    in place and are trusted only once their stage is marked done. Attribute updates
    rewrite ``zarr.json`` atomically (zarr's local store writes then renames).
    ``complete`` stays false until `mark_complete`.

GEFF
    geff 1.3 writes Zarr v2 by default and v3 on request; the graph is written as
    Zarr v3 so the store stays one v3 hierarchy. Nodes are the rows of the particles
    table (node id = row number) with every column as a property (``frame`` renamed
    ``t``); edges join consecutive detections of a track (``gap_frames``,
    ``gap_closed``, ``step_um``). Text columns are int8 codes with the mapping in
    the property description and ``extra.uptrack.categories`` (no fixed-length
    unicode arrays: napari-geff and non-Python Zarr readers cannot load them); every
    property has a unit and a description; ``related_objects`` links ``cell_id`` to
    ``labels/cells``. ``curated/tracks.geff`` is the same graph with the reviewer's
    corrections (written with the curated tables).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr
import zarr
from geff.core_io import write_arrays
from geff_spec import Axis, GeffMetadata, PropMetadata
from ome_zarr_models.common.omero import Channel as OmeroChannel
from ome_zarr_models.common.omero import Omero
from ome_zarr_models.common.omero import Window as OmeroWindow
from ome_zarr_models.v05.axes import Axis as NgffAxis
from ome_zarr_models.v05.image import ImageAttrs
from ome_zarr_models.v05.image_label import ImageLabelAttrs
from ome_zarr_models.v05.image_label_types import Label as NgffLabel
from ome_zarr_models.v05.multiscales import Dataset as NgffDataset
from ome_zarr_models.v05.multiscales import Multiscale

from pipeline import __version__
from pipeline.errors import InputError
from pipeline.vocabulary import BACKGROUND as BACKGROUND_LABEL
from pipeline.vocabulary import STATES, ZONES

#: Root attribute that marks a directory as an uptrack store.
MARKER = "uptrack_version"
#: Root attributes `create_store` needs from its caller.
REQUIRED_ATTRS = ("pixel_size_um", "frame_interval_s")
TABLES = "tables"
LABELS = "labels/cells"
KINETICS = "kinetics"
GEFF = "tracks.geff"
#: File suffix of a table: ``tables/particles.parquet``.
TABLE_SUFFIX = ".parquet"
_TMP = ".tmp"

#: Column-name suffix -> unit, checked in order.
_UNIT_SUFFIXES = (
    ("_per_min", "1/min"),
    ("_um2", "µm²"),
    ("_um", "µm"),
    ("_min", "min"),
    ("_s", "s"),
)
#: Whole column name -> unit (trackpy's pixel columns).
_UNIT_COLUMNS = {"frame": "frame", "x": "px", "y": "px", "z": "px", "size": "px", "ep": "px"}


# --- store and attributes -----------------------------------------------------


def create_store(path: str | Path, *, attrs: dict, overwrite: bool = False) -> Path:
    """Create an empty store (attributes, ``tables`` group) and return its path.

    Parameters
    ----------
    path : str or Path
        The ``<name>.zarr`` directory to create.
    attrs : dict
        JSON-serialisable root attributes; must hold ``pixel_size_um`` (µm) and
        ``frame_interval_s`` (s). Usually also ``config``, ``input_path``,
        ``input_checksum``, ``channel_names`` and, for 3-D movies, ``z_step_um``.
    overwrite : bool
        Replace an existing complete store. An incomplete store is always replaced.

    Raises
    ------
    InputError
        If ``path`` exists and is neither empty nor an uptrack store (it is never
        deleted), or holds a complete store and ``overwrite`` is false.
    """
    path = Path(path)
    missing = [key for key in REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise ValueError(f"create_store: attrs lack {missing}")
    if path.is_file() or (path.exists() and any(path.iterdir())):
        _remove_old_store(path, overwrite)
    root = zarr.open_group(path, mode="w", zarr_format=3)
    now = utc_now()
    root.attrs.put(
        {
            **attrs,
            MARKER: __version__,
            "stages_completed": [],
            "complete": False,
            "created": now,
            "updated": now,
        }
    )
    root.create_group(TABLES)
    return path


def _remove_old_store(path: Path, overwrite: bool) -> None:
    """Delete a previous uptrack store at ``path``, refusing anything else."""
    try:
        attrs = read_attrs(path)
    except InputError:
        raise InputError(
            f"{path} exists and is not an uptrack store; refusing to overwrite it. "
            "Choose another output path."
        ) from None
    if attrs.get("complete") and not overwrite:
        raise InputError(
            f"{path} already holds a complete uptrack store; refusing to replace it. "
            "Choose another output path or overwrite it (overwrite=True)."
        )
    shutil.rmtree(path)


def probe(path: str | Path) -> str:
    """What is at ``path``: ``"none"`` (nothing, or an empty folder), ``"interrupted"`` (a store whose
    creation was killed before its attributes were written: safe to replace), ``"store"`` (an
    uptrack store: :func:`read_attrs` reads it) or ``"foreign"`` (anything else)."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        return "foreign" if path.exists() and any(path.iterdir()) else "none"
    try:
        read_attrs(path)
    except InputError:
        return "interrupted" if _interrupted_creation(path) else "foreign"
    return "store"


def has_table(path: str | Path, name: str, *, group: str = TABLES) -> bool:
    """Whether the store holds table ``name`` in ``group`` (Parquet, or the previous Zarr format)."""
    return table_file(path, name, group=group).exists() or is_legacy_table(path, name, group=group)


def _interrupted_creation(path: Path) -> bool:
    """A store whose creation was killed before its attributes were written.

    `create_store` makes the Zarr group, then writes the attributes: in between,
    the directory holds only an attribute-less ``zarr.json`` (and maybe an empty
    ``tables`` group). Nothing else looks like that, so it is safe to replace.
    """
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    if meta.get("attributes") or meta.get("node_type") != "group":
        return False
    entries = {p.name for p in path.iterdir()}
    tables = path / "tables"
    return entries <= {"zarr.json", "tables"} and (
        not tables.exists() or {p.name for p in tables.iterdir()} <= {"zarr.json"})


def read_attrs(path: str | Path) -> dict:
    """Root attributes of an uptrack store.

    Raises
    ------
    InputError
        If ``path`` does not exist or is not an uptrack store.
    """
    try:
        attrs = zarr.open_group(path, mode="r", zarr_format=3).attrs.asdict()
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: no uptrack store there ({exc})") from exc
    if MARKER not in attrs:
        raise InputError(
            f"{path} is a Zarr group but not an uptrack store (no {MARKER!r} attribute)"
        )
    return attrs


def update_attrs(path: str | Path, **values) -> None:
    """Set root attributes (JSON-serialisable values) and the ``updated`` timestamp."""
    read_attrs(path)
    zarr.open_group(path, mode="r+", zarr_format=3).attrs.update({**values, "updated": utc_now()})


def read_group_attrs(path: str | Path, group: str) -> dict:
    """Attributes of a group inside a store (empty when the group does not exist)."""
    target = Path(path) / group
    if not (target / "zarr.json").exists():
        return {}
    return zarr.open_group(target, mode="r", zarr_format=3).attrs.asdict()


def update_group_attrs(path: str | Path, group: str, *, remove: tuple[str, ...] = (), **values) -> None:
    """Set (and first remove) attributes of a group inside a store, creating the group if needed."""
    node = zarr.open_group(path, mode="r+", zarr_format=3).require_group(group)
    for key in remove:
        node.attrs.pop(key, None)
    if values:
        node.attrs.update(values)


def stages_done(path: str | Path) -> list[str]:
    """Names of the stages whose outputs are in the store, in the order they finished."""
    return list(read_attrs(path)["stages_completed"])


def mark_stage_done(path: str | Path, stage: str, seconds: float | None = None) -> None:
    """Record that ``stage`` finished (and how long it took, s) in one attribute write.

    Call only after its outputs are written. The stage list and its timing are written together,
    so a process killed at any point never leaves a finished stage without its time.
    """
    attrs = read_attrs(path)
    stages = list(attrs["stages_completed"])
    values = {} if stage in stages else {"stages_completed": [*stages, stage]}
    if seconds is not None:
        values["stage_seconds"] = {**attrs.get("stage_seconds", {}), stage: round(float(seconds), 2)}
    if values:
        update_attrs(path, **values)


def mark_complete(path: str | Path) -> None:
    """Mark the store complete (`pipeline.io.results.load_results` then reads it) and drop ``.tmp``."""
    shutil.rmtree(Path(path) / _TMP, ignore_errors=True)
    update_attrs(path, complete=True)


def utc_now() -> str:
    """Current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- atomic writes --------------------------------------------------------------


@contextmanager
def _staged(path: Path, target: str) -> Iterator[Path]:
    """Yield a fresh path under ``.tmp``; once written, move it to ``path/target``."""
    read_attrs(path)
    parent = target.rpartition("/")[0]
    if parent:
        zarr.open_group(path, mode="r+", zarr_format=3).require_group(parent)
    (path / _TMP).mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=path / _TMP, prefix=target.replace("/", "_") + "-"))
    try:
        yield work / "new"
        _replace_dir(work / "new", path / target, aside=work / "old")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with suppress(OSError):  # leave no empty work area: zarr would list it as a node
            (path / _TMP).rmdir()


def _replace_dir(new: Path, target: Path, aside: Path) -> None:
    """Rename ``new`` to ``target``; a previous ``target`` is first renamed to ``aside``."""
    if target.exists():
        os.replace(target, aside)
    os.replace(new, target)


# --- tables ----------------------------------------------------------------------


def write_table(path: str | Path, name: str, df: pd.DataFrame, *, group: str = TABLES) -> None:
    """Write a DataFrame as ``<group>/<name>.parquet``, atomically, replacing any previous version.

    Parameters
    ----------
    path : str or Path
        The store.
    name : str
        Table name, e.g. ``"particles"``.
    df : pandas.DataFrame
        Columns with string names; numpy numeric/bool, string or category dtypes.
        The index is not stored.
    group : str
        Group holding the table (``"tables"``; also ``"curation"``, ``"curated"``).

    Notes
    -----
    The file is plain Parquet (pyarrow): pandas, polars, R (arrow) and DuckDB read it with
    no uptrack code. Each field's metadata holds its ``unit`` (from the column-name suffix,
    where known); the schema metadata ``uptrack`` holds the table name, ``units``,
    ``dtypes`` and ``n_rows`` (JSON). A table in the previous format (a Zarr group of
    columns) under the same name is removed once the Parquet file is in place.
    """
    path = Path(path)
    columns = [str(c) for c in df.columns]
    if (
        columns != list(df.columns)
        or len(set(columns)) != len(columns)
        or any("/" in c for c in columns)
    ):
        raise ValueError(f"table {name!r}: column names must be unique strings without '/'")
    for column in columns:
        _check_column(df[column])
    table = pa.Table.from_pandas(df, preserve_index=False)
    units = {c: unit for c in columns if (unit := column_unit(c))}
    table = table.cast(pa.schema(
        [field.with_metadata({"unit": units[field.name]}) if field.name in units else field for field in table.schema],
        metadata={**(table.schema.metadata or {}), b"uptrack": json.dumps({
            "table": name, "columns": columns, "dtypes": {c: str(df[c].dtype) for c in columns},
            "units": units, "n_rows": len(df), "uptrack_version": __version__}).encode()},
    ))
    with _staged(path, f"{group}/{name}{TABLE_SUFFIX}") as tmp:
        pq.write_table(table, tmp)
    shutil.rmtree(path / group / name, ignore_errors=True)  # the previous (Zarr) format


def table_file(path: str | Path, name: str, *, group: str = TABLES) -> Path:
    """Path of the Parquet file of table ``<group>/<name>`` (whether or not it exists)."""
    return Path(path) / group / f"{name}{TABLE_SUFFIX}"


def is_legacy_table(path: str | Path, name: str, *, group: str = TABLES) -> bool:
    """Whether ``<group>/<name>`` is in the format before Parquet (a Zarr group of columns)."""
    return (Path(path) / group / name / "zarr.json").exists()


def table_names(path: str | Path, group: str = TABLES) -> list[str]:
    """Names of the tables in ``group`` (either format), sorted."""
    folder = Path(path) / group
    parquet = {p.name.removesuffix(TABLE_SUFFIX) for p in folder.glob(f"*{TABLE_SUFFIX}")}
    legacy = {p.parent.name for p in folder.glob("*/zarr.json") if "columns" in _json_attrs(p)}
    return sorted(parquet | legacy)


def _json_attrs(zarr_json: Path) -> dict:
    """The ``attributes`` of a ``zarr.json`` file (empty if unreadable)."""
    try:
        return json.loads(zarr_json.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return {}


def migrate_tables(path: str | Path) -> list[str]:
    """Rewrite every table of a store in the previous format (Zarr groups of columns) as Parquet.

    Stores written before tables became Parquet (uptrack 0.1.0 until this change) kept each table as a Zarr group with one array per
    column (strings as integer codes); they are read as they are, and this makes them
    readable without uptrack. Safe to rerun: tables already in Parquet are left alone.

    Returns
    -------
    list of str
        The ``group/name`` of each table migrated.
    """
    from pipeline.io.results import read_table  # results reads both formats; it imports this module

    path = Path(path)
    read_attrs(path)
    done = []
    for zarr_json in sorted(path.rglob("zarr.json")):
        folder = zarr_json.parent
        if folder == path or "columns" not in _json_attrs(zarr_json) or _TMP in folder.relative_to(path).parts:
            continue
        group, name = str(folder.parent.relative_to(path)), folder.name
        write_table(path, name, read_table(path, name, group=group), group=group)
        done.append(f"{group}/{name}")
    return done


def _check_column(series: pd.Series) -> None:
    """Refuse a column whose dtype the store does not keep exactly."""
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype) or _holds_strings(series):
        return
    if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
        return
    raise TypeError(
        f"column {series.name!r}: dtype {dtype} cannot be stored; use a numpy numeric or "
        "bool, string or category dtype"
    )


def _holds_strings(series: pd.Series) -> bool:
    """True for string dtypes and for object columns of strings (missing values allowed)."""
    if isinstance(series.dtype, pd.StringDtype):
        return True
    return series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) in (
        "string",
        "empty",
    )


def column_unit(column: str) -> str | None:
    """Unit of a table column from its name (``"distance_um"`` -> ``"µm"``), or None."""
    if column in _UNIT_COLUMNS:
        return _UNIT_COLUMNS[column]
    return next((unit for suffix, unit in _UNIT_SUFFIXES if column.endswith(suffix)), None)


# --- labels ------------------------------------------------------------------------


def create_labels(path: str | Path, shape: tuple[int, ...], *, name: str = "cells") -> zarr.Array:
    """Create an empty label image ``labels/<name>`` and return its level-0 array.

    ``labels/cells`` holds the stable cell ids; the runner also keeps Cellpose's
    per-frame output in ``labels/segmentation`` (ids not yet matched across frames).

    Parameters
    ----------
    path : str or Path
        The store; its ``pixel_size_um``, ``frame_interval_s`` (and ``z_step_um`` for
        3-D) attributes set the NGFF scale.
    shape : tuple of int
        (t, y, x) or (t, z, y, x). The array is uint32, one chunk per frame and plane,
        filled with 0 (background); a previous label image is replaced.
    """
    attrs = read_attrs(path)
    axes = {3: "tyx", 4: "tzyx"}.get(len(shape))
    if axes is None:
        raise ValueError(f"labels must be (t, y, x) or (t, z, y, x), got shape {shape}")
    if "z" in axes and attrs.get("z_step_um") is None:
        raise ValueError("3-D labels need the store attribute z_step_um")
    root = zarr.open_group(path, mode="r+", zarr_format=3)
    labels = root.require_group("labels")
    names = labels.attrs.get("ome", {}).get("labels", [])
    labels.attrs["ome"] = {"version": "0.5", "labels": sorted({*names, name})}
    image = labels.create_group(name, overwrite=True)
    image.attrs["ome"] = _ngff_label_attrs(axes, attrs, name)
    return image.create_array(
        "0",
        shape=tuple(shape),
        dtype="uint32",
        chunks=(1,) * (len(shape) - 2) + tuple(shape[-2:]),
        fill_value=0,
        dimension_names=list(axes),
        compressors=checked_compressor(),
    )


def _ngff_axes(axes: str) -> list[NgffAxis]:
    """NGFF axes: t in s, c a channel axis, z/y/x in µm."""
    kinds = {"t": ("time", "second"), "c": ("channel", None)}
    return [NgffAxis(name=ax, type=kinds.get(ax, ("space",))[0], unit=kinds.get(ax, (None, "micrometer"))[1])
            for ax in axes]


def _ngff_scale(axes: str, attrs: dict, factor: int = 1) -> list[float]:
    """Scale of each axis: s per frame, 1 per channel, µm per plane / per (binned) pixel."""
    scale = {"t": attrs["frame_interval_s"], "c": 1.0, "z": attrs.get("z_step_um")}
    scale["y"] = scale["x"] = attrs["pixel_size_um"] * factor
    return [float(scale[ax]) for ax in axes]


def _ngff_label_attrs(axes: str, attrs: dict, name: str, image_label: dict | None = None) -> dict:
    """NGFF 0.5 multiscales + image-label metadata (built and checked with ome-zarr-models)."""
    multiscale = Multiscale(axes=_ngff_axes(axes), name=name,
                            datasets=[NgffDataset.build(path="0", scale=_ngff_scale(axes, attrs), translation=None)])
    label = NgffLabel(**(image_label or {"colors": [{"label-value": 0, "rgba": [0, 0, 0, 0]}]}),
                      source={"image": "../../"}, version="0.5")
    model = ImageLabelAttrs(version="0.5", multiscales=[multiscale], image_label=label)
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def label_colors(path: str | Path, *, name: str = "cells") -> int:
    """Give every label value of ``labels/<name>`` a colour and a ``cell_id`` property in its NGFF metadata.

    Call once the label image is written (the runner does it in the export stage). Colours are
    fixed by the id (golden-ratio hues), so a cell keeps its colour between stores and viewers.

    Returns
    -------
    int
        Number of label values described (background 0 excluded).
    """
    array = open_labels(path, name=name)
    found: set[int] = set()
    for t in range(array.shape[0]):  # one frame in memory at a time
        found.update(np.unique(array[t]).tolist())
    ids = sorted(found - {BACKGROUND_LABEL})
    colors = [{"label-value": 0, "rgba": [0, 0, 0, 0]}] + [{"label-value": i, "rgba": _id_rgba(i)} for i in ids]
    image = zarr.open_group(Path(path) / "labels" / name, mode="r+", zarr_format=3)
    axes = "".join(array.metadata.dimension_names)
    image.attrs["ome"] = _ngff_label_attrs(axes, read_attrs(path), name, {
        "colors": colors, "properties": [{"label-value": i, "cell_id": i} for i in [BACKGROUND_LABEL, *ids]]})
    return len(ids)


def _id_rgba(label: int) -> list[int]:
    """An opaque colour for a label id (hue by the golden ratio, so neighbours' ids differ)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.75, 0.95)
    return [round(r * 255), round(g * 255), round(b * 255), 255]


# --- the movie as the store's OME-Zarr image ------------------------------------------------


def write_image(path: str | Path, data, *, channel_names: list[str], downsample: int = 1) -> tuple[int, ...]:
    """Write the movie as the store root's OME-Zarr (NGFF 0.5) multiscale image, array ``0``.

    The store root then opens as an image in OME-Zarr readers (ome-zarr-py, napari-ome-zarr,
    Fiji's OME-Zarr readers), with the label images under ``labels/`` drawn over it.

    Parameters
    ----------
    path : str or Path
        The store; ``pixel_size_um`` and ``frame_interval_s`` attributes give the scales.
    data : array-like
        The movie, (t, c, z, y, x) as `pipeline.io.movie.Movie.data` (lazy dask is read one
        frame and channel at a time); a single plane is stored as (t, c, y, x).
    channel_names : list of str
        One name per channel (NGFF ``omero.channels[].label``).
    downsample : int
        1: a full-resolution copy. n > 1: y and x binned n × n (mean, the input dtype kept), for
        movies too big to copy (tens of GB: 2 quarters, 4 sixteenths the size); the scale says
        ``pixel_size_um × n`` µm per pixel, so the full-resolution labels still line up in
        physical units.

    Returns
    -------
    tuple of int
        Shape of the array written.
    """
    attrs = read_attrs(path)
    movie = da.asarray(data)
    if movie.ndim != 5:
        raise ValueError(f"write_image: the movie must be (t, c, z, y, x), got {movie.ndim} dimensions")
    if len(channel_names) != movie.shape[1]:
        raise ValueError(f"write_image: {len(channel_names)} channel names for {movie.shape[1]} channels")
    if downsample < 1:
        raise ValueError(f"write_image: downsample must be >= 1, got {downsample}")
    axes = "tczyx"
    if movie.shape[2] == 1:
        movie, axes = movie[:, :, 0], "tcyx"
    if downsample > 1:
        binned = da.coarsen(np.mean, movie, {movie.ndim - 2: downsample, movie.ndim - 1: downsample}, trim_excess=True)
        movie = binned.astype(movie.dtype) if movie.dtype.kind in "f" else da.round(binned).astype(movie.dtype)
    root = zarr.open_group(path, mode="r+", zarr_format=3)
    chunks = (1,) * (movie.ndim - 2) + tuple(movie.shape[-2:])
    array = root.create_array("0", shape=movie.shape, dtype=movie.dtype, chunks=chunks, fill_value=0,
                              dimension_names=list(axes), overwrite=True, compressors=checked_compressor())
    da.store(movie.rechunk(chunks), array, lock=False)
    multiscale = Multiscale(axes=_ngff_axes(axes), name=Path(path).stem, datasets=[
        NgffDataset.build(path="0", scale=_ngff_scale(axes, attrs, downsample), translation=None)],
        metadata={"downsample_yx": downsample, "method": "mean" if downsample > 1 else "copy"})
    first = movie[0].compute()
    channels = [_omero_channel(str(label), first[c], index) for index, (c, label) in
                enumerate(zip(range(movie.shape[1]), channel_names))]
    image = ImageAttrs(version="0.5", multiscales=[multiscale], omero=Omero(channels=channels))
    root.attrs["ome"] = image.model_dump(mode="json", by_alias=True, exclude_none=True)
    return tuple(movie.shape)


_CHANNEL_COLORS = ("FFFFFF", "00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF")


def _omero_channel(label: str, first_frame: np.ndarray, index: int) -> OmeroChannel:
    """OMERO channel metadata: name, colour, display window from the first frame's range."""
    low, high = float(np.min(first_frame)), float(np.max(first_frame))
    return OmeroChannel(label=label, color=_CHANNEL_COLORS[index % len(_CHANNEL_COLORS)], active=True,
                        window=OmeroWindow(min=low, max=high if high > low else low + 1, start=low,
                                           end=high if high > low else low + 1))


def open_labels(path: str | Path, *, name: str = "cells", mode: str = "r") -> zarr.Array:
    """The level-0 array of label image ``labels/<name>`` (``mode="r+"`` to write)."""
    return zarr.open_array(Path(path) / "labels" / name / "0", mode=mode, zarr_format=3)


def write_label_frames(path: str | Path, start: int, frames: np.ndarray, *, name: str = "cells") -> None:
    """Write frames ``start, start + 1, ...`` of a label image made by `create_labels`.

    Parameters
    ----------
    frames : numpy.ndarray
        (n, y, x) or (n, z, y, x) cell ids; cast to uint32.
    name : str
        Label image under ``labels/``.
    """
    array = open_labels(path, name=name, mode="r+")
    array[start : start + len(frames)] = np.asarray(frames, dtype=np.uint32)


def write_labels(path: str | Path, labels) -> None:
    """Write a whole label image chunk by chunk, one chunk per frame (and plane).

    A dask array is computed and written one chunk at a time, never as a whole.

    Parameters
    ----------
    labels : numpy.ndarray or dask.array.Array
        (t, y, x) or (t, z, y, x) cell ids.
    """
    array = create_labels(path, labels.shape)
    frames = da.asarray(labels).astype(np.uint32).rechunk(array.chunks)
    da.store(frames, array, lock=False)


def checked_compressor():
    """Zarr's default compressor (zstd, level 0) with its content checksum on: a damaged chunk is a
    decoding error, never silently different numbers (small chunks are stored as raw zstd blocks,
    which decode whatever their bytes are)."""
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=0, checksum=True)


# --- kinetics and tracks -------------------------------------------------------------


def write_kinetics(path: str | Path, ds: xr.Dataset, *, name: str = KINETICS) -> None:
    """Write a per-cell kinetics Dataset (dims cell_id x frame) atomically to ``name``."""
    with _staged(Path(path), name) as tmp:
        encoding = {name: {"compressors": checked_compressor()} for name in ds.variables}
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, encoding=encoding)


#: Node property -> (unit, description) of the GEFF graph; the unit "1" marks a dimensionless
#: number or an id. Columns not listed get their unit from the name (`column_unit`).
GEFF_NODE_PROPS = {
    "t": ("frame", "frame index (0-based); times: the t axis scale, s per frame"),
    "z": ("pixel", "position along z, planes (sub-pixel)"),
    "y": ("pixel", "position along y, px (sub-pixel)"),
    "x": ("pixel", "position along x, px (sub-pixel)"),
    "mass": ("counts", "integrated brightness (trackpy mass), image units"),
    "size": ("pixel", "radius of gyration of the spot (trackpy size), px"),
    "ecc": ("1", "eccentricity of the spot (0: round)"),
    "signal": ("counts", "peak brightness above background (trackpy signal), image units"),
    "raw_mass": ("counts", "integrated brightness of the raw image (trackpy raw_mass), image units"),
    "ep": ("pixel", "localisation error estimate, px"),
    "size_um": ("micrometer", "Gaussian sigma of the object's image, µm"),
    "integrated_intensity": ("counts", "background-subtracted sum of the object's pixels, image units"),
    "track_id": ("1", "particle track id (>= 0)"),
    "cell_id": ("1", "cell the detection belongs to or is nearest to: label value in labels/cells (0: none)"),
    "distance_um": ("micrometer", "signed distance to the cell's membrane, µm (negative inside)"),
    "zone": ("1", "zone of the detection"),
    "state": ("1", "state of the particle at this frame"),
}
#: Edge property -> (unit, description).
GEFF_EDGE_PROPS = {
    "gap_frames": ("frame", "frames missing between the two detections (0: consecutive frames)"),
    "gap_closed": ("1", "true when the link bridges a gap (gap_frames > 0), closed by the linker"),
    "step_um": ("micrometer", "distance between the two detections in y, x, µm"),
}
_GEFF_UNITS = {"µm": "micrometer", "µm²": "micrometer^2", "s": "second", "min": "minute", "1/min": "1/minute",
               "px": "pixel", "frame": "frame"}


def write_geff(
    path: str | Path,
    particles: pd.DataFrame,
    pixel_size_um: float,
    frame_interval_s: float,
    *,
    z_step_um: float | None = None,
    name: str = GEFF,
) -> None:
    """Write the particle tracks as a GEFF graph, atomically, to ``name`` (``tracks.geff``).

    Parameters
    ----------
    path : str or Path
        The store.
    particles : pandas.DataFrame
        The particles table; needs ``frame``, ``y``, ``x`` (px) and ``track_id``.
        Node id = row number; every column becomes a node property (``frame`` as ``t``).
    pixel_size_um : float
        Scale of the y, x axes, µm per px.
    frame_interval_s : float
        Scale of the t axis, s per frame.
    z_step_um : float, optional
        Scale of the z axis, µm per plane, when particles have a ``z`` column.
    name : str
        Path of the graph in the store (``curated/tracks.geff`` for the curated one).

    Notes
    -----
    Readable beyond geff-python (napari-geff, Java Zarr readers): no text arrays. Text
    columns (``state``, ``zone``) are int8 codes (``-1`` and the ``missing`` mask: no
    value); the code -> name mapping is in the property's description and in
    ``extra["uptrack"]["categories"]`` (for ``state`` and ``zone`` the order of
    :data:`pipeline.vocabulary.STATES` / ``ZONES``, the same in every store). Every
    property has a unit (``"1"``: dimensionless or an id) and a description. Edges
    carry ``gap_frames``, ``gap_closed`` and ``step_um``. ``related_objects`` points at
    the level-0 array of ``labels/cells``, whose values are the ``cell_id`` property.
    """
    missing = {"frame", "y", "x", "track_id"} - set(particles.columns)
    if missing:
        raise ValueError(f"write_geff: particles lack columns {sorted(missing)}")
    particles = particles.reset_index(drop=True)
    props, categories = {}, {}
    for column in particles.columns:
        prop = "t" if column == "frame" else column
        props[prop], codes = _geff_prop(particles[column])
        if codes is not None:
            categories[prop] = codes
    edges = _track_edges(particles)
    scales = {"z": z_step_um, "y": pixel_size_um, "x": pixel_size_um}
    depth = name.count("/") + 1
    metadata = GeffMetadata(
        directed=True,
        axes=[
            Axis(name="t", type="time", unit="frame", scale=frame_interval_s, scaled_unit="second")
        ]
        + [
            Axis(name=ax, type="space", unit="pixel", scale=scale, scaled_unit="micrometer")
            for ax, scale in scales.items()
            if ax in particles.columns
        ],
        track_node_props={"tracklet": "track_id"},
        node_props_metadata={prop: _geff_prop_metadata(prop, values["values"], categories.get(prop))
                             for prop, values in props.items()},
        edge_props_metadata={},
        related_objects=[{"type": "labels", "path": "../" * depth + f"{LABELS}/0", "node_prop": "cell_id"}]
        if (Path(path) / LABELS / "0" / "zarr.json").exists() and "cell_id" in particles.columns else None,
        extra={"uptrack": {"categories": categories, "missing_code": -1, "uptrack_version": __version__}},
    )
    edge_props = _geff_edge_props(particles, edges, pixel_size_um)
    metadata.edge_props_metadata = {prop: _geff_prop_metadata(prop, values["values"], None, GEFF_EDGE_PROPS)
                                    for prop, values in edge_props.items()}
    node_ids = np.arange(len(particles), dtype=np.uint64)
    with _staged(Path(path), name) as tmp:
        write_arrays(tmp, node_ids, props, edges, edge_props, metadata, zarr_format=3)


def _geff_prop(series: pd.Series) -> tuple[dict, list[str] | None]:
    """GEFF property arrays (values, missing) of a column, and the code names of a text column."""
    if pd.api.types.is_bool_dtype(series.dtype) or (
            isinstance(series.dtype, np.dtype) and series.dtype.kind in "biuf"):
        return {"values": series.to_numpy(), "missing": None}, None
    vocabulary = {"state": STATES, "zone": ZONES}.get(str(series.name))
    text = series.astype(object)
    names = list(vocabulary) if vocabulary else sorted({str(v) for v in text.dropna()})
    codes = pd.Categorical(text, categories=names).codes.astype(np.int8 if len(names) < 128 else np.int32)
    unknown = text.notna().to_numpy() & (codes < 0)
    if unknown.any():
        raise ValueError(f"write_geff: column {series.name!r} has values outside {names}: "
                         f"{sorted(set(text[unknown]))}")
    missing = codes < 0
    return {"values": codes, "missing": missing if missing.any() else None}, names


def _geff_prop_metadata(prop: str, values: np.ndarray, names: list[str] | None,
                        known: dict = GEFF_NODE_PROPS) -> PropMetadata:
    """Unit and description of one GEFF property (codes listed for a text column)."""
    unit, description = known.get(prop, (None, None))
    if unit is None:
        stored = column_unit(prop)
        unit = _GEFF_UNITS.get(stored, stored) if stored else "1"
        description = f"column {prop!r} of the particles table (pipeline/README.md)"
    if names is not None:
        description += "; int code: " + ", ".join(f"{code} = {name}" for code, name in enumerate(names)) + ", -1 = none"
    return PropMetadata(identifier=prop, dtype=values.dtype, unit=unit, description=description)


def _geff_edge_props(particles: pd.DataFrame, edges: np.ndarray, pixel_size_um: float) -> dict:
    """``gap_frames``, ``gap_closed`` and ``step_um`` of each edge."""
    source, target = edges[:, 0].astype(np.intp), edges[:, 1].astype(np.intp)
    frame = particles["frame"].to_numpy()
    gap = (frame[target] - frame[source] - 1).astype(np.int64)
    y, x = particles["y"].to_numpy(float), particles["x"].to_numpy(float)
    step = np.hypot(y[target] - y[source], x[target] - x[source]) * pixel_size_um
    return {"gap_frames": {"values": gap, "missing": None},
            "gap_closed": {"values": gap > 0, "missing": None},
            "step_um": {"values": step, "missing": None}}


def _track_edges(particles: pd.DataFrame) -> np.ndarray:
    """(n, 2) row numbers of consecutive detections of each track (uint64)."""
    track = particles["track_id"].to_numpy()
    order = np.lexsort((particles["frame"].to_numpy(), track))
    same = track[order][1:] == track[order][:-1]
    return np.stack([order[:-1][same], order[1:][same]], axis=1).astype(np.uint64)


def staging_path(path: str | Path) -> Path:
    """Where a run that replaces the complete store at ``path`` writes until it succeeds."""
    path = Path(path)
    return path.with_name(f".{path.name}.replacing")


def swap_in(staged: str | Path, path: str | Path) -> None:
    """Put the finished store ``staged`` at ``path``, removing the store it replaces.

    Two renames on one file system: the old store is moved aside, the new one moved in,
    then the old one deleted; at no moment is there a mixed store at ``path``. Killed
    between the renames, the old store is left as ``.<name>.old`` beside it.
    """
    staged, path = Path(staged), Path(path)
    aside = path.with_name(f".{path.name}.old")
    if aside.exists():
        shutil.rmtree(aside)
    if path.exists():
        path.rename(aside)
    staged.rename(path)
    if aside.exists():
        shutil.rmtree(aside)
