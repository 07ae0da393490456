"""One writer per store: an exclusive lock file beside the store.

``uptrack run`` (and each movie of ``uptrack batch``) holds ``<name>.zarr.lock`` from
before it looks at what is at its output path until its store is complete or the run
fails. A second run on the same output is refused with the first one's process,
host and start time, so two runs can never mix their tables in one store, and
neither can delete a store the other is writing.

The lock file is created with ``O_CREAT | O_EXCL`` (atomic on local file systems
and on NFS v3+). A lock left by a run that was killed is taken over when its
process is gone from this host; a lock from another host is never taken over
automatically (its owner may still be running there): the message says how to
remove it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import InputError

log = logging.getLogger(__name__)


def lock_path(store: str | Path) -> Path:
    """The lock file of ``store``: ``<store>.lock`` beside it (it survives the store's removal)."""
    store = Path(store)
    return store.with_name(store.name + ".lock")


def _owner_alive(owner: dict) -> bool:
    """Whether the process that wrote a lock may still run (always True for another host)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def _read_owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextmanager
def store_lock(store: str | Path, *, purpose: str = "uptrack run") -> Iterator[Path]:
    """Hold the exclusive write lock of ``store`` for the duration of the block.

    Parameters
    ----------
    store
        The store's path (``<name>.zarr``); it need not exist yet.
    purpose
        What holds the lock, recorded in the lock file and shown to a refused run.

    Yields
    ------
    pathlib.Path
        The lock file.

    Raises
    ------
    InputError
        If another live process holds the lock; the message names it and the fix.
    """
    path = lock_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
             "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            old = _read_owner(path)
            if old and not _owner_alive(old):
                log.warning("%s: taking over the lock of a run that is gone (pid %s on %s, since %s)",
                            store, old.get("pid"), old.get("host"), old.get("since"))
                path.unlink(missing_ok=True)
                continue
            who = (f"{old.get('purpose', 'a run')} (pid {old.get('pid')} on {old.get('host')}, since "
                   f"{old.get('since')})" if old else "another process")
            raise InputError(
                f"{store} is being written by {who}; nothing was changed. Wait for that run to end, or "
                f"choose another output.name. If that run is dead (e.g. on another node), delete {path}."
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(owner, fh)
        break
    else:  # pragma: no cover - lost a race twice with runs starting at the same instant
        raise InputError(f"{store}: could not take its lock {path}; try again")
    try:
        yield path
    finally:
        if _read_owner(path).get("pid") == owner["pid"]:
            path.unlink(missing_ok=True)
