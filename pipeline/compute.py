"""Dask clusters from the config, and mapping tasks over them with progress.

Dask is the engine at every scale: a ``LocalCluster`` of worker processes on a
laptop or workstation, an existing scheduler, or (see ``batch``) a job-queue cluster.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from tqdm.auto import tqdm

from pipeline.config import ComputeConfig

log = logging.getLogger(__name__)


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
    bar = tqdm(total=len(items), desc=desc, unit="task", leave=True)
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
