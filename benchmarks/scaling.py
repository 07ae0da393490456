"""Scaling benchmark: ``uptrack batch`` throughput with 1 vs 2 Dask worker processes.

Simulates a few movies, then runs the same batch (`pipeline.run.batch.run_batch`, the code
behind ``uptrack batch``) on a fresh ``LocalCluster`` of 1 and then 2 worker processes
(one thread each), and a single longer movie the same way (parallelism within a movie:
segmentation and detection tasks over frames). Each cluster is warmed first (Cellpose
imported and its model loaded in every worker; that start-up is reported apart), so the
timed part is the batch itself. Checks that both runs give identical summaries. Writes
the section "Scaling" of ``benchmarks/RESULTS.md``.

Usage (from the repository root)::

    .venv/bin/python benchmarks/scaling.py                 # 4 movies of 256x256 px x 24 frames
    .venv/bin/python benchmarks/scaling.py --movies 6 --frames 40 --workdir /tmp/scaling
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import machine_line, markdown_table, replace_section  # noqa: E402

from pipeline.run.batch import load_plan, run_batch  # noqa: E402
from pipeline.run.compute import (
    ComputeConfig,  # noqa: E402
    dask_client,  # noqa: E402
)
from pipeline.sim.simulate import SimulationConfig, simulate, write_simulation  # noqa: E402

log = logging.getLogger("scaling")
REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "sample_data" / "models" / "uptrack_cells_cp3"


def _warm(model: str, movie: str) -> float:
    """Import Cellpose, load the model and run both detectors once on a real frame in a
    worker (first calls compile numba code); seconds it took."""
    start = time.perf_counter()
    import torch

    from pipeline.io.movie import open_movie
    from pipeline.stages.detect import DetectParams, detect_frame
    from pipeline.stages.segment import SegmentParams, segment_frame

    torch.set_num_threads(1)
    m = open_movie(movie)
    frames = m.data[0, :, 0].compute()
    segment_frame(frames[0], pixel_size_um=m.pixel_size_um,
                  params=SegmentParams(model=model, diameter_um=12.5))
    detect_frame(frames[1], 0, pixel_size_um=m.pixel_size_um, params=DetectParams())
    return time.perf_counter() - start


def make_movies(folder: Path, n_movies: int, n_frames: int, size: int) -> list[Path]:
    paths = []
    for i in range(n_movies):
        config = SimulationConfig(seed=100 + i, shape=(size, size), n_frames=n_frames, n_cells=4,
                                  cell_radius_um=(5.0, 7.5))
        paths.append(write_simulation(simulate(config), folder, f"movie{i:02d}")["movie"])
    return paths


def batch_config(path: Path, movies: list[Path], out: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "movies": [{"path": str(m)} for m in movies],
        "run_config": str(REPO / "configs" / "sample.yaml"),
        "run": {"segment": {"model": str(MODEL), "diameter_um": 12.5}},
        "output": {"dir": str(out)},
    }))
    return path


def timed_batch(config: Path, n_workers: int) -> dict:
    """Run the batch on a fresh LocalCluster of ``n_workers``; timings and the summary."""
    overrides = [f"compute.n_workers={n_workers}", "compute.threads_per_worker=1"]
    plan = load_plan(config, overrides)
    compute = ComputeConfig(backend="local", n_workers=n_workers, threads_per_worker=1)
    start = time.perf_counter()
    with dask_client(compute) as client:
        warm = client.run(_warm, str(MODEL), str(plan.jobs[0].path))
        startup_s = time.perf_counter() - start
        load_before = os.getloadavg()[0]
        cpu_before = _worker_cpu_s()
        start = time.perf_counter()
        report = run_batch(plan, client=client)
        seconds = time.perf_counter() - start
        cores_used = (_worker_cpu_s() - cpu_before) / seconds
    if report.failed:
        raise RuntimeError(f"failed movies: {[(o.name, o.error) for o in report.failed]}")
    frames = sum(_frames(job) for job in plan.jobs)
    log.info("%d worker(s): %d movies, %d frames in %.1f s (start-up %.1f s; warm-up %s)",
             n_workers, len(plan.jobs), frames, seconds, startup_s,
             ", ".join(f"{s:.0f} s" for s in warm.values()))
    return {"workers": n_workers, "movies": len(plan.jobs), "frames": frames, "seconds": seconds,
            "startup_s": startup_s, "load": (load_before + os.getloadavg()[0]) / 2,
            "cores_used": cores_used,
            "summary": report.summary}


def _worker_cpu_s() -> float:
    """CPU seconds used so far by this process's child processes (the Dask workers)."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _frames(job) -> int:
    from pipeline.io.results import load_results

    return int(load_results(job.store).attrs["n_frames"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--movies", type=int, default=4, help="movies in the batch (default 4)")
    parser.add_argument("--frames", type=int, default=24, help="frames per batch movie (default 24)")
    parser.add_argument("--long-frames", type=int, default=64, help="frames of the single long movie (default 64)")
    parser.add_argument("--size", type=int, default=256, help="frame size, px (default 256)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each case, best reported (default 2)")
    parser.add_argument("--workdir", type=Path, help="keep movies and results here (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="uptrack-scaling-") as tmp:
        folder = args.workdir or Path(tmp)
        movies = make_movies(folder / "movies", args.movies, args.frames, args.size)
        long_movie = make_movies(folder / "long", 1, args.long_frames, args.size)
        rows, checks = [], []
        for label, files in ((f"batch of {args.movies} movies x {args.frames} frames", movies),
                             (f"one movie x {args.long_frames} frames", long_movie)):
            tag = "batch" if len(files) > 1 else "long"
            runs: dict[int, list[dict]] = {1: [], 2: []}
            for repeat in range(args.repeats):  # interleaved, so that load from others hits both
                for n_workers in (1, 2):
                    out = folder / f"{tag}_w{n_workers}_r{repeat}"
                    config = batch_config(folder / f"{tag}_{n_workers}.yaml", files, out)
                    runs[n_workers].append(timed_batch(config, n_workers))
            best = {n: min(r, key=lambda x: x["seconds"]) for n, r in runs.items()}
            summaries = [r["summary"].drop(columns="store") for rs in runs.values() for r in rs]
            checks.append((label, all(s.equals(summaries[0]) for s in summaries)))
            for n_workers, r in best.items():
                all_s = ", ".join(f"{x['seconds']:.0f}" for x in runs[n_workers])
                rows.append([label, str(n_workers), str(r["frames"]), f"{r['seconds']:.1f}", all_s,
                             f"{r['frames'] / r['seconds']:.2f}",
                             f"{best[1]['seconds'] / r['seconds']:.2f}x", f"{r['cores_used']:.2f}",
                             f"{r['frames'] / (r['seconds'] * r['cores_used']):.2f}",
                             f"{r['startup_s']:.0f}", f"{r['load']:.1f}"])
        table = markdown_table(["work", "worker processes", "frames", "wall s (best)", "all runs, s",
                                "frames / s", "speed-up", "worker CPU s / wall s", "frames / worker CPU s",
                                "cluster start-up s",
                                "load average"], rows)
        body = f"""
`benchmarks/scaling.py`: the same `uptrack batch` work (`pipeline.run.batch.run_batch`) on a
fresh Dask `LocalCluster` of 1, then 2 worker processes (1 thread each). Simulated
{args.size}×{args.size} px movies, 4 cells each, the demo settings (`configs/sample.yaml`:
shipped Cellpose model, default detection). Timed from the first task to the summary
written; each cluster is warmed first (every worker loads Cellpose and runs both
detectors once, compiling their numba code: "cluster start-up", not in the wall time).
{args.repeats} runs of each, 1 and 2 workers interleaved; the best is shown. Movies run
concurrently (one per worker process); within a movie, segmentation and detection run
as Dask tasks of 4 frames and the single-process stages as one task each on a worker.

Machine: {machine_line()}. The machine is shared: "worker CPU s / wall s" is the CPU
time the workers got per second of the run (at most 1 per worker; 2 workers that get
much less than 2 were competing with other jobs for the 2 cores); "frames / worker CPU
s" is the work done per CPU second, which stays the same from 1 to 2 workers when
splitting the work costs nothing; "load average" the machine's 1-minute load during
the run, this run's own workers included.

{table}

Results identical with 1 and 2 workers (batch summary, every rate and count):
{", ".join(f"{label}: {'yes' if same else 'NO'}" for label, same in checks)}.
"""
        replace_section("Scaling", body)
    return 0 if all(same for _, same in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
