"""One agent per store: an exclusive lock file next to the database."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from agent.store._sqlite import open_private
from agent.store.errors import StoreError


class StoreInUseError(RuntimeError):
    """Another agent process already runs on this store."""


def lock_path(store_path: Path) -> Path:
    """The lock file a running agent holds next to its store."""
    return store_path.with_name(store_path.name + ".lock")


@contextlib.contextmanager
def store_lock(store_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the store for this process's lifetime.

    Two agents writing one store would each number alerts and deliver the other's; the lock
    also tells `edge-agent maintenance` whether an agent is running.

    Raises:
        StoreInUseError: another process holds the lock.
        StoreError: the lock file cannot be created (a read-only or missing folder).
    """
    path = lock_path(store_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0640 (see STORE_MODE), as the store it sits beside.
        fh = os.fdopen(open_private(path, os.O_RDWR | os.O_APPEND), "a+")
    except OSError as exc:
        # The first write of a run: a folder the sandbox keeps read-only ended the agent
        # in a traceback ("agent crashed"), restarted by systemd every few seconds.
        raise StoreError(
            f"cannot write in the store's folder {path.parent} ({exc.strerror}): store.path "
            "must be in a folder the agent's user can write; under the shipped systemd unit "
            "(ProtectSystem=strict) that is /var/lib/edge-agent only",
            path=store_path,
            code=errno.errorcode.get(exc.errno or 0),
        ) from exc
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StoreInUseError(
                f"another edge-agent is running on {store_path} (lock {path} is held)"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
