"""Read an uptrack store back: `load_results` and `read_table` (format: `pipeline.io.store`).

Tests, the napari plugin, reports and exports use this API, never private paths.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path

import dask.array as da
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr
import zarr

from pipeline.errors import InputError
from pipeline.io.store import KINETICS, LABELS, TABLES, has_table, is_legacy_table, read_attrs, table_file, table_names
from pipeline.vocabulary import EVENTS, RATES, STATES

log = logging.getLogger(__name__)

#: Group of the tables and kinetics recomputed with the reviewer's corrections
#: (written by `pipeline.io.curation`; its attrs name the curation version applied).
CURATED = "curated"

_I, _F, _S = "int64", "float64", "str"
_RATES = (
    *(column for column, _, _ in RATES),
    "exocytosis_half_life_min",
    "membrane_dwell_min",
)
_CELL_COLUMNS = {
    "cell_id": _I,
    "first_frame": _I,
    "last_frame": _I,
    "mean_area_um2": _F,
    **{f"n_{event}": _I for event in EVENTS},
    "membrane_bound_time_min": _F,
    "vesicular_time_min": _F,
    **{f"{rate}{part}": _F for rate in _RATES for part in ("", "_ci_low", "_ci_high")},
}
#: Documented columns and dtypes of each table (pipeline/README.md), used for the
#: empty tables of a partial store.
TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "particles": {
        "frame": _I,
        **dict.fromkeys(("y", "x", "mass", "size", "ecc", "signal", "raw_mass", "ep"), _F),
        "track_id": _I,
        "cell_id": _I,
        "distance_um": _F,
        "zone": _S,
        "state": _S,
    },
    "tracks": {
        "track_id": _I,
        "first_frame": _I,
        "last_frame": _I,
        "n_detections": _I,
        "cell_id": _I,
        "final_state": _S,
        "mean_mass": _F,
        **{f"n_{state}": _I for state in STATES},
    },
    "events": {"track_id": _I, "cell_id": _I, "frame": _I, "time_s": _F, "kind": _S},
    "cells": _CELL_COLUMNS,
    "movie": _CELL_COLUMNS,
}


def _table_property(name: str, doc: str) -> cached_property:
    """A lazily read table attribute of `Results`."""

    def read(self: Results) -> pd.DataFrame:
        return self._table_or_empty(name)

    read.__doc__ = doc
    return cached_property(read)


class Results:
    """The contents of one store, each part read on first access.

    Attributes
    ----------
    path : pathlib.Path
        The store.
    attrs : dict
        Root attributes (config, input, calibration, stages_completed, complete, ...).
    particles, tracks, events, cells, movie : pandas.DataFrame
        Tables (columns in pipeline/README.md); empty with the documented columns
        when the store does not hold them.
    kinetics : xarray.Dataset
        Per-cell time series (cell_id x frame), lazy; empty if not written.
    cell_labels : dask.array.Array or None
        Cell label image (t, [z,] y, x), lazy; None if not written.
    curation_version : int or None
        Version of the curation record whose corrected tables and kinetics are read
        (``load_results(path, curated=True)`` on a curated store); None: the
        pipeline's own output.
    """

    particles = _table_property("particles", "One row per detection.")
    tracks = _table_property("tracks", "One row per particle track.")
    events = _table_property("events", "One row per state change.")
    cells = _table_property("cells", "Rates and counts, one row per cell.")
    movie = _table_property("movie", "The cells columns pooled over the movie, one row.")

    def __init__(self, path: Path, attrs: dict, *, curation_version: int | None = None):
        self.path = path
        self.attrs = attrs
        self.curation_version = curation_version
        self._tables = TABLES if curation_version is None else CURATED
        self._kinetics = KINETICS if curation_version is None else f"{CURATED}/{KINETICS}"

    def __repr__(self) -> str:
        return f"Results({str(self.path)!r}, stages={self.attrs['stages_completed']})"

    @property
    def pixel_size_um(self) -> float:
        """Pixel size in x and y, µm."""
        return self.attrs["pixel_size_um"]

    @property
    def frame_interval_s(self) -> float:
        """Time between frames, s."""
        return self.attrs["frame_interval_s"]

    @cached_property
    def kinetics(self) -> xr.Dataset:
        """Per-cell time series (cell_id x frame), read into memory (small); a damaged chunk is an InputError."""
        if not (self.path / self._kinetics / "zarr.json").exists():
            if self.attrs.get("complete"):
                raise InputError(f"{self.path}: the kinetics group {self._kinetics} is missing from a complete "
                                 "store (an interrupted copy?); copy the store again, or rerun `uptrack run` with "
                                 "output.overwrite: true")
            return xr.Dataset()
        dataset = xr.open_zarr(self.path, group=self._kinetics, consolidated=False, zarr_format=3)
        for name, variable in dataset.variables.items():  # small (cells x frames): read now, damage named now
            try:
                variable.load()
            except Exception as error:  # any codec's own error for a damaged chunk
                raise InputError(_damaged_chunk_message(self.path, f"{self._kinetics}/{name}", None, error)) from error
        return dataset

    @cached_property
    def cell_labels(self) -> da.Array | None:
        """Cell label image (t, [z,] y, x), uint32, lazy."""
        if not (self.path / LABELS / "0" / "zarr.json").exists():
            return None
        array = zarr.open_array(self.path / LABELS / "0", mode="r", zarr_format=3)
        return da.from_array(_NamedChunks(array, self.path, f"{LABELS}/0"), chunks=array.chunks, asarray=True)

    def _table_or_empty(self, name: str) -> pd.DataFrame:
        if has_table(self.path, name, group=self._tables):
            return read_table(self.path, name, group=self._tables)
        if self.attrs.get("complete"):  # a finished run wrote every table: this store was damaged
            raise InputError(
                f"{self.path}: table {self._tables}/{name} is missing from a complete store (an interrupted "
                f"copy, or a file deleted by hand); copy the store again from where it was made, or rerun "
                f"`uptrack run` with output.overwrite: true"
            )
        return pd.DataFrame({c: pd.Series(dtype=d) for c, d in TABLE_COLUMNS[name].items()})


class _NamedChunks:
    """A zarr array whose reads turn a codec error (a damaged chunk) into an InputError naming the store,
    the array and the region; for lazy dask arrays, where the error comes only when computed."""

    def __init__(self, array: zarr.Array, store_path: Path, name: str):
        self.array, self.store_path, self.name = array, store_path, name
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        try:
            return self.array[key]
        except Exception as error:  # zstd / blosc / ... raise their own RuntimeError, ValueError
            raise InputError(_damaged_chunk_message(self.store_path, self.name, key, error)) from error


def _damaged_chunk_message(store_path: Path, name: str, key, error: Exception) -> str:
    where = ""
    if isinstance(key, tuple) and all(isinstance(k, slice) for k in key):
        where = " at [" + ", ".join(f"{k.start or 0}:{k.stop}" for k in key) + "]"
    first = str(error).splitlines()[0] if str(error) else ""
    return (f"{store_path}: array {name}{where} cannot be decoded ({type(error).__name__}: {first}): a chunk "
            "file of the store is damaged (an interrupted copy, a failing disk); copy the store again from "
            "where it was made, or rerun `uptrack run` with output.overwrite: true")


def load_results(path: str | Path, *, allow_partial: bool = False, curated: bool = False) -> Results:
    """Open a store written by ``uptrack run``.

    Parameters
    ----------
    path : str or Path
        The ``<name>.zarr`` store.
    allow_partial : bool
        Open a store whose run has not finished; parts not yet written are empty.
    curated : bool
        Read the tables and kinetics recomputed with the reviewer's corrections
        (`pipeline.io.curation`) when the store has them; the pipeline's own output
        otherwise. ``Results.curation_version`` says which was read.

    Raises
    ------
    InputError
        If ``path`` is not an uptrack store, or is incomplete and ``allow_partial``
        is false.
    """
    path = Path(path)
    attrs = read_attrs(path)
    if not attrs["complete"] and not allow_partial:
        stages = ", ".join(attrs["stages_completed"]) or "none"
        raise InputError(
            f"{path} is incomplete (stages done: {stages}); rerun `uptrack run` with the "
            "same config to resume, or pass allow_partial=True"
        )
    if is_legacy_table(path, "particles"):
        log.warning("%s keeps its tables in the format before Parquet (uptrack reads it; other tools do not): "
                    "run `uptrack migrate %s` to upgrade it", path, path)
    return Results(path, attrs, curation_version=_curated_version(path) if curated else None)


def _curated_version(path: Path) -> int | None:
    """Curation version of the store's complete curated tables, or None if it has none."""
    if not (path / CURATED / "zarr.json").exists():
        return None
    return zarr.open_group(path / CURATED, mode="r", zarr_format=3).attrs.get("curation_version")


def read_table(path: str | Path, name: str, *, group: str = TABLES) -> pd.DataFrame:
    """Read the table ``<group>/<name>`` of a store as a DataFrame (RangeIndex).

    Reads the Parquet file ``<group>/<name>.parquet``; a table in the format before
    Parquet (a Zarr group of columns) is read as it is: ``uptrack migrate STORE`` rewrites
    it as Parquet (`pipeline.io.store.migrate_tables`) so that tools without uptrack read it.

    Raises
    ------
    InputError
        If the store or the table does not exist; the message lists the tables.
    """
    path = Path(path)
    read_attrs(path)
    file = table_file(path, name, group=group)
    if file.exists():
        try:
            table = pq.read_table(file)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{file}: not a readable Parquet table ({exc}); rerun the stage that writes it") from exc
        return _restore_dtypes(table.to_pandas(), table.schema.metadata or {})
    if not is_legacy_table(path, name, group=group):
        raise InputError(f"{path}: no table {group}/{name}; tables there: {table_names(path, group)}")
    table = zarr.open_group(path / group / name, mode="r", zarr_format=3)
    columns = table.attrs["columns"]
    return pd.DataFrame(
        {column: _decode_column(table[column]) for column in columns},
        columns=columns,
        index=pd.RangeIndex(table.attrs["n_rows"]),
    )


def _restore_dtypes(df: pd.DataFrame, metadata: dict) -> pd.DataFrame:
    """Give ``object`` columns of strings back their dtype (pandas reads Parquet strings as ``str``)."""
    dtypes = json.loads(metadata.get(b"uptrack", b"{}")).get("dtypes", {})
    for column in [c for c, dtype in dtypes.items() if dtype == "object" and c in df.columns]:
        df[column] = df[column].astype(object)
    return df


def _decode_column(array: zarr.Array) -> pd.Series:
    """A column of the previous (Zarr) table format back as a Series of its original dtype."""
    values = array[:]
    attrs = array.attrs
    if "categories" in attrs:
        categories = pd.Categorical.from_codes(
            values, categories=attrs["categories"], ordered=attrs["ordered"]
        )
        return pd.Series(categories).astype(attrs["dtype"])
    return pd.Series(values)
