"""Movie readers: formats, calibration, overrides, errors, laziness (pipeline.io.movie)."""

import hashlib
import logging
from pathlib import Path

import cloudpickle
import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.writer import write_image

from pipeline.errors import InputError
from pipeline.io.movie import _ome_xml_metadata, file_checksum, open_movie

T, C, Y, X = 5, 2, 24, 32


@pytest.fixture
def tcyx():
    return np.random.default_rng(0).integers(0, 4000, (T, C, Y, X), dtype=np.uint16)


def _as_tczyx(data):
    return data[:, :, None]


def test_ome_tiff_round_trip(tmp_path, tcyx):
    path = tmp_path / "movie.ome.tif"
    tifffile.imwrite(
        path,
        tcyx,
        ome=True,
        metadata={
            "axes": "TCYX",
            "PhysicalSizeX": 200,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 200,
            "PhysicalSizeYUnit": "nm",
            "TimeIncrement": 1500,
            "TimeIncrementUnit": "ms",
            "Channel": {"Name": ["cells", "particles"]},
        },
    )
    movie = open_movie(path)
    assert isinstance(movie.data, da.Array)
    assert movie.data.shape == (T, C, 1, Y, X)
    assert movie.data.chunksize == (1, 1, 1, Y, X)
    np.testing.assert_array_equal(movie.data.compute(), _as_tczyx(tcyx))
    assert movie.axes_in_file == "TCYX"
    assert movie.pixel_size_um == pytest.approx(0.2)
    assert movie.frame_interval_s == pytest.approx(1.5)
    assert movie.channel_names == ["cells", "particles"]
    assert movie.channel_index("particles") == 1


def test_ome_xml_time_step_from_plane_delta_t():
    xml = (
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image><Pixels '
        'PhysicalSizeX="0.5" PhysicalSizeZ="1.5" PhysicalSizeZUnit="µm" SizeT="3" SizeC="2">'
        '<Channel Name="a"/><Channel/>'
        + "".join(
            f'<Plane TheT="{t}" TheC="{c}" TheZ="0" DeltaT="{t * 2 + c * 0.1}" DeltaTUnit="min"/>'
            for t in range(3)
            for c in range(2)
        )
        + "</Pixels></Image></OME>"
    )
    meta = _ome_xml_metadata(xml)
    assert meta["pixel_size_um"] == 0.5  # PhysicalSizeXUnit defaults to µm
    assert meta["z_step_um"] == 1.5
    assert meta["frame_interval_s"] == pytest.approx(120.0)
    assert meta["channel_names"] == ["a", None]


def test_imagej_hyperstack_round_trip(tmp_path, tcyx):
    path = tmp_path / "hyperstack.tif"
    tifffile.imwrite(
        path,
        tcyx,
        imagej=True,
        resolution=(1 / 0.16, 1 / 0.16),
        metadata={"axes": "TCYX", "unit": "micron", "finterval": 2.0},
    )
    movie = open_movie(path)
    assert movie.data.shape == (T, C, 1, Y, X)
    np.testing.assert_array_equal(movie.data.compute(), _as_tczyx(tcyx))
    assert movie.pixel_size_um == pytest.approx(0.16)
    assert movie.frame_interval_s == 2.0
    assert movie.channel_names == ["0", "1"]


def test_imagej_z_stack_spacing_and_minutes(tmp_path):
    data = np.zeros((3, 4, Y, X), np.uint8)  # T, Z
    path = tmp_path / "zstack.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "TZYX", "unit": "um", "spacing": 0.8, "finterval": 0.5, "tunit": "min"},
    )
    movie = open_movie(path)
    assert movie.data.shape == (3, 1, 4, Y, X)
    assert (movie.pixel_size_um, movie.z_step_um, movie.frame_interval_s) == (0.5, 0.8, 30.0)


def test_plain_3d_tiff_defaults_to_tyx_with_a_warning(tmp_path, tcyx, caplog):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, tcyx[:, 0])
    with caplog.at_level(logging.WARNING, logger="pipeline.io.movie"):
        movie = open_movie(path, pixel_size_um=0.1, frame_interval_s=3)
    assert "TYX" in caplog.text and "plain.tif" in caplog.text
    assert movie.data.shape == (T, 1, 1, Y, X)
    assert movie.axes_in_file == "TYX"
    np.testing.assert_array_equal(movie.data[:, 0, 0].compute(), tcyx[:, 0])


def test_axes_override(tmp_path, tcyx):
    path = tmp_path / "plain4d.tif"
    tifffile.imwrite(path, tcyx)
    with pytest.raises(InputError, match=r"input\.axes"):
        open_movie(path, pixel_size_um=0.1, frame_interval_s=3)
    movie = open_movie(path, pixel_size_um=0.1, frame_interval_s=3, axes="tcyx")
    np.testing.assert_array_equal(movie.data.compute(), _as_tczyx(tcyx))
    zstack = open_movie(path, pixel_size_um=0.1, frame_interval_s=3, axes="ZCYX")
    assert zstack.data.shape == (1, C, T, Y, X)
    with pytest.raises(InputError, match="do not fit"):
        open_movie(path, pixel_size_um=0.1, frame_interval_s=3, axes="TYX")


def test_overrides_win_over_metadata(tmp_path, tcyx):
    path = tmp_path / "movie.ome.tif"
    tifffile.imwrite(
        path,
        tcyx,
        ome=True,
        metadata={
            "axes": "TCYX",
            "PhysicalSizeX": 0.2,
            "TimeIncrement": 3,
            "Channel": {"Name": ["a", "b"]},
        },
    )
    movie = open_movie(
        path, pixel_size_um=0.1, frame_interval_s=10, channel_names=["cells", "beads"]
    )
    assert (movie.pixel_size_um, movie.frame_interval_s) == (0.1, 10.0)
    assert movie.channel_names == ["cells", "beads"]
    with pytest.raises(InputError, match="channel_names has 1 names for 2 channels"):
        open_movie(path, channel_names=["cells"])


@pytest.mark.parametrize(
    ("given", "field"),
    [({"frame_interval_s": 3}, "pixel_size_um"), ({"pixel_size_um": 0.2}, "frame_interval_s")],
)
def test_missing_calibration_names_field_and_fix(tmp_path, tcyx, given, field):
    path = tmp_path / "bare.tif"
    tifffile.imwrite(path, tcyx[:, 0])
    with pytest.raises(InputError) as info:
        open_movie(path, **given)
    message = str(info.value)
    assert "bare.tif" in message
    assert f"set input.{field} in the config" in message
    assert f"--set input.{field}=" in message


def test_non_positive_override_is_rejected(tmp_path, tcyx):
    path = tmp_path / "bare.tif"
    tifffile.imwrite(path, tcyx[:, 0])
    with pytest.raises(InputError, match="pixel_size_um must be positive"):
        open_movie(path, pixel_size_um=0, frame_interval_s=3)


def test_unreadable_inputs_raise_input_error(tmp_path):
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    with pytest.raises(InputError, match=r"corrupt\.tif: cannot read as TIFF"):
        open_movie(corrupt)
    with pytest.raises(InputError, match=r"missing\.tif: no such file"):
        open_movie(tmp_path / "missing.tif")
    other = tmp_path / "movie.nd2"
    other.write_bytes(b"\x00")
    with pytest.raises(InputError, match="unsupported movie format"):
        open_movie(other)
    not_ngff = tmp_path / "folder"
    not_ngff.mkdir()
    with pytest.raises(InputError, match="folder: not a readable OME-Zarr"):
        open_movie(not_ngff)


def _write_ngff(path: Path, data: np.ndarray, zarr_format: int) -> None:
    """OME-Zarr with t, c, y, x axes: NGFF 0.5 for Zarr v3, 0.4 for v2."""
    root = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    root.create_array("0", data=data, chunks=(1, 1, Y, X))
    multiscale = {
        "axes": [
            {"name": "t", "type": "time", "unit": "minute"},
            {"name": "c", "type": "channel"},
            {"name": "y", "type": "space", "unit": "nanometer"},
            {"name": "x", "type": "space", "unit": "nanometer"},
        ],
        "datasets": [
            {
                "path": "0",
                "coordinateTransformations": [{"type": "scale", "scale": [0.5, 1, 65, 65]}],
            }
        ],
    }
    omero = {"channels": [{"label": "cells"}, {"label": "particles"}]}
    if zarr_format == 3:
        root.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale], "omero": omero}
    else:
        root.attrs.update({"multiscales": [{**multiscale, "version": "0.4"}], "omero": omero})


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_round_trip(tmp_path, tcyx, zarr_format):
    path = tmp_path / "movie.ome.zarr"
    _write_ngff(path, tcyx, zarr_format)
    movie = open_movie(path)
    assert movie.axes_in_file == "TCYX"
    np.testing.assert_array_equal(movie.data.compute(), _as_tczyx(tcyx))
    assert movie.pixel_size_um == pytest.approx(0.065)
    assert movie.frame_interval_s == 30.0
    assert movie.channel_names == ["cells", "particles"]


def test_ome_zarr_from_ome_zarr_writer_uses_full_resolution(tmp_path, tcyx):
    path = tmp_path / "pyramid.ome.zarr"
    write_image(
        tcyx,
        str(path),
        axes="tcyx",
        scale_factors=[2],
        scale={"t": 2.5, "c": 1.0, "y": 0.25, "x": 0.25},
        axes_units={"t": "second", "y": "micrometer", "x": "micrometer"},
    )
    movie = open_movie(path)
    np.testing.assert_array_equal(movie.data.compute(), _as_tczyx(tcyx))
    assert (movie.pixel_size_um, movie.frame_interval_s) == (0.25, 2.5)


def test_channel_index(tmp_path, tcyx):
    path = tmp_path / "plain4d.tif"
    tifffile.imwrite(path, tcyx)
    movie = open_movie(
        path, axes="TCYX", pixel_size_um=0.1, frame_interval_s=1, channel_names=["cells", "np"]
    )
    assert movie.channel_index("np") == 1
    assert movie.channel_index(0) == 0
    assert movie.channel_index("1") == 1
    with pytest.raises(
        InputError, match=r"no channel 'nuclei'; available channels: 0 \('cells'\), 1 \('np'\)"
    ):
        movie.channel_index("nuclei")
    with pytest.raises(InputError, match="no channel 2"):
        movie.channel_index(2)


def _bytes_read() -> int:
    """Bytes this process has read through read() calls so far (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_opening_a_large_tiff_reads_no_pixels(tmp_path):
    frame_bytes = 1024 * 512 * 2
    path = tmp_path / "large.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:  # 64 MiB, written frame by frame
        tif.write(
            (np.full((1024, 512), t, np.uint16) for t in range(64)),
            shape=(64, 1024, 512),
            dtype=np.uint16,
            metadata={"axes": "TYX", "PhysicalSizeX": 0.2, "TimeIncrement": 3},
        )
    open_movie(path)  # warm-up: lazy imports inside tifffile and zarr
    before = _bytes_read()
    movie = open_movie(path)
    assert _bytes_read() - before < frame_bytes // 10  # IFDs and OME-XML only
    movie.data[0].compute()  # opens the file in the dask source
    before = _bytes_read()
    assert (movie.data[37].compute() == 37).all()
    assert _bytes_read() - before < 1.5 * frame_bytes


def test_movie_data_survives_pickling(tmp_path, tcyx):
    path = tmp_path / "hyperstack.tif"
    tifffile.imwrite(path, tcyx, imagej=True, metadata={"axes": "TCYX"})
    movie = open_movie(path, pixel_size_um=0.1, frame_interval_s=1)
    np.testing.assert_array_equal(movie.data[2].compute(), tcyx[2][:, None])  # opens the file
    clone = cloudpickle.loads(cloudpickle.dumps(movie.data))
    np.testing.assert_array_equal(clone.compute(), _as_tczyx(tcyx))
    assert clone.name == open_movie(path, pixel_size_um=0.1, frame_interval_s=1).data.name


def test_file_checksum(tmp_path):
    path = tmp_path / "a.tif"
    path.write_bytes(b"x" * 3_000_000)
    assert file_checksum(path) == "sha256:" + hashlib.sha256(b"x" * 3_000_000).hexdigest()
    folder = tmp_path / "movie.zarr"
    (folder / "0").mkdir(parents=True)
    (folder / "zarr.json").write_text("{}")
    first = file_checksum(folder)
    assert first.startswith("sha256-listing:") and file_checksum(folder) == first
    (folder / "0" / "c").write_bytes(b"1")
    assert file_checksum(folder) != first
    with pytest.raises(InputError, match=r"nothing\.tif: no such file"):
        file_checksum(tmp_path / "nothing.tif")
