"""Lazy movie readers: plain TIFF, OME-TIFF, ImageJ hyperstacks and OME-Zarr.

`open_movie` returns a `Movie` whose pixels are a dask array with axes always
(T, C, Z, Y, X), chunked one image plane per chunk; opening reads metadata only.
Physical calibration comes from the file (OME-XML, ImageJ description, NGFF
``coordinateTransformations``) and is converted to µm and s; arguments override it.

TIFF pixels are read through ``tifffile``'s Zarr interface (one chunk per TIFF
page). The source that dask holds re-opens the file in each process that reads it,
so the array can be sent to Dask workers (an open TIFF file cannot be pickled).
"""

from __future__ import annotations

import hashlib
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
import zarr

from pipeline.errors import InputError

log = logging.getLogger(__name__)

#: Axis order of `Movie.data`.
AXES = "TCZYX"

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf2", ".tf8")

#: Length unit spellings (OME-XML symbols, NGFF names, ImageJ) -> factor to µm.
_UM_PER_UNIT = {
    "pm": 1e-6, "picometer": 1e-6,
    "å": 1e-4, "angstrom": 1e-4,
    "nm": 1e-3, "nanometer": 1e-3,
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "mm": 1e3, "millimeter": 1e3,
    "cm": 1e4, "centimeter": 1e4,
    "m": 1e6, "meter": 1e6,
}  # fmt: skip

#: Time unit spellings -> factor to seconds.
_S_PER_UNIT = {
    "ns": 1e-9, "nanosecond": 1e-9,
    "µs": 1e-6, "μs": 1e-6, "us": 1e-6, "microsecond": 1e-6,
    "ms": 1e-3, "millisecond": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
}  # fmt: skip


@dataclass
class Movie:
    """A movie opened lazily.

    Attributes
    ----------
    data : dask.array.Array
        Pixels, axes (T, C, Z, Y, X); Z is 1 for a 2-D movie. One chunk per image
        plane; nothing is read until a chunk is computed.
    pixel_size_um : float
        Pixel size in x and y, µm.
    frame_interval_s : float
        Time between frames, s.
    channel_names : list of str
        One name per channel (from the file, the caller, or ``"0"``, ``"1"``, ...).
    path : pathlib.Path
        The movie file (or OME-Zarr directory).
    axes_in_file : str
        Axes of the array as stored in the file, e.g. ``"TCYX"``: from the file's
        metadata, the ``axes`` argument, or the TYX default for a bare 3-D TIFF.
    z_step_um : float or None
        Distance between z planes, µm, when the file records it.
    """

    data: da.Array
    pixel_size_um: float
    frame_interval_s: float
    channel_names: list[str]
    path: Path
    axes_in_file: str
    z_step_um: float | None = None

    def channel_index(self, channel: int | str) -> int:
        """Index along C of a channel given by name or by index.

        Parameters
        ----------
        channel : int or str
            A channel name, an index, or an index written as a string (``"1"``).

        Raises
        ------
        InputError
            If no channel matches; the message lists the available channels.
        """
        if isinstance(channel, str) and channel in self.channel_names:
            return self.channel_names.index(channel)
        if isinstance(channel, (int, np.integer)) or str(channel).isdigit():
            index = int(channel)
            if 0 <= index < len(self.channel_names):
                return index
        available = ", ".join(f"{i} ({name!r})" for i, name in enumerate(self.channel_names))
        raise InputError(f"{self.path}: no channel {channel!r}; available channels: {available}")


def open_movie(
    path: str | Path,
    *,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
    channel_names: list[str] | None = None,
    axes: str | None = None,
    n_channels: int | None = None,
) -> Movie:
    """Open a TIFF, OME-TIFF, ImageJ hyperstack or OME-Zarr movie lazily.

    Parameters
    ----------
    path : str or Path
        A TIFF file (``.tif``, ``.tiff``, ``.btf``) or an OME-Zarr directory
        (NGFF 0.4 / 0.5, Zarr v2 or v3; the full-resolution level is used).
    pixel_size_um : float, optional
        Pixel size in x and y, µm; overrides the file's metadata.
    frame_interval_s : float, optional
        Time between frames, s; overrides the file's metadata.
    channel_names : list of str, optional
        One name per channel; overrides the file's names.
    axes : str, optional
        Axes of the array as stored, e.g. ``"TCYX"``; overrides the file's axes.
        Needed when the file does not record them (a 3-D plain TIFF is read as
        TYX with a logged warning; 4-D and more raise).
    n_channels : int, optional
        For a plain TIFF stored as one page per image (tifffile reports a 3-D page
        stack): the number of channels, so that ``axes="TCYX"`` (channels
        interleaved) or ``"CTYX"`` can split the pages into time and channels.

    Returns
    -------
    Movie

    Raises
    ------
    InputError
        The file is missing, unreadable or of an unsupported format; its axes
        cannot be told; or the pixel size or frame interval is neither in the
        metadata nor given. The message names the file, the field and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        data, file_axes, meta = _read_ome_zarr(path)
    elif path.suffix.lower() in TIFF_SUFFIXES:
        data, file_axes, meta = _read_tiff(path)
    else:
        raise InputError(
            f"{path}: unsupported movie format {path.suffix!r}; use TIFF, OME-TIFF or "
            "OME-Zarr (convert other formats with bioformats2raw or Fiji)"
        )
    data, file_axes = _split_pages(path, data, file_axes, axes, n_channels)
    used_axes = _resolve_axes(path, file_axes, data.ndim, axes)
    data = _to_tczyx(data, used_axes)
    return Movie(
        data=data,
        pixel_size_um=_required(
            path, "pixel_size_um", pixel_size_um, meta.get("pixel_size_um"), "0.2"
        ),
        frame_interval_s=_required(
            path, "frame_interval_s", frame_interval_s, meta.get("frame_interval_s"), "3"
        ),
        channel_names=_channel_names(path, data.shape[1], channel_names, meta.get("channel_names")),
        path=path,
        axes_in_file=used_axes,
        z_step_um=meta.get("z_step_um"),
    )


def file_checksum(path: str | Path) -> str:
    """Checksum identifying a movie, for the store's attributes.

    A file is hashed in full (SHA-256, read in 1 MiB blocks): ``"sha256:<hex>"``.
    A directory (OME-Zarr) is identified by a SHA-256 of its sorted file list with
    each file's size and modification time, not of its contents, so that
    multi-GB stores hash in seconds: ``"sha256-listing:<hex>"``. It changes when a
    file is added, removed or rewritten.

    Raises
    ------
    InputError
        If the path does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = file.stat()
            line = f"{file.relative_to(path).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
            digest.update(line.encode())
        return f"sha256-listing:{digest.hexdigest()}"
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


# --- TIFF ------------------------------------------------------------------


class _TiffSource:
    """Array-like view of the first series of a TIFF file, opened on first read.

    Dask pickles this object to send it to workers; the open file is dropped on
    pickling and re-opened in the receiving process.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, axes: str = ""):
        self.path = path
        self.axes = axes
        self.shape = shape
        self.dtype = dtype
        self.ndim = len(shape)
        self._array = None

    def __getitem__(self, key):
        if self._array is None:
            self._array = _tiff_zarr(tifffile.TiffFile(self.path))
        try:
            return self._array[key]
        except Exception as exc:  # a codec error (DeflateError, ...) on damaged pixel data
            raise InputError(
                f"{self.path}: the pixel data of {_describe_planes(key, self.axes)} cannot be decoded "
                f"({type(exc).__name__}: {exc}); the file is damaged (an interrupted copy or acquisition?). "
                "Copy it again from the source, or re-export it from the acquisition software"
            ) from exc

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __dask_tokenize__(self):
        stat = self.path.stat()
        return (str(self.path.resolve()), stat.st_size, stat.st_mtime_ns)


#: What tifffile logs (and otherwise works around with blank pages) when a file is damaged.
_DAMAGE = ("invalid page offset", "invalid value offset", "out of range", "truncated", "corrupted")


class _TifffileComplaints(logging.Handler):
    """Collect, while active, what tifffile logs about a damaged file (it carries on with blank frames)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if any(word in text.lower() for word in _DAMAGE):
            self.messages.append(text)

    def __enter__(self):
        logging.getLogger("tifffile").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("tifffile").removeHandler(self)


def _check_extent(path: Path, tif: tifffile.TiffFile) -> None:
    """Refuse a file whose image data runs past its end (a truncated copy)."""
    size = path.stat().st_size
    index = len(tif.pages) - 1  # pages are written in order: the last one read is where a cut shows
    if index < 0:
        return
    page = tif.pages[index]
    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
    if ends and max(ends) > size:
        raise InputError(
            f"{path}: truncated: the image data of page {index} ends at byte {max(ends)} but the file has "
            f"{size} bytes (an interrupted copy or acquisition?). Copy it again from the source"
        )


def _describe_planes(key, axes: str) -> str:
    """``key`` (a tuple of slices of the stored array) in words, e.g. ``"T 10, C 0-1"``."""
    parts = []
    for axis, item in zip(axes or "", key if isinstance(key, tuple) else (key,), strict=False):
        if axis in "YX":
            continue
        if isinstance(item, slice):
            start, stop = item.start or 0, item.stop
            parts.append(f"{axis} {start}" if stop is not None and stop - start == 1 else
                         f"{axis} {start}-{'' if stop is None else stop - 1}")
        else:
            parts.append(f"{axis} {item}")
    frames = ", ".join(parts)
    return f"plane(s) {frames} (0-based)" if frames else "an image plane"


def _tiff_zarr(tif: tifffile.TiffFile) -> zarr.Array:
    """Full-resolution level of the first series as a read-only zarr array, one chunk per page."""
    store = tif.series[0].aszarr(level=0, chunkmode=tifffile.CHUNKMODE.PAGE)
    return zarr.open_array(store, mode="r", zarr_format=2)


def _read_tiff(path: Path) -> tuple[da.Array, str, dict]:
    """Lazy pixels, tifffile's axes string and calibration of a TIFF file."""
    damage = _TifffileComplaints()
    try:
        with damage, tifffile.TiffFile(path) as tif:
            _check_extent(path, tif)
            if len(tif.series) > 1:
                log.warning("%s holds %d image series; reading the first", path, len(tif.series))
            axes = tif.series[0].axes
            array = _tiff_zarr(tif)
            if tif.is_ome:
                meta = _ome_xml_metadata(tif.ome_metadata)
            elif tif.is_imagej:
                meta = _imagej_metadata(tif)
            else:
                meta = {}
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types on corrupt files
        raise InputError(f"{path}: cannot read as TIFF ({type(exc).__name__}: {exc}); the file is damaged or "
                         "not a TIFF. Copy it again from the source, or re-export it") from exc
    if damage.messages:
        raise InputError(
            f"{path}: the file is damaged or truncated (tifffile: {'; '.join(damage.messages[:3])}); reading it "
            "would give missing or blank frames. Copy it again from the source (compare its size with the "
            "original), or re-export it from the acquisition software"
        )
    source = _TiffSource(path, array.shape, array.dtype, axes)
    data = da.from_array(source, chunks=array.chunks, meta=np.empty((0,) * array.ndim, array.dtype))
    return data, axes, meta


def _ome_xml_metadata(xml: str) -> dict:
    """Calibration and channel names of the first image in an OME-XML document."""
    pixels = next(el for el in ET.fromstring(xml).iter() if _local_name(el.tag) == "Pixels")
    a = pixels.attrib
    return {
        "pixel_size_um": _in_um(a.get("PhysicalSizeX"), a.get("PhysicalSizeXUnit", "µm")),
        "z_step_um": _in_um(a.get("PhysicalSizeZ"), a.get("PhysicalSizeZUnit", "µm")),
        "frame_interval_s": _in_s(a.get("TimeIncrement"), a.get("TimeIncrementUnit", "s"))
        or _ome_plane_interval_s(pixels),
        "channel_names": [c.get("Name") for c in pixels if _local_name(c.tag) == "Channel"],
    }


def _ome_plane_interval_s(pixels: ET.Element) -> float | None:
    """Median time step (s) between the ``DeltaT`` of planes C=0, Z=0, if recorded."""
    times = sorted(
        (int(p.get("TheT", 0)), _in_s(p.get("DeltaT"), p.get("DeltaTUnit", "s")))
        for p in pixels
        if _local_name(p.tag) == "Plane"
        and p.get("TheC", "0") == "0"
        and p.get("TheZ", "0") == "0"
        and p.get("DeltaT") is not None
    )
    if len(times) < 2:
        return None
    step = float(np.median(np.diff([t for _, t in times])))
    return step if step > 0 else None


def _imagej_metadata(tif: tifffile.TiffFile) -> dict:
    """Calibration of an ImageJ hyperstack (XResolution, ``unit``, ``spacing``, ``finterval``)."""
    ij = tif.imagej_metadata or {}
    unit = ij.get("unit")
    pixels_per_unit = tif.pages.first.get_resolution()[0]
    return {
        "pixel_size_um": _in_um(1 / pixels_per_unit if pixels_per_unit else None, unit),
        "z_step_um": _in_um(ij.get("spacing"), unit),
        "frame_interval_s": _in_s(ij.get("finterval"), ij.get("tunit", "sec")),
    }


# --- OME-Zarr --------------------------------------------------------------


def _read_ome_zarr(path: Path) -> tuple[da.Array, str, dict]:
    """Lazy full-resolution pixels, axes and calibration of an OME-Zarr image."""
    try:
        return _ome_zarr_image(path)
    except Exception as exc:  # zarr, KeyError, JSON errors on non-NGFF directories
        raise InputError(
            f"{path}: not a readable OME-Zarr image ({type(exc).__name__}: {exc})"
        ) from exc


def _ome_zarr_image(path: Path) -> tuple[da.Array, str, dict]:
    group = zarr.open_group(path, mode="r")
    ome = _ngff_attrs(group)
    if "bioformats2raw.layout" in ome and "multiscales" not in ome:
        group = group["0"]
        ome = _ngff_attrs(group)
    multiscale = ome["multiscales"][0]
    dataset = multiscale["datasets"][0]
    axes = multiscale["axes"]  # NGFF 0.3: names; 0.4+: dicts with name, type, unit
    names = [ax if isinstance(ax, str) else ax["name"] for ax in axes]
    units = [None if isinstance(ax, str) else ax.get("unit") for ax in axes]
    scale = _ngff_scale(dataset, len(names)) * _ngff_scale(multiscale, len(names))
    calibration = {
        name.lower(): (s, unit) for name, s, unit in zip(names, scale, units, strict=True)
    }
    meta = {
        "pixel_size_um": _in_um(*calibration.get("x", (None, None))),
        "z_step_um": _in_um(*calibration.get("z", (None, None))),
        "frame_interval_s": _in_s(*calibration.get("t", (None, None))),
        "channel_names": [c.get("label") for c in ome.get("omero", {}).get("channels", [])],
    }
    return da.from_zarr(group[dataset["path"]]), "".join(names).upper(), meta


def _ngff_attrs(group: zarr.Group) -> dict:
    """NGFF attributes: under ``"ome"`` in NGFF 0.5 (Zarr v3), top level before."""
    attrs = group.attrs.asdict()
    return attrs.get("ome", attrs)


def _ngff_scale(node: dict, ndim: int) -> np.ndarray:
    """Product of the ``scale`` transforms of a dataset or multiscale (ones if none)."""
    scale = np.ones(ndim)
    for transform in node.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = scale * np.asarray(transform["scale"], dtype=float)
    return scale


# --- axes and calibration ----------------------------------------------------


def _split_pages(path: Path, data: da.Array, file_axes: str, axes: str | None,
                 n_channels: int | None) -> tuple[da.Array, str]:
    """Reshape a plain page stack (N, Y, X) to (T, C, Y, X) or (C, T, Y, X) when asked to."""
    wants_split = axes is not None and len(axes) == data.ndim + 1 and axes.upper()[:2] in ("TC", "CT")
    if not wants_split:
        return data, file_axes
    if data.ndim != 3:
        return data, file_axes  # _resolve_axes names the mismatch
    if n_channels is None:
        raise InputError(
            f"{path}: the file is a plain stack of {data.shape[0]} pages without axes; to read it as "
            f"{axes.upper()} give the number of channels: set input.n_channels (e.g. --set input.n_channels=2)"
        )
    pages = data.shape[0]
    if pages % n_channels:
        raise InputError(
            f"{path}: {pages} pages cannot be {n_channels} channels × whole frames; check input.n_channels "
            f"(the page count must be a multiple of it)"
        )
    other = pages // n_channels
    shape = (other, n_channels) if axes.upper()[:2] == "TC" else (n_channels, other)
    return data.reshape(*shape, *data.shape[1:]), axes.upper()


def _resolve_axes(path: Path, file_axes: str, ndim: int, override: str | None) -> str:
    """Axes (letters of TCZYX) of the array as stored."""
    if override:
        axes = override.upper()
        if len(axes) != ndim or len(set(axes)) != ndim or not set("YX") <= set(axes) <= set(AXES):
            raise InputError(
                f"{path}: axes {override!r} do not fit the {ndim}-D array in the file "
                f"(file axes {file_axes!r}); give {ndim} distinct letters of {AXES} "
                "including Y and X"
            )
        return axes
    axes = file_axes.replace("S", "C") if "C" not in file_axes else file_axes
    if set(axes) <= set(AXES) and len(set(axes)) == len(axes):
        return axes
    if ndim == 3:
        log.warning(
            "%s: axes are not recorded in the file; reading the 3-D stack as TYX "
            "(time, y, x). If it is a z-stack, set input.axes=ZYX",
            path,
        )
        return "TYX"
    raise InputError(
        f"{path}: the axes of this {ndim}-D array are not recorded in the file (tifffile "
        f"reports {file_axes!r}); set input.axes in the config or pass --set input.axes=TCYX"
    )


def _to_tczyx(data: da.Array, axes: str) -> da.Array:
    """Transpose to the TCZYX order and add length-1 axes for those missing."""
    present = [ax for ax in AXES if ax in axes]
    data = data.transpose([axes.index(ax) for ax in present])
    return data[tuple(slice(None) if ax in axes else None for ax in AXES)]


def _required(
    path: Path, field: str, given: float | None, found: float | None, example: str
) -> float:
    """The given value, else the file's, else an InputError naming the field and the fix."""
    value = given if given is not None else found
    if value is None:
        raise InputError(
            f"{path}: {field} is not in the file's metadata (or has no usable unit); "
            f"set input.{field} in the config or pass --set input.{field}={example}"
        )
    if not value > 0:
        raise InputError(f"{path}: {field} must be positive, got {value}")
    return float(value)


def _channel_names(
    path: Path, n_channels: int, given: list[str] | None, found: list[str | None] | None
) -> list[str]:
    """Given names, else the file's (when complete), else ``"0"``, ``"1"``, ..."""
    if given is not None:
        if len(given) != n_channels:
            raise InputError(
                f"{path}: input.channel_names has {len(given)} names for {n_channels} channels"
            )
        return [str(name) for name in given]
    if found and len(found) == n_channels and all(found):
        return [str(name) for name in found]
    return [str(i) for i in range(n_channels)]


def _in_um(value, unit: str | None) -> float | None:
    """A length in µm, or None if the value or its unit is missing or unknown."""
    return _convert(value, unit, _UM_PER_UNIT)


def _in_s(value, unit: str | None) -> float | None:
    """A time in s, or None if the value or its unit is missing or unknown."""
    return _convert(value, unit, _S_PER_UNIT)


def _convert(value, unit: str | None, factors: dict[str, float]) -> float | None:
    key = None if unit is None else unit.replace("\\u00B5", "µ").strip().lower()
    if value is None or key in (None, "pixel", "pixels"):
        return None
    if key not in factors:
        log.warning("unknown unit %r; ignoring the value %s", unit, value)
        return None
    return float(value) * factors[key]


def _local_name(tag: str) -> str:
    """XML tag without its namespace."""
    return tag.rpartition("}")[2]
