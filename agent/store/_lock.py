"""One agent per store: an exclusive lock file next to the database."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


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
    """
    path = lock_path(store_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
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
