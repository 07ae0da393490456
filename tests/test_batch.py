"""uptrack batch: planning, a real LocalCluster batch against one-by-one runs, failure
isolation, a real SIGKILL and resume, the job scripts dask-jobqueue writes.

Movies are tiny simulations (96 x 96 px, 8 frames, 2 cells) so that each runs in
seconds once the two worker processes have loaded Cellpose (shared by the tests of
this module through one LocalCluster).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from pipeline import load_results
from pipeline.cli.app import main as cli_main
from pipeline.errors import InputError
from pipeline.io import store
from pipeline.run.batch import find_movies, load_batch_config, load_plan, plan_batch, run_batch
from pipeline.run.compute import ComputeConfig, dask_client, job_script
from pipeline.run.runner import STAGES, run
from pipeline.sim.simulate import SimulationConfig, simulate, write_simulation

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "sample_data" / "models" / "uptrack_cells_cp3"
NAMES = ("ctrl_rep1", "ctrl_rep2", "dyn_rep1")
TABLES = ("particles", "tracks", "events", "cells", "movie")


def tiny_movie(folder: Path, name: str, seed: int) -> Path:
    config = SimulationConfig(seed=seed, shape=(96, 96), n_frames=8, n_cells=2, cell_radius_um=(3.0, 4.0),
                              n_particles_initial=8, n_bound_initial=5, n_vesicular_initial=5,
                              k_internalization_per_min=1.0, k_release_per_min=0.5)
    return write_simulation(simulate(config), folder, name)["movie"]


@pytest.fixture(scope="module")
def movies(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("movies")
    for seed, name in enumerate(NAMES, start=11):
        tiny_movie(folder, name, seed)
    return folder


@pytest.fixture(scope="module")
def client():
    """A real LocalCluster: two worker processes, one thread each."""
    with dask_client(ComputeConfig(backend="local", n_workers=2, threads_per_worker=1)) as c:
        yield c


def batch_yaml(path: Path, movies: Path, out: Path, **extra) -> Path:
    """A batch config over the tiny movies (metadata from the file names and given)."""
    raw = {
        "movies": [{"glob": str(movies / "*.ome.tif"),
                    "name_pattern": r"(?P<condition>[a-z]+)_rep(?P<replicate>\d+)",
                    "metadata": {"particle_type": "EV"}}],
        "metadata": {"experiment": "test"},
        "run": {"input": {"channels": {"cells": "cells", "particles": "particles"}},
                "segment": {"model": str(MODEL), "diameter_um": 7.0}},
        "output": {"dir": str(out)},
        "compute": {"backend": "local", "n_workers": 2},
        **extra,
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_same_results(a: Path, b: Path) -> None:
    """Two stores hold the same tables, cell labels and kinetics."""
    ra, rb = load_results(a), load_results(b)
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(ra, name), getattr(rb, name), obj=f"{a.name} {name}")
    np.testing.assert_array_equal(ra.cell_labels.compute(), rb.cell_labels.compute())
    assert ra.kinetics.load().equals(rb.kinetics.load())


@pytest.fixture(scope="module")
def batch_run(movies, client, tmp_path_factory):
    """The three movies run as one batch on the shared LocalCluster, two at a time."""
    folder = tmp_path_factory.mktemp("batch")
    config = batch_yaml(folder / "batch.yaml", movies, folder / "out", movies_at_once=2)
    plan = load_plan(config)
    return plan, run_batch(plan, client=client)


# --- planning (no cluster) ------------------------------------------------------------------


def test_plan_names_metadata_overrides_and_settings(movies, tmp_path):
    config = batch_yaml(tmp_path / "b.yaml", movies, tmp_path / "out")
    raw = yaml.safe_load(config.read_text())
    raw["movies"].append({"path": str(movies / "ctrl_rep1.ome.tif"), "name": "again",
                          "metadata": {"condition": "special", "replicate": "7b"},
                          "overrides": {"detect.min_snr": 4.5}})
    config.write_text(yaml.safe_dump(raw))
    batch, settings = load_batch_config(config)
    plan = plan_batch(batch, settings, find_movies(batch))
    assert [j.name for j in plan.jobs] == [*NAMES, "again"]
    first, last = plan.jobs[0], plan.jobs[-1]
    assert first.metadata == {"experiment": "test", "condition": "ctrl", "replicate": 1, "particle_type": "EV"}
    assert last.metadata["replicate"] == "7b" and last.metadata["condition"] == "special"
    assert last.config.detect.min_snr == 4.5 and first.config.detect.min_snr != 4.5
    assert first.config.segment.model == str(MODEL) and first.config.segment.diameter_um == 7.0
    assert first.store == tmp_path / "out" / "ctrl_rep1.zarr"
    assert first.config.output.name == "ctrl_rep1" and first.config.compute.n_workers == 2
    assert plan.metadata_columns == ("experiment", "condition", "replicate", "particle_type")
    assert plan.movies_at_once == 2

    raw["movies"][-1]["name"] = "ctrl_rep2"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match="two movies are named 'ctrl_rep2'"):
        load_plan(config)


def test_batch_config_errors_name_file_and_field(movies, tmp_path):
    config = batch_yaml(tmp_path / "b.yaml", movies, tmp_path / "out")
    raw = yaml.safe_load(config.read_text())
    raw["movies"][0]["metadata"] = {"status": "x"}
    raw["compute"]["jobqueue"] = {"cores": 2, "processes": 4}
    raw["outputs"] = {}
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError) as err:
        load_batch_config(config)
    message = str(err.value)
    assert str(config) in message
    assert "metadata key 'status' is a column of the summary" in message
    assert "compute.jobqueue: processes (4) must not exceed cores (2)" in message
    assert "outputs: unknown field; allowed: movies, metadata, run_config, run, output" in message

    raw = yaml.safe_load(batch_yaml(config, movies, tmp_path / "out").read_text())
    raw["run"]["detect"] = {"min_snrr": 3}
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=r"detect.min_snrr: unknown field; allowed: .*min_snr"):
        load_plan(config)
    raw["run"].pop("detect")
    raw["movies"][0]["glob"] = str(tmp_path / "nothing" / "*.tif")
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match="matches no movie"):
        load_plan(config)


def test_generated_job_scripts():
    jobqueue = {"queue": "gpu", "account": "proj42", "cores": 8, "processes": 4, "memory": "32GB",
                "walltime": "01:30:20", "job_extra_directives": ["--qos=high"],
                "job_script_prologue": ["module load cuda"], "local_directory": "$TMPDIR",
                "python": "/opt/venv/bin/python"}
    slurm = job_script(ComputeConfig(backend="slurm", jobqueue=jobqueue), "tcp://10.1.2.3:8786")
    lines = slurm.splitlines()
    for line in ("#SBATCH -J uptrack-worker", "#SBATCH -p gpu", "#SBATCH -A proj42", "#SBATCH -n 1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=30G", "#SBATCH -t 01:30:20",
                 "#SBATCH --qos=high", "module load cuda"):
        assert line in lines, line
    worker = lines[-1].split()
    assert worker[:4] == ["/opt/venv/bin/python", "-m", "distributed.cli.dask_worker", "tcp://10.1.2.3:8786"]
    assert worker[worker.index("--nworkers") + 1] == "4" and worker[worker.index("--nthreads") + 1] == "2"
    assert worker[worker.index("--memory-limit") + 1] == "7.45GiB"
    assert worker[worker.index("--local-directory") + 1] == "$TMPDIR"
    assert lines.index("module load cuda") < len(lines) - 1

    pbs = job_script(ComputeConfig(backend="pbs", jobqueue=jobqueue)).splitlines()
    assert "#PBS -q gpu" in pbs and "#PBS -A proj42" in pbs and "#PBS -l walltime=01:30:20" in pbs
    assert "#PBS -l select=1:ncpus=8:mem=30GB" in pbs
    lsf = job_script(ComputeConfig(backend="lsf", jobqueue=jobqueue)).splitlines()
    assert '#BSUB -P "proj42"' in lsf and "#BSUB -W 01:31" in lsf and "#BSUB -n 8" in lsf


def test_dry_run_prints_plan_and_job_script(movies, tmp_path, capsys):
    config = batch_yaml(tmp_path / "b.yaml", movies, tmp_path / "out",
                        compute={"backend": "slurm", "jobqueue": {"queue": "debug", "cores": 2, "processes": 2,
                                                                  "memory": "4GB", "walltime": "00:30:00",
                                                                  "adaptive_max_jobs": 3}})
    assert cli_main(["batch", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 movies" in out and "SLURM via dask-jobqueue, adaptive, 0 to 3 jobs" in out
    for name in NAMES:
        assert f"{name} " in out
    assert "condition=ctrl, replicate=1" in out and "new" in out
    assert "#SBATCH -p debug" in out and "#SBATCH -t 00:30:00" in out and "--nworkers 2" in out
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


# --- running (real LocalCluster) -------------------------------------------------------------


def test_batch_equals_movies_run_one_by_one(batch_run, client, tmp_path):
    plan, report = batch_run
    assert report.exit_code == 0 and [o.status for o in report.outcomes] == ["ok"] * 3
    for job in plan.jobs:
        alone = job.config.model_copy(update={"output": job.config.output.model_copy(
            update={"dir": tmp_path / "alone"})})
        path = run(alone, client=client)  # the single-movie runner, stages in this process
        assert_same_results(job.store, path)
        attrs = load_results(job.store).attrs
        assert attrs["metadata"] == job.metadata and attrs["complete"]
        assert list(attrs["stages_completed"]) == list(STAGES)
        assert "track_cells: 2 cells over the movie" in job.log_file.read_text()


def test_batch_summary_has_a_row_per_movie_and_per_cell(batch_run):
    plan, report = batch_run
    for path in (plan.summary_csv, plan.summary_parquet):
        assert path.exists()
    table = pd.read_parquet(plan.summary_parquet)
    pd.testing.assert_frame_equal(table, report.summary, check_dtype=False)
    csv = pd.read_csv(plan.summary_csv)
    assert len(csv) == len(table) and list(csv.columns) == list(table.columns)
    assert list(table.columns[:8]) == ["level", "movie", "experiment", "condition", "replicate",
                                       "particle_type", "status", "error"]
    for job in plan.jobs:
        results = load_results(job.store)
        rows = table[table["movie"] == job.name]
        movie_row = rows[rows["level"] == "movie"].iloc[0]
        cell_rows = rows[rows["level"] == "cell"].reset_index(drop=True)
        assert movie_row["status"] == "ok" and movie_row["n_cells"] == len(results.cells)
        for key, value in job.metadata.items():
            assert (rows[key] == value).all()
        for column in results.movie.columns:
            assert movie_row[column] == pytest.approx(results.movie[column].iloc[0], nan_ok=True)
        assert cell_rows["cell_id"].tolist() == results.cells["cell_id"].tolist()
        rates = ["n_internalization", "k_internalization_per_min", "k_release_per_min_ci_high"]
        np.testing.assert_allclose(cell_rows[rates].to_numpy(float), results.cells[rates].to_numpy(float))


def test_finished_batch_is_skipped_when_run_again(batch_run, client):
    plan, report = batch_run
    before = {job.name: store.read_attrs(job.store)["updated"] for job in plan.jobs}
    again = run_batch(plan, client=client)
    assert [o.note for o in again.outcomes] == ["complete already, skipped"] * 3
    assert {job.name: store.read_attrs(job.store)["updated"] for job in plan.jobs} == before
    pd.testing.assert_frame_equal(again.summary, report.summary)


def corrupt_compressed_tiff(source: Path, target: Path) -> None:
    """A zlib-compressed TCYX TIFF of ``source`` whose frame 5 pixel data is overwritten."""
    data = tifffile.imread(source)
    tifffile.imwrite(target, data, photometric="minisblack", compression="zlib", metadata={"axes": "TCYX"})
    with tifffile.TiffFile(target) as tif:
        offset = tif.pages[5 * 2].dataoffsets[0]
    with open(target, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * 64)


def test_corrupt_or_missing_movies_fail_alone(batch_run, movies, client, tmp_path, capsys):
    plan, _ = batch_run
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.ome.tif").write_bytes(b"II*\x00garbage" * 400)
    corrupt_compressed_tiff(movies / "ctrl_rep2.ome.tif", bad / "damaged.tif")
    raw = {
        "movies": [
            {"path": str(movies / "ctrl_rep1.ome.tif"), "metadata": {"condition": "ctrl", "replicate": 1}},
            {"path": str(bad / "garbage.ome.tif")},
            {"path": str(bad / "damaged.tif"),
             "overrides": {"input.axes": "TCYX", "input.pixel_size_um": 0.2, "input.frame_interval_s": 3.0,
                           "input.channels.cells": 0, "input.channels.particles": 1}},
            {"path": str(bad / "missing.ome.tif")},
        ],
        "metadata": {"particle_type": "EV", "experiment": "test"},
        "run": yaml.safe_load(batch_yaml(tmp_path / "x.yaml", movies, tmp_path)
                              .read_text())["run"],
        "output": {"dir": str(tmp_path / "out")},
        "compute": {"backend": "address", "address": client.scheduler.address},
        "movies_at_once": 2,
    }
    config = tmp_path / "batch.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert cli_main(["batch", str(config), "--no-progress"]) == 1  # the real command, on the cluster
    out = capsys.readouterr().out
    assert "1 of 4 movies ok, 3 failed" in out
    assert (tmp_path / "out" / "ctrl_rep1.report.html").is_file()  # the ok movie's report
    assert "reports:" in out and "compare:" not in out  # one condition: nothing to compare

    table = pd.read_csv(tmp_path / "out" / "batch_summary.csv")
    movies_rows = table[table["level"] == "movie"].set_index("movie")
    assert movies_rows["status"].to_dict() == {"ctrl_rep1": "ok", "garbage": "failed",
                                               "damaged": "failed", "missing": "failed"}
    assert "cannot read as TIFF" in movies_rows.loc["garbage", "error"]
    assert "no such file" in movies_rows.loc["missing", "error"]
    assert movies_rows.loc["damaged", "error"]  # failed in a segmentation task on a worker
    assert set(table.loc[table["level"] == "cell", "movie"]) == {"ctrl_rep1"}
    assert "Traceback" in (tmp_path / "out" / "logs" / "damaged.log").read_text()
    # the damaged movie got as far as opening its store, which stays incomplete
    damaged = tmp_path / "out" / "damaged.zarr"
    assert not store.read_attrs(damaged)["complete"]
    with pytest.raises(InputError, match="incomplete"):
        load_results(damaged)
    good = next(job for job in plan.jobs if job.name == "ctrl_rep1")
    assert_same_results(tmp_path / "out" / "ctrl_rep1.zarr", good.store)


class Killed(BaseException):
    """Stands for SIGKILL inside this process: nothing after it runs."""


@pytest.mark.parametrize("stage", ["zones", "classify"])
def test_stage_killed_after_replacing_its_input_resumes_from_that_input(batch_run, client, tmp_path,
                                                                        monkeypatch, stage):
    """zones and classify replace the particles table they read; killed after that write but
    before the stage is marked done, the rerun must start from the original input."""
    plan, _ = batch_run
    job = plan.jobs[1]
    config = job.config.model_copy(update={"output": job.config.output.model_copy(update={"dir": tmp_path})})
    mark = store.mark_stage_done

    def kill_at(path, name, seconds=None):
        if name == stage:
            raise Killed
        mark(path, name, seconds)

    monkeypatch.setattr(store, "mark_stage_done", kill_at)
    with pytest.raises(Killed):
        run(config, client=client)
    monkeypatch.setattr(store, "mark_stage_done", mark)
    path = tmp_path / f"{job.name}.zarr"
    assert stage not in store.read_attrs(path)["stages_completed"]
    if stage == "classify":  # the particles table already holds classify's output
        assert "state" in load_results(path, allow_partial=True).particles.columns
    run(config, client=client)
    assert_same_results(path, job.store)


def test_batch_killed_with_sigkill_resumes_to_identical_results(batch_run, movies, tmp_path):
    """``uptrack batch`` in a subprocess (its own LocalCluster) is SIGKILLed, with its workers,
    once the first movie is complete and the second has finished a stage; run again, it
    skips the first, resumes the second and gives what an uninterrupted run gives."""
    plan, report = batch_run
    out = tmp_path / "out"
    config = batch_yaml(tmp_path / "batch.yaml", movies, out, movies_at_once=1)
    command = [sys.executable, "-m", "pipeline.cli.app", "batch", str(config), "--no-progress"]
    first, second = out / f"{NAMES[0]}.zarr", out / f"{NAMES[1]}.zarr"

    def attrs(path):
        try:
            return store.read_attrs(path)
        except InputError:
            return {}

    proc = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if attrs(first).get("complete") and attrs(second).get("stages_completed"):
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed = attrs(second)
    assert not killed.get("complete") and killed.get("stages_completed"), killed
    assert not (out / f"{NAMES[2]}.zarr").exists() or not attrs(out / f"{NAMES[2]}.zarr").get("complete")
    assert not (out / "batch_summary.csv").exists()
    with pytest.raises(InputError, match="incomplete"):  # a partial store is never read as complete
        load_results(second)
    first_updated = attrs(first)["updated"]
    done_before = list(killed["stages_completed"])

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{NAMES[0]}: complete already, skipped" in rerun.stderr
    assert f"{NAMES[1]}: resumed after {', '.join(done_before)}" in rerun.stderr
    assert attrs(first)["updated"] == first_updated  # the finished movie was not touched
    resumed = attrs(second)
    assert {s: resumed["stage_seconds"][s] for s in done_before} == \
        {s: killed["stage_seconds"][s] for s in done_before}  # finished stages not redone
    assert "resuming" in (out / "logs" / f"{NAMES[1]}.log").read_text()

    for job in plan.jobs:  # identical to the uninterrupted batch
        assert_same_results(out / f"{job.name}.zarr", job.store)
    summary = pd.read_parquet(out / "batch_summary.parquet")
    expected = report.summary
    pd.testing.assert_frame_equal(summary.drop(columns=["store"]), expected.drop(columns=["store"]),
                                  check_dtype=False)


def test_batch_writes_movie_reports_and_the_condition_comparison(batch_run, tmp_path):
    """ctrl (2 movies) and dyn (1 movie): a report per movie and the ctrl/dyn comparison."""
    from pipeline.cli.batch import write_reports

    plan, report = batch_run
    out = tmp_path / "copy"
    shutil.copytree(plan.output_dir, out, ignore=shutil.ignore_patterns("*.lock"))
    stores = sorted(out.glob("*.zarr"))
    written = write_reports(stores, out)
    assert written["movies"] == 3 and all(s.with_suffix(".report.html").is_file() for s in stores)
    html = Path(written["compare"]).read_text()
    assert "dyn" in html and "ctrl" in html
    ratios = pd.read_csv(out / "compare" / "ratios.csv")
    assert set(ratios["condition"]) | set(ratios["reference"]) == {"ctrl", "dyn"}
