"""`uptrack batch --dry-run`: the plan as text, nothing started."""

from __future__ import annotations

from pipeline.run.batch.outcome import one_line
from pipeline.run.batch.plan import BatchPlan, MovieJob
from pipeline.run.compute import JOBQUEUE_BACKENDS, job_script, n_worker_processes
from pipeline.run.runner import STAGES, Run


def describe_plan(plan: BatchPlan) -> str:
    """The work plan as text: compute, each movie and its store's state, outputs (starts nothing)."""

    c = plan.compute
    lines = [f"uptrack batch: {len(plan.jobs)} movies -> {plan.output_dir}"]
    if c.backend == "local":
        workers = n_worker_processes(c)
        lines.append(f"compute: Dask LocalCluster, {workers} worker processes x "
                     f"{c.threads_per_worker} thread(s), memory per worker {c.memory_per_worker}")
    elif c.backend == "address":
        lines.append(f"compute: existing Dask scheduler {c.address}")
    elif c.backend == "sync":
        lines.append("compute: no cluster (sync, one process)")
    else:
        q = c.jobqueue
        scale = (f"adaptive, {q.adaptive_min_jobs} to {q.adaptive_max_jobs} jobs"
                 if q.adaptive_max_jobs else f"{q.jobs} job(s)")
        lines.append(f"compute: {c.backend.upper()} via dask-jobqueue, {scale}; each job "
                     f"{q.cores} cores, {q.memory}, {q.processes} worker processes, walltime "
                     f"{q.walltime}")
    lines.append(f"movies at once: {plan.movies_at_once}; frames per task: {c.frames_per_task}")
    lines += [f"warning: {w}" for w in plan.warnings]
    lines.append("")
    header = f"{'movie':<24} {'state':<34} {'frames':>6}  path / metadata"
    lines += [header, "-" * len(header)]
    for job in plan.jobs:
        state, frames = _describe_state(job, Run)
        meta = ", ".join(f"{k}={v}" for k, v in job.metadata.items())
        lines.append(f"{job.name:<24} {state:<34} {frames:>6}  {job.path}")
        if meta:
            lines.append(f"{'':<24} {'':<34} {'':>6}  {meta}")
    lines += ["", f"stores:  {plan.output_dir}/<movie>.zarr",
              f"logs:    {plan.logs_dir}/<movie>.log",
              f"summary: {plan.summary_csv}", f"         {plan.summary_parquet}"]
    if c.backend in JOBQUEUE_BACKENDS:
        lines += ["", f"job script ({c.backend.upper()}; the scheduler address is filled in "
                  "when the batch runs):", "", job_script(c).rstrip()]
    return "\n".join(lines)


def _describe_state(job: MovieJob, run_cls) -> tuple[str, str]:
    """What a run of this movie would do, and its frame count (reads metadata only)."""
    if not job.path.exists():
        return "will fail: file not found", "-"
    try:
        runner = run_cls(job.config)
        decision = runner.store_decision(skip_complete=True)
    except Exception as exc:
        return f"will fail: {one_line(exc)[:60]}", "-"
    frames = str(runner.n_frames)
    if decision.action == "resume":
        return f"resume ({len(decision.done)}/{len(STAGES)} stages done)", frames
    if decision.action == "refuse":
        return f"will fail: {decision.label}", frames
    return {"skip": "complete: skip", "new": "new"}.get(decision.action, decision.label), frames
