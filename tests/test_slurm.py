"""A tiny batch through a real single-node SLURM (dask-jobqueue's SLURMCluster).

SLURM comes from Debian's slurm-wlm + munge, configured and started on this machine by
``.ci/slurm-setup.sh`` (CI runs it before the tests; as root, this module runs it
itself when SLURM does not answer). Where SLURM cannot start the tests skip, saying
why; ``pytest -m "not slurm"`` leaves them out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_batch import MODEL, assert_same_results, tiny_movie

from pipeline import load_results
from pipeline.cli.app import main as cli_main
from pipeline.run.runner import run

# a cluster whose jobs never start must fail the test, not hang the suite
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / ".ci" / "slurm-setup.sh"


def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None or shutil.which("srun") is None:
        return False
    try:
        state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return state.returncode == 0 and any(s.startswith(("idle", "mixed", "alloc")) for s in state.stdout.split())


@pytest.fixture(scope="module")
def slurm():
    """A SLURM that takes jobs, started with .ci/slurm-setup.sh if needed (root only)."""
    if not _slurm_answers():
        if os.geteuid() != 0 or os.environ.get("UPTRACK_SLURM_SETUP") == "0":
            pytest.skip("SLURM is not running; start it with `bash .ci/slurm-setup.sh` (root)")
        setup = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
        if setup.returncode != 0 or not _slurm_answers():
            pytest.skip(f"SLURM could not start here: {(setup.stdout + setup.stderr)[-800:]}")
    return True


def test_batch_runs_on_slurm_workers(slurm, tmp_path, capsys):
    movies = tmp_path / "movies"
    tiny_movie(movies, "slurm_rep1", 21)
    tiny_movie(movies, "slurm_rep2", 22)
    logs = tmp_path / "slurm-logs"
    config = tmp_path / "hpc.yaml"
    config.write_text(yaml.safe_dump({
        "movies": [{"glob": str(movies / "*.ome.tif"), "name_pattern": r"_rep(?P<replicate>\d+)",
                    "metadata": {"condition": "slurm"}}],
        "run": {"input": {"channels": {"cells": "cells", "particles": "particles"}},
                "segment": {"model": str(MODEL), "diameter_um": 7.0}},
        "output": {"dir": str(tmp_path / "out")},
        "compute": {"backend": "slurm", "jobqueue": {
            "cores": 2, "processes": 2, "memory": "4GB", "walltime": "00:20:00",
            "log_directory": str(logs), "local_directory": str(tmp_path / "dask"),
            "job_extra_directives": ["--comment=uptrack-test"], "jobs": 1}},
    }))

    assert cli_main(["batch", str(config), "--dry-run"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH -J uptrack-worker" in script and "#SBATCH --cpus-per-task=2" in script
    assert "#SBATCH -t 00:20:00" in script and "#SBATCH --comment=uptrack-test" in script

    assert cli_main(["batch", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 movies ok" in out

    # the workers were SLURM jobs that joined this batch's scheduler
    err_files = sorted(logs.glob("uptrack-worker-*.err"))
    assert err_files, f"no SLURM job logs in {logs}"
    worker_log = "\n".join(p.read_text() for p in err_files)
    assert "Registered to:" in worker_log and "Start worker" in worker_log

    summary = load_results(tmp_path / "out" / "slurm_rep1.zarr")
    assert summary.attrs["metadata"] == {"condition": "slurm", "replicate": 1}
    # same results as the movie run alone, in one process
    for name in ("slurm_rep1", "slurm_rep2"):
        stored = load_results(tmp_path / "out" / f"{name}.zarr")
        alone_config = stored.attrs["config"]
        alone_config["output"]["dir"] = str(tmp_path / "alone")
        alone_config["compute"] = {"backend": "sync"}
        from pipeline.run.config import RunConfig

        alone = run(RunConfig.model_validate(alone_config))
        assert_same_results(stored.path, alone)


def test_a_job_slurm_can_never_start_is_an_error_not_a_hang(slurm, tmp_path):
    """More cores than any node has: SLURM would keep the job PENDING (PartitionConfig) for ever."""
    from pipeline.errors import InputError
    from pipeline.run.compute import ComputeConfig, dask_client

    node_cpus = max(int(c.rstrip("+")) for c in subprocess.run(
        ["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True).stdout.split())
    config = ComputeConfig.model_validate({"backend": "slurm", "jobqueue": {
        "cores": 2 * node_cpus, "processes": 1, "memory": "1GB", "walltime": "00:05:00",
        "local_directory": str(tmp_path / "dask"), "jobs": 1}})
    with pytest.raises(InputError, match=rf"SLURM can never start .*cores={2 * node_cpus}.*sbatch --test-only says"):
        with dask_client(config):
            pass
    queued = subprocess.run(["squeue", "-h", "-n", "uptrack-worker", "-o", "%i"], capture_output=True, text=True)
    assert queued.stdout.split() == []  # nothing was left waiting in the queue
