"""One agent per store: an exclusive lock file next to the database."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path

from agent.store._sqlite import INODE, open_private
from agent.store.errors import StoreError, StoreSquattedError


class StoreInUseError(RuntimeError):
    """Another agent process already runs on this store."""


def lock_path(store_path: Path) -> Path:
    """The lock file a running agent holds next to its store."""
    return store_path.with_name(store_path.name + ".lock")


def world_writable(folder: Path) -> int | None:
    """The folder's mode when every local user may create files in it (/tmp), else None."""
    try:
        mode = stat.S_IMODE(os.stat(folder).st_mode)
    except OSError:
        return None
    return mode if mode & stat.S_IWOTH else None


def refuse_squatted(store_path: Path) -> None:
    """Refuse a store file another user put in a folder every user can write.

    In /tmp (or any folder of mode 1777/0777) any local user can create `<store>.lock`
    first and hold it (the agent refuses to start, `maintenance` takes it for a running
    agent), or create the database or its WAL for the agent to write its alerts into.
    A file there owned by neither this process's user nor root is refused, untouched.

    Raises:
        StoreSquattedError: such a file is there (the message names it and its owner).
    """
    folder = store_path.parent
    mode = world_writable(folder)
    if mode is None:
        return
    me = os.geteuid()
    names = ("", "-wal", "-shm", ".lock", ".issued", INODE)
    for f in (store_path.with_name(store_path.name + n) for n in names):
        try:
            owner = os.lstat(f).st_uid  # the entry itself: a symlink put there counts
        except OSError:
            continue
        if owner in (0, me):
            continue
        try:
            who = f"{pwd.getpwuid(owner).pw_name}, uid {owner}"
        except KeyError:
            who = f"uid {owner}"
        raise StoreSquattedError(
            f"{f} belongs to another user ({who}) and its folder {folder} may be written "
            f"by every local user (mode {mode:04o}): whoever made it can hold the store's "
            "lock (the agent would not start, maintenance would take it for a running "
            "agent) or have the agent write its alerts into their file. Nothing was "
            "changed. Set store.path to a folder only the agent's user can write "
            "(/var/lib/edge-agent under the shipped systemd unit)",
            path=store_path,
        )


@contextlib.contextmanager
def store_lock(store_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the store for this process's lifetime.

    Two agents writing one store would each number alerts and deliver the other's; the lock
    also tells `edge-agent maintenance` whether an agent is running.

    Raises:
        StoreInUseError: another process holds the lock.
        StoreError: the lock file cannot be created (a read-only or missing folder), or a
            store file in a folder every user can write is another user's (refuse_squatted).
    """
    path = lock_path(store_path)
    refuse_squatted(store_path)
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
