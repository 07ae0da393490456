"""Dask clusters from the config, and mapping tasks over them with progress.

Dask is the engine at every scale: a ``LocalCluster`` of worker processes on a
laptop or workstation, an existing scheduler, or SLURM / PBS / LSF jobs started by
``dask-jobqueue`` (``compute.backend: slurm`` ...), fixed in number or adaptive.

Progress: `map_tasks` and `progress` show a tqdm bar, unless the caller routes
progress elsewhere with `progress_to` (``uptrack batch`` does, to draw one display
for many movies running at once).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

from pydantic import Field, model_validator
from tqdm.auto import tqdm

from pipeline.errors import InputError
from pipeline.params import Params

log = logging.getLogger(__name__)


JOBQUEUE_BACKENDS = ("slurm", "pbs", "lsf")


class JobQueueConfig(Params):
    """Batch jobs that host the Dask workers (``compute.backend``: slurm, pbs or lsf).

    Each job runs ``processes`` worker processes sharing ``cores`` cores and ``memory``;
    dask-jobqueue writes the job script (``uptrack batch --dry-run`` prints it).
    """

    queue: str | None = Field(None, description="Partition (SLURM) or queue (PBS, LSF).")
    account: str | None = Field(None, description="Account / project charged for the jobs.")
    cores: int = Field(4, ge=1, description="Cores per job.")
    processes: int = Field(
        2, ge=1, description="Dask worker processes per job (they share its cores and memory)."
    )
    memory: str = Field("16GB", description="Memory per job, with its unit, e.g. 16GB.")
    walltime: str = Field(
        "02:00:00", description="Wall-time limit of each job, HH:MM:SS (LSF: HH:MM)."
    )
    job_extra_directives: list[str] = Field(
        [], description="Extra scheduler directives, e.g. ['--qos=normal'] (written as #SBATCH ...)."
    )
    job_script_prologue: list[str] = Field(
        [], description="Shell lines run before the worker starts, e.g. module load, "
        "source .venv/bin/activate."
    )
    python: str | None = Field(
        None, description="Python on the compute nodes; default: the one running uptrack."
    )
    local_directory: str | None = Field(
        None, description="Node-local scratch folder for worker spill files, e.g. $TMPDIR."
    )
    log_directory: str | None = Field(None, description="Folder for the jobs' stdout/stderr.")
    interface: str | None = Field(
        None, description="Network interface the workers and scheduler use, e.g. ib0."
    )
    jobs: int = Field(1, ge=1, description="Jobs to start (ignored when adaptive_max_jobs is set).")
    adaptive_min_jobs: int = Field(0, ge=0, description="Adaptive scaling: fewest jobs kept.")
    adaptive_max_jobs: int | None = Field(
        None, ge=1, description="Adaptive scaling: most jobs; set it to let Dask add and "
        "remove jobs with the load."
    )

    @model_validator(mode="after")
    def _check(self):
        if self.processes > self.cores:
            raise ValueError(f"processes ({self.processes}) must not exceed cores ({self.cores})")
        if self.adaptive_max_jobs is not None and self.adaptive_min_jobs > self.adaptive_max_jobs:
            raise ValueError("adaptive_min_jobs must not exceed adaptive_max_jobs")
        return self


class ComputeConfig(Params):
    """Where the Dask tasks run."""

    backend: Literal["local", "address", "sync", "slurm", "pbs", "lsf"] = Field(
        "local",
        description="local: a LocalCluster of worker processes on this machine; address: "
        "an existing Dask scheduler; slurm / pbs / lsf: workers in batch jobs through "
        "dask-jobqueue (settings under jobqueue); sync: no cluster, one process (debugging).",
    )
    n_workers: int | None = Field(
        None, ge=1, description="Worker processes (local); default: one per 2 cores, at least 1."
    )
    threads_per_worker: int = Field(1, ge=1, description="Threads per worker process.")
    memory_per_worker: str = Field("auto", description="Memory limit per worker, e.g. 4GB.")
    address: str | None = Field(None, description="Scheduler address for backend: address.")
    frames_per_task: int = Field(
        4, ge=1, description="Frames each segmentation/detection task handles."
    )
    jobqueue: JobQueueConfig = Field(
        JobQueueConfig(), description="Batch jobs for backend slurm, pbs or lsf."
    )

    @model_validator(mode="after")
    def _check(self):
        if self.backend == "address" and not self.address:
            raise ValueError("backend: address needs compute.address, e.g. tcp://10.0.0.5:8786")
        return self



def default_n_workers() -> int:
    """One worker process per two cores (Cellpose and trackpy each use two threads well)."""
    return max(1, (os.cpu_count() or 1) // 2)


@contextmanager
def dask_client(config: ComputeConfig) -> Iterator[object | None]:
    """A ``distributed.Client`` for the configured backend (``None`` for ``sync``).

    Parameters
    ----------
    config
        The ``compute`` section of a run config.

    Yields
    ------
    distributed.Client or None
    """
    if config.backend == "sync":
        yield None
        return
    from distributed import Client, LocalCluster

    # distributed logs every connection it opens and closes; keep errors only
    logging.getLogger("distributed").setLevel(logging.ERROR)
    if config.backend == "address":
        with Client(config.address) as client:
            log.info("Dask scheduler %s (dashboard %s)", config.address, client.dashboard_link)
            yield client
        return
    if config.backend in JOBQUEUE_BACKENDS:
        with jobqueue_cluster(config) as cluster, Client(cluster) as client:
            q = config.jobqueue
            scale = (f"adaptive, {q.adaptive_min_jobs} to {q.adaptive_max_jobs} jobs"
                     if q.adaptive_max_jobs else f"{q.jobs} jobs")
            log.info("Dask %s cluster: %s of %d worker processes, dashboard %s",
                     config.backend.upper(), scale, q.processes, client.dashboard_link)
            yield client
        return
    n_workers = config.n_workers or default_n_workers()
    with LocalCluster(
        n_workers=n_workers,
        threads_per_worker=config.threads_per_worker,
        processes=True,
        memory_limit=config.memory_per_worker,
        dashboard_address=":0",
    ) as cluster, Client(cluster) as client:
        log.info("Dask LocalCluster: %d worker processes, dashboard %s", n_workers,
                 client.dashboard_link)
        yield client


# --- job-queue clusters (dask-jobqueue) --------------------------------------------------


def _cluster_class(backend: str):
    import dask_jobqueue

    return {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster,
            "lsf": dask_jobqueue.LSFCluster}[backend]


def _lsf_walltime(walltime: str) -> str:
    """LSF wants [HH:]MM; HH:MM:SS is rounded up to whole minutes."""
    match = re.fullmatch(r"(\d+):(\d{2}):(\d{2})", walltime.strip())
    if not match:
        return walltime
    hours, minutes, seconds = (int(g) for g in match.groups())
    minutes = hours * 60 + minutes + math.ceil(seconds / 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def jobqueue_kwargs(backend: str, q: JobQueueConfig) -> dict:
    """Keyword arguments of the dask-jobqueue cluster (and job) for a ``jobqueue`` section.

    Unset options are left out, so dask-jobqueue's own configuration
    (``~/.config/dask/jobqueue.yaml``) still applies to them.
    """
    kwargs = {
        "cores": q.cores,
        "processes": q.processes,
        "memory": q.memory,
        "walltime": _lsf_walltime(q.walltime) if backend == "lsf" else q.walltime,
        "job_extra_directives": list(q.job_extra_directives),
        "job_script_prologue": list(q.job_script_prologue),
        "python": q.python or sys.executable,
        "queue": q.queue,
        "local_directory": q.local_directory,
        "log_directory": q.log_directory,
        "interface": q.interface,
        "job_name": "uptrack-worker",
    }
    if q.account:
        kwargs["project" if backend == "lsf" else "account"] = q.account
    return {key: value for key, value in kwargs.items() if value is not None}


def job_script(config: ComputeConfig, scheduler_address: str = "tcp://SCHEDULER:8786") -> str:
    """The batch script each worker job runs, as dask-jobqueue writes it (nothing is started).

    Parameters
    ----------
    config
        A ``compute`` section with backend slurm, pbs or lsf.
    scheduler_address
        Placeholder for the scheduler the workers connect to (known once it runs).
    """
    if config.backend not in JOBQUEUE_BACKENDS:
        raise ValueError(f"backend {config.backend!r} starts no batch jobs")
    job_cls = _cluster_class(config.backend).job_cls
    kwargs = jobqueue_kwargs(config.backend, config.jobqueue)
    kwargs.pop("interface", None)  # resolving an interface needs it to exist here
    return job_cls(scheduler=scheduler_address, name="uptrack-worker", **kwargs).job_script()


@contextmanager
def jobqueue_cluster(config: ComputeConfig) -> Iterator[object]:
    """A running dask-jobqueue cluster: ``jobs`` jobs, or adaptive between min and max jobs."""
    q = config.jobqueue
    if q.log_directory:
        os.makedirs(q.log_directory, exist_ok=True)
    cluster_cls = _cluster_class(config.backend)
    with cluster_cls(**jobqueue_kwargs(config.backend, q)) as cluster:
        if config.backend == "slurm":
            check_slurm_job(cluster.job_script(), q)
        if q.adaptive_max_jobs:
            cluster.adapt(minimum_jobs=q.adaptive_min_jobs, maximum_jobs=q.adaptive_max_jobs)
        else:
            cluster.scale(jobs=q.jobs)
        yield cluster


def check_slurm_job(script: str, q: JobQueueConfig) -> None:
    """Ask SLURM whether the worker job could ever start (``sbatch --test-only``), before waiting for it.

    A request no node of the partition can meet (more cores or memory than a node has, a walltime over
    the partition's limit, an unknown partition or account) would otherwise sit ``PENDING`` for ever
    while the batch waits for workers that never come.

    Raises
    ------
    InputError
        With SLURM's answer, what the job asks for and how to see what the nodes have.
    """
    import subprocess
    import tempfile

    if shutil.which("sbatch") is None:
        return  # submission itself will say what is wrong
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as fh:
        fh.write(script)
    try:
        answer = subprocess.run(["sbatch", "--test-only", fh.name], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not ask SLURM whether the worker job can start (%s); submitting anyway", exc)
        return
    finally:
        os.unlink(fh.name)
    if answer.returncode != 0:
        said = " ".join((answer.stderr + answer.stdout).split()) or f"exit code {answer.returncode}"
        raise InputError(
            f"compute.jobqueue: SLURM can never start the worker jobs this config asks for "
            f"(cores={q.cores}, memory={q.memory}, walltime={q.walltime}, queue={q.queue}); "
            f"sbatch --test-only says: {said}. Ask for what a node of the partition has "
            "(see `sinfo -o '%P %c %m %l'`: cores, memory in MB, time limit) and run again"
        )


def n_worker_processes(config: ComputeConfig) -> int:
    """How many worker processes the config asks for (the most, when adaptive)."""
    if config.backend == "sync":
        return 1
    if config.backend in JOBQUEUE_BACKENDS:
        q = config.jobqueue
        return q.processes * (q.adaptive_max_jobs or q.jobs)
    if config.backend == "address":
        return config.n_workers or 1
    return config.n_workers or default_n_workers()


# --- progress ---------------------------------------------------------------------------

#: Where progress goes: None (a tqdm bar) or ``callback(desc, done, total)``.
_PROGRESS: ContextVar[Callable[[str, int, int], None] | None] = ContextVar("uptrack_progress",
                                                                           default=None)


@contextmanager
def progress_to(callback: Callable[[str, int, int], None]) -> Iterator[None]:
    """Send the progress of `map_tasks` and `progress` in this thread (context) to ``callback``.

    ``callback(desc, done, total)`` is called when a bar starts and at each step.
    """
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


class _CallbackBar:
    """The part of tqdm's interface the pipeline uses, reporting to a callback."""

    def __init__(self, callback, total: int, desc: str):
        self.callback, self.total, self.desc, self.n = callback, total, desc, 0
        callback(desc, 0, total)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.callback(self.desc, self.n, self.total)

    def close(self) -> None:
        pass


def progress(total: int, desc: str, unit: str = "task"):
    """A progress bar: ``.update()``, ``.close()``.

    The callback set by `progress_to` if any; else a tqdm bar when stderr is a terminal, and
    plain log lines (`progress_lines`) when it is not (a log file, a batch job's output), where
    tqdm's carriage returns would pile up.
    """
    callback = _PROGRESS.get()
    if callback is None and not _stderr_is_terminal():
        callback = progress_lines
    if callback is not None:
        return _CallbackBar(callback, total, desc)
    return tqdm(total=total, desc=desc, unit=unit, leave=True)


def _stderr_is_terminal() -> bool:
    """Whether progress bars can redraw in place (stderr is a TTY)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def progress_lines(desc: str, done: int, total: int) -> None:
    """Progress as log lines (INFO): at the start, at each tenth of the way, and at the end."""
    step = max(1, total // 10)
    if done == 0 or done == total or done % step == 0:
        log.info("%s: %d/%d", desc, done, total)


def map_tasks(client, function: Callable, items: Sequence, *, desc: str, **kwargs) -> list:
    """Run ``function(item, **kwargs)`` for every item, on the cluster when there is one.

    Parameters
    ----------
    client
        A ``distributed.Client``, or None to run in this process.
    function
        A picklable, top-level function.
    items
        One task per item.
    desc
        Label of the progress bar.

    Returns
    -------
    list
        The results, in the order of ``items``.
    """
    bar = progress(len(items), desc)
    try:
        if client is None:
            results = []
            for item in items:
                results.append(function(item, **kwargs))
                bar.update()
            return results
        from distributed import as_completed

        futures = client.map(function, items, **kwargs, pure=False)
        for _ in as_completed(futures):
            bar.update()
        return client.gather(futures)
    finally:
        bar.close()


def frame_chunks(n_frames: int, frames_per_task: int) -> list[tuple[int, int]]:
    """Split ``range(n_frames)`` into (start, stop) chunks of ``frames_per_task``."""
    return [(s, min(s + frames_per_task, n_frames)) for s in range(0, n_frames, frames_per_task)]
