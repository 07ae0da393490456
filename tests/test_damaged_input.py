"""Damaged inputs and concurrent runs (issue 16): the demo OME-TIFF damaged the way a disk,
an interrupted copy or a crashed acquisition damages it, a plain multi-channel TIFF without
metadata, two runs on one output, and a failing rerun with ``overwrite: true``.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline import load_results
from pipeline.errors import InputError
from pipeline.io import store
from pipeline.io.lock import lock_path, store_lock
from pipeline.io.movie import open_movie
from pipeline.run.runner import Run, run

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "sample_data" / "demo.ome.tif"


def _copy(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.ome.tif"
    shutil.copy(DEMO, path)
    return path


def _page(index: int):
    with tifffile.TiffFile(DEMO) as tif:
        page = tif.pages[index]
        entries = tif.tiff.tagnosize + len(page.tags) * tif.tiff.tagsize
        return page.offset, page.offset + entries, page.dataoffsets[0], page.databytecounts[0]


def _read_all(path: Path) -> np.ndarray:
    return open_movie(path).data.compute()


def test_broken_page_chain_is_an_error_not_blank_frames(tmp_path):
    """A bad next-page offset (tifffile then fills the missing pages with zeros) names the damage."""
    path = _copy(tmp_path, "chain")
    _, next_offset, _, _ = _page(40)
    with open(path, "r+b") as fh:
        fh.seek(next_offset)
        fh.write(struct.pack("<I", 0x7FFFFFFF))
    with tifffile.TiffFile(path) as tif:  # what a plain reader gives: the frames after page 40 blank
        blank = [t for t, plane in enumerate(tif.series[0].asarray()) if plane.max() == 0]
    assert blank and blank[0] == 21
    with pytest.raises(InputError, match="damaged or truncated.*Copy it again"):
        open_movie(path)


def test_corrupt_pixel_data_names_the_file_and_frame(tmp_path):
    path = _copy(tmp_path, "pixels")
    _, _, data, size = _page(41)  # page 41 = frame 20, channel 1 (TCYX, two channels)
    with open(path, "r+b") as fh:
        fh.seek(data + size // 3)
        fh.write(np.random.default_rng(0).integers(0, 255, 200, dtype=np.uint8).tobytes())
    movie = open_movie(path)
    assert movie.data[19].compute().max() > 0  # the undamaged frames still read
    with pytest.raises(InputError, match=r"pixels\.ome\.tif: the pixel data of plane\(s\) T 20, C 1 .*damaged"):
        movie.data[20].compute()


@pytest.mark.parametrize("where", ["mid-page", "page boundary"])
def test_truncated_file_says_truncated_not_missing_metadata(tmp_path, where):
    path = _copy(tmp_path, "cut")
    offset, _, data, size = _page(60)
    os.truncate(path, data + size // 2 if where == "mid-page" else offset)
    with pytest.raises(InputError, match="truncated") as error:
        open_movie(path)
    assert "pixel_size_um" not in str(error.value)


def test_intact_file_reads_as_before():
    movie = open_movie(DEMO)
    assert movie.data.shape[:2] == (70, 2) and movie.pixel_size_um > 0


def test_plain_multichannel_tiff_without_metadata(tmp_path):
    """One page per image, no axes recorded: input.axes TCYX with input.n_channels reads it."""
    frames = np.random.default_rng(1).integers(0, 4000, (6, 2, 24, 32), dtype=np.uint16)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, frames, metadata=None)
    movie = open_movie(path, pixel_size_um=0.2, frame_interval_s=2.0, axes="TCYX", n_channels=2)
    assert movie.data.shape == (6, 2, 1, 24, 32)
    np.testing.assert_array_equal(movie.data[:, :, 0].compute(), frames)
    with pytest.raises(InputError, match="input.n_channels"):
        open_movie(path, pixel_size_um=0.2, frame_interval_s=2.0, axes="TCYX")
    with pytest.raises(InputError, match="multiple of it"):
        open_movie(path, pixel_size_um=0.2, frame_interval_s=2.0, axes="TCYX", n_channels=5)


_HOLD = textwrap.dedent("""
    import sys, time
    from pipeline.io.lock import store_lock
    with store_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_second_run_on_the_same_output_is_refused(tiny_config):
    """A real second process holds the store's lock: the run is refused, naming it, and nothing is written."""
    target = Run(tiny_config).path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=rf"being written by uptrack run \(pid {holder.pid} on "):
            run(tiny_config)
        assert not target.exists()
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_dead_run_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = lock_path(tmp_path / "movie.zarr")
    import json
    import socket
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}))
    with store_lock(tmp_path / "movie.zarr") as held:
        assert json.loads(held.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_failed_overwrite_keeps_the_complete_store(tiny_config, monkeypatch):
    """overwrite: true replaces a complete store only once the new run is complete."""
    first = load_results(run(tiny_config))
    again = tiny_config.model_copy(update={
        "output": tiny_config.output.model_copy(update={"overwrite": True}),
        "detect": tiny_config.detect.model_copy(update={"min_snr": tiny_config.detect.min_snr + 1})})

    def crash(self, client):
        raise RuntimeError("node lost")

    monkeypatch.setattr(Run, "classify", crash)  # a failure a real run can meet (a worker dies)
    with pytest.raises(RuntimeError, match="node lost"):
        run(again)
    kept = load_results(first.path)
    assert kept.attrs["complete"] and kept.particles.equals(first.particles)
    assert kept.attrs["config"] == first.attrs["config"]
    assert not lock_path(first.path).exists()
    monkeypatch.undo()

    replaced = load_results(run(again))  # and a rerun that succeeds does replace it
    assert replaced.path == first.path and replaced.attrs["complete"]
    assert replaced.attrs["config"]["detect"]["min_snr"] == tiny_config.detect.min_snr + 1
    assert not store.staging_path(first.path).exists()


def test_missing_model_is_reported_before_any_store_exists(tiny_config, tmp_path):
    broken = tiny_config.model_copy(update={"segment": tiny_config.segment.model_copy(
        update={"model": str(tmp_path / "no_such_weights")})})
    with pytest.raises(InputError, match="segment.model"):
        run(broken)
    assert not Run(broken).path.exists()


def test_damaged_complete_store_is_an_error_not_empty_tables(tiny_config, tmp_path):
    """An interrupted copy of a complete store: a missing table or a cut Parquet file is named, not read as 0 rows."""
    made = run(tiny_config)
    copy = tmp_path / "copied.zarr"
    shutil.copytree(made, copy)
    (copy / "tables" / "events.parquet").unlink()
    particles = copy / "tables" / "particles.parquet"
    particles.write_bytes(particles.read_bytes()[: particles.stat().st_size // 2])
    results = load_results(copy)
    assert len(results.cells) == len(load_results(made).cells)  # what is intact still reads
    with pytest.raises(InputError, match="events is missing from a complete store"):
        _ = results.events
    with pytest.raises(InputError, match="particles.parquet: not a readable Parquet table"):
        _ = results.particles


def _corrupt_first_chunk(array_dir: Path) -> Path:
    """Overwrite the middle of the largest chunk file of a zarr array with garbage; return it."""
    chunks = sorted((p for p in (array_dir / "c").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    chunk = chunks[-1]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 4: len(data) // 2] = b"\xff" * (len(data) // 2 - len(data) // 4)
    chunk.write_bytes(bytes(data))
    return chunk


def test_damaged_array_chunks_are_named(tiny_config, tmp_path):
    """A damaged chunk of the cell labels or of the kinetics is an InputError naming the store, the
    array and the chunk, not a bare codec error; undamaged parts still read."""
    made = run(tiny_config)
    copy = tmp_path / "copied.zarr"
    shutil.copytree(made, copy)
    results = load_results(copy)
    labels_dir = copy / "labels" / "cells" / "0"
    chunk = _corrupt_first_chunk(labels_dir)
    with pytest.raises(InputError, match=r"labels/cells/0.*cannot be decoded.*damaged"):
        results.cell_labels.compute()
    assert len(results.cells) == len(load_results(made).cells)
    kinetics = next(p for p in (copy / "kinetics").iterdir() if (p / "c").is_dir())
    _corrupt_first_chunk(kinetics)
    with pytest.raises(InputError, match=rf"kinetics/{kinetics.name}.*cannot be decoded.*damaged"):
        _ = load_results(copy).kinetics
    assert chunk.is_file()
