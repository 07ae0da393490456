"""Large-stack benchmark: peak memory of a run on multi-GB TIFFs stays flat as the movie grows.

For each requested size, writes an OME-TIFF (BigTIFF) of that many GiB frame by frame
(never whole in memory), runs it through ``uptrack batch``'s code (`pipeline.run.batch`,
a fresh ``LocalCluster`` whose workers have a memory limit below the file's size) and
samples the resident memory (RSS) of the whole process tree — this process, which
drives the run, plus every worker process — every 0.25 s. The file and the store are
deleted afterwards. Writes the section "Large stacks" of ``benchmarks/RESULTS.md``.

The movie: a simulated 512×512 movie (6 cells, particles; ground-truth simulator)
played forwards and backwards in time to the needed number of frames, in an OME-TIFF
with ``--channels`` channels: ``cells`` and ``particles``, which the pipeline analyses,
and further channels (shifted copies) standing for the other channels of a
multi-channel acquisition, which it does not read. They make a several-GB file
process in minutes on a 2-core machine; the reader still opens the whole file and
reads, per task, only the planes it needs.

Usage (from the repository root)::

    .venv/bin/python benchmarks/large_stack.py                          # 2 and 6 GiB
    .venv/bin/python benchmarks/large_stack.py --sizes-gib 1 3 --channels 8 --workdir /scratch/me
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import tifffile
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import machine_line, markdown_table, replace_section  # noqa: E402

from pipeline.io.results import load_results  # noqa: E402
from pipeline.run.batch import load_plan, run_batch  # noqa: E402
from pipeline.run.compute import dask_client  # noqa: E402
from pipeline.sim.simulate import SimulationConfig, simulate  # noqa: E402

log = logging.getLogger("large_stack")
REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "sample_data" / "models" / "uptrack_cells_cp3"
GIB = 1 << 30
BASE_FRAMES = 40


def base_movie(size: int) -> np.ndarray:
    """(T, 2, Y, X) uint16 simulated movie: channels cells, particles."""
    config = SimulationConfig(seed=3, shape=(size, size), n_frames=BASE_FRAMES, n_cells=6)
    return simulate(config).movie


def pingpong(t: int, n: int) -> int:
    """Frame of the base movie shown at time t: forwards, backwards, forwards, ..."""
    period = 2 * n - 2
    t %= period
    return t if t < n else period - t


def write_big_tiff(path: Path, base: np.ndarray, n_frames: int, n_channels: int) -> int:
    """Write a (T, C, Y, X) OME-TIFF page by page; return its size in bytes."""
    _, _, ny, nx = base.shape
    names = ["cells", "particles"] + [f"other{c}" for c in range(2, n_channels)]

    def planes():
        for t in range(n_frames):
            frame = base[pingpong(t, len(base))]
            for c in range(n_channels):
                if c < 2:
                    yield frame[c]
                else:
                    yield np.roll(frame[c % 2], (37 * c, 53 * c), axis=(0, 1))

    metadata = {"axes": "TCYX", "PhysicalSizeX": 0.2, "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": 0.2, "PhysicalSizeYUnit": "µm", "TimeIncrement": 3.0,
                "TimeIncrementUnit": "s", "Channel": {"Name": names}}
    tifffile.imwrite(path, planes(), shape=(n_frames, n_channels, ny, nx), dtype=np.uint16,
                     bigtiff=True, ome=True, photometric="minisblack", metadata=metadata)
    return path.stat().st_size


class MemorySampler:
    """Peak RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval_s: float = 0.25):
        self.interval_s = interval_s
        self.peak_total = self.peak_driver = self.peak_worker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                driver = me.memory_info().rss
                children = []
                for child in me.children(recursive=True):
                    try:
                        children.append(child.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                continue
            self.peak_driver = max(self.peak_driver, driver)
            self.peak_worker = max([self.peak_worker, *children])
            self.peak_total = max(self.peak_total, driver + sum(children))
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_size(folder: Path, base: np.ndarray, size_gib: float, args) -> dict:
    """Write a movie of ``size_gib``, run it, measure; delete the movie and store."""
    ny, nx = base.shape[-2:]
    frame_bytes = args.channels * ny * nx * 2
    n_frames = math.ceil(size_gib * GIB / frame_bytes)
    movie = folder / f"large_{size_gib:g}gib.ome.tif"
    start = time.perf_counter()
    nbytes = write_big_tiff(movie, base, n_frames, args.channels)
    log.info("wrote %s: %.2f GiB, %d frames x %d channels in %.0f s", movie.name, nbytes / GIB,
             n_frames, args.channels, time.perf_counter() - start)
    out = folder / "results"
    config = folder / "large.yaml"
    config.write_text(yaml.safe_dump({
        "movies": [{"path": str(movie)}],
        "run_config": str(REPO / "configs" / "sample.yaml"),
        "run": {"segment": {"model": str(MODEL), "diameter_um": 15.0}},
        "output": {"dir": str(out), "overwrite": True},
        "compute": {"backend": "local", "n_workers": args.workers, "threads_per_worker": 1,
                    "memory_per_worker": args.memory_per_worker, "frames_per_task": 4},
    }))
    plan = load_plan(config)
    try:
        with MemorySampler() as memory:
            start = time.perf_counter()
            with dask_client(plan.compute) as client:
                report = run_batch(plan, client=client)
            seconds = time.perf_counter() - start
        if report.failed:
            raise RuntimeError(f"run failed: {report.failed[0].error}")
        results = load_results(plan.jobs[0].store)
        row = {"size_gib": nbytes / GIB, "frames": n_frames, "seconds": seconds,
               "frames_per_s": n_frames / seconds,
               "peak_total_gib": memory.peak_total / GIB, "peak_driver_gib": memory.peak_driver / GIB,
               "peak_worker_gib": memory.peak_worker / GIB, "detections": len(results.particles),
               "cells": len(results.cells)}
        log.info("%.2f GiB: %.0f s, peak RSS total %.2f GiB (driver %.2f, largest worker %.2f)",
                 row["size_gib"], seconds, row["peak_total_gib"], row["peak_driver_gib"],
                 row["peak_worker_gib"])
        return row
    finally:
        if not args.keep:
            movie.unlink(missing_ok=True)
            shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-gib", type=float, nargs="+", default=[2.0, 6.0],
                        help="movie sizes to run, GiB (default: 2 6)")
    parser.add_argument("--channels", type=int, default=16, help="channels in the file (2 analysed; default 16)")
    parser.add_argument("--size", type=int, default=512, help="frame size, px (default 512)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--memory-per-worker", default="1.8GiB", help="Dask memory limit per worker (default 1.8GiB)")
    parser.add_argument("--workdir", type=Path, help="where the movies go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the movies and stores")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.channels < 2:
        parser.error("--channels must be at least 2")
    base = base_movie(args.size)
    with tempfile.TemporaryDirectory(prefix="uptrack-large-", dir=args.workdir) as tmp:
        rows = [run_size(Path(tmp), base, size, args) for size in args.sizes_gib]
    table = markdown_table(
        ["movie file", "frames", "wall s", "frames / s", "peak RSS, all processes", "driver process",
         "largest worker", "detections", "cells"],
        [[f"{r['size_gib']:.2f} GiB", str(r["frames"]), f"{r['seconds']:.0f}", f"{r['frames_per_s']:.2f}",
          f"{r['peak_total_gib']:.2f} GiB", f"{r['peak_driver_gib']:.2f} GiB",
          f"{r['peak_worker_gib']:.2f} GiB", str(r["detections"]), str(r["cells"])] for r in rows])
    growth = rows[-1]["peak_total_gib"] / rows[0]["peak_total_gib"] if len(rows) > 1 else 1.0
    file_growth = rows[-1]["size_gib"] / rows[0]["size_gib"] if len(rows) > 1 else 1.0
    body = f"""
`benchmarks/large_stack.py`: one movie per size, written as a BigTIFF OME-TIFF frame by
frame, run with `uptrack batch`'s code on a fresh `LocalCluster` of {args.workers} worker
processes with a Dask memory limit of {args.memory_per_worker} each (below every movie's
size), demo settings (`configs/sample.yaml`). Peak RSS is sampled every 0.25 s over the
whole process tree (the driving process, with the scheduler and nannies, plus every
worker); RSS counts shared libraries (torch) once per process, so the total is an
upper bound. Movie: a simulated {args.size}×{args.size} movie (6 cells) played forwards and
backwards to the frame count, {args.channels} channels of uint16 of which the pipeline
analyses 2 (`cells`, `particles`; the others stand for the rest of a multi-channel
acquisition and keep the run to minutes on this machine). Files and stores are
deleted afterwards.

Machine: {machine_line()}.

{table}

The file grows {file_growth:.1f}×, peak memory {growth:.2f}×: movies are read lazily (only
the planes a task needs, one task of 4 frames at a time per worker) and labels are
written frame by frame into the store, so worker memory does not depend on the movie's
length; what grows with it is only the tables (detections, tracks) held while linking
and classifying.
"""
    replace_section("Large stacks", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
