"""Batch runs: many movies, one config, one Dask cluster (``uptrack batch CONFIG.yaml``).

A batch config lists movies (paths or globs, each with optional metadata such as
condition, particle type, replicate), the run settings every movie shares (the
sections of a run config), the output folder and the ``compute`` section. Planning
turns it into one `MovieJob` per movie (pure: `plan_batch`; the globbing is done
before, by `find_movies`); `run_batch` runs the jobs on one shared Dask client,
several movies at once, and writes the batch summary.

Per movie: one store ``<output.dir>/<name>.zarr`` (the movie's metadata in its
``metadata`` attribute) and one log ``<output.dir>/logs/<name>.log``. For the batch:
``<output.dir>/<summary>.csv`` and ``.parquet`` with one row per movie
(``level == "movie"``: pooled rates, status ``ok`` / ``failed``, the error) and one
row per cell (``level == "cell"``), each with the movie's name and metadata columns.

Resume and isolation
    Each movie's store records the stages it finished and is marked complete only
    at the end (`pipeline.run.runner`). Started again after a kill, a batch skips movies
    whose store is complete (same config and input), resumes the others at their
    first unfinished stage, and starts the rest. A movie that fails (unreadable or
    corrupt file, a stage raising, a worker dying on it) is recorded as failed with
    its error in the summary and its log, and the other movies go on; the command
    then exits 1. Summary files are written whole and renamed into place.
"""

from pipeline.run.batch.display import BatchDisplay
from pipeline.run.batch.dry_run import describe_plan
from pipeline.run.batch.execute import check_models, run_batch, run_movie
from pipeline.run.batch.outcome import BatchReport, MovieOutcome
from pipeline.run.batch.plan import BatchPlan, MovieJob, find_movies, load_plan, plan_batch, unmatched_message
from pipeline.run.batch.schema import BatchConfig, BatchOutput, MovieEntry, load_batch_config
from pipeline.run.batch.summary import summary_table, write_table_atomic

__all__ = ["BatchConfig", "BatchDisplay", "BatchOutput", "BatchPlan", "BatchReport", "MovieEntry", "MovieJob", "MovieOutcome",
           "check_models", "describe_plan", "find_movies", "load_batch_config", "load_plan", "plan_batch", "run_batch",
           "run_movie", "summary_table", "unmatched_message", "write_table_atomic"]
