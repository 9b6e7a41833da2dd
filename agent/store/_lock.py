"""One agent per store: an exclusive lock file next to the database."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import shlex
import stat
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from agent.store._sqlite import INODE, RECOVERING, open_private
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
    names = ("", "-wal", "-shm", ".lock", ".issued", INODE, RECOVERING)
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


def become_store_owner(store_path: Path) -> int | None:
    """Root on a store in a folder every user can write: go on as the store file's owner.

    Root's files there are for good (the folder's sticky bit keeps the agent from
    replacing them): the `.issued` mark root's write left behind the agent could neither
    read nor update, and a file root created first (`.lock`, a recovered store) it could
    not open at all. As the owner, what is written is the agent's as if it wrote it; the
    store's files are then checked as that user's (refuse_squatted). Only there: under
    the shipped unit the owner cannot enter the service's folder (/var/lib/private).

    Returns:
        The uid now in effect, or None when nothing changed (not root, another folder, a
        store root owns or none yet).

    Raises:
        StoreError: the process could not take the owner's ids.
    """
    if os.geteuid() != 0 or world_writable(store_path.parent) is None:
        return None
    try:
        st = os.lstat(store_path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid == 0 or st.st_size == 0:
        return None  # an empty file or a link another user put there: refused as such
    if unreadable := _closed_to(st.st_uid, st.st_gid, _code_dirs()):
        # Dropped for good, it would fail at its first lazy import (halfway through).
        raise StoreError(
            f"{store_path} belongs to uid {st.st_uid}, who cannot read {unreadable} (this "
            f"Python's files); nothing was changed. Run it as that user: {_sudo(st.st_uid)}",
            path=store_path,
        )
    try:
        os.setgroups([])
        os.setgid(st.st_gid)
        os.setuid(st.st_uid)  # as root: real, effective and saved uid, for good
    except OSError as exc:
        raise StoreError(
            f"cannot act as {store_path}'s owner (uid {st.st_uid}): {exc.strerror}; run this "
            f"as that user: {_sudo(st.st_uid)}",
            path=store_path,
        ) from exc
    return st.st_uid


def _code_dirs() -> list[Path]:
    """Where this process imports from: the standard library, the installed packages and
    this package."""
    import agent  # this package's folder (not a global of this module: no cycle)

    found = [sysconfig.get_path("stdlib"), sysconfig.get_path("purelib")]
    found.append(os.path.dirname(os.path.dirname(os.path.abspath(agent.__file__))))
    return [Path(p) for p in found if p]


def _closed_to(uid: int, gid: int, dirs: list[Path]) -> Path | None:
    """The first folder of `dirs` (or on the way to it) that uid:gid, with no other
    group, may not enter and read, judged by the mode bits; None when all are open."""
    for folder in dirs:
        steps = [*reversed(folder.parents), folder]
        for i, step in enumerate(steps):
            want = 0o5 if i == len(steps) - 1 else 0o1  # the folder: read and enter
            try:
                st = os.stat(step)
            except OSError:
                break  # not there: nothing is imported from it
            shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
            if (st.st_mode >> shift) & want != want:
                return step
    return None


def _sudo(uid: int) -> str:
    """This very command, run as `uid`."""
    try:
        who = pwd.getpwuid(uid).pw_name
    except KeyError:
        who = f"#{uid}"  # sudo's form for a uid with no name
    # The command by its path: sudo searches its own secure_path, where a venv's or
    # /opt/edge-agent/bin's edge-agent is not (the name alone: "command not found").
    program = sys.argv[0] if os.path.basename(sys.argv[0]) == "edge-agent" else "edge-agent"
    if os.sep in program:
        program = os.path.abspath(program)
    return shlex.join(["sudo", "-u", who, program, *sys.argv[1:]])


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
