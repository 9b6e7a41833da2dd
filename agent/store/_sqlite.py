"""SQLite plumbing shared by the store's modules: connections, error classes, timestamps.

Runs only on the store's writer thread (or in a short-lived CLI process), never on the
event loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

from agent.store.errors import StoreBusyError, StoreError, StoreFullError

WAL_LIMIT_BYTES = 4 * 2**20  # truncate the WAL back to this after a checkpoint
BUSY_TIMEOUT_S = 5.0
MAGIC = b"SQLite format 3\x00"
CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
# Python's sqlite3 raises this OperationalError (no SQLite code) for a TEXT value that is
# not UTF-8. We only ever store str, so such a value is damage, not data.
_UNDECODABLE = "Could not decode to UTF-8"


class RowDamaged(sqlite3.DatabaseError):
    """A stored row is not what we wrote (its JSON body does not parse): the file is damaged
    where SQLite's page checks cannot see it, e.g. a bad sector inside a record."""


def now_ts() -> str:
    """Wall-clock UTC timestamp, same format as the alert record."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def primary_code(exc: BaseException) -> int | None:
    """SQLite's primary result code of an exception, if it carries one."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def is_full(exc: BaseException) -> bool:
    """True for SQLITE_FULL or ENOSPC/EDQUOT: the disk has no room."""
    if primary_code(exc) == sqlite3.SQLITE_FULL:
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def is_corrupt(exc: BaseException) -> bool:
    """True for "database disk image is malformed", "file is not a database", and a row
    whose text cannot be read back (not UTF-8, or a body that is not JSON): damage either
    way, and reading it again fails again, so the store must be salvaged, not retried."""
    if isinstance(exc, RowDamaged):
        return True
    if isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(_UNDECODABLE):
        return True
    return primary_code(exc) in CORRUPT_CODES


def translate(exc: BaseException, path: Path, doing: str) -> StoreError:
    """Our error for a sqlite3/OS error (callers raise it `from` the original)."""
    name = getattr(exc, "sqlite_errorname", None)
    if name is None and isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno)
    if primary_code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreBusyError(
            f"{doing} failed on {path}: the store is busy (another process holds a lock on "
            f"it: a long write, a backup, an sqlite3 shell); retry in a moment ({exc})",
            path=path,
            code=name,
        )
    cls = StoreFullError if is_full(exc) else StoreError
    return cls(f"{doing} failed on {path}: {exc}", path=path, code=name)


# The store's files: alerts and dead letters may hold plant data. Owner reads and writes,
# its group reads (a site lets operators run `alerts` by that group), others nothing,
# whatever the umask of a hand-started agent (0022: readable by anyone). SQLite gives
# the -wal, -shm and -journal it creates the mode of their database file.
STORE_MODE = 0o640
SIDECARS = ("-wal", "-shm")
INODE = ".inode"  # beside the store: the inode of the file its WAL is written for
RECOVERING = ".recovering"  # beside the store: the copy a recovery makes


def create_private(path: Path) -> None:
    """Create `path` empty with STORE_MODE (less what the umask takes) if it is absent;
    an existing file is left as it is."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, STORE_MODE))


def open_private(path: Path, flags: int) -> int:
    """os.open with O_CREAT and STORE_MODE (for a file that is then written or locked)."""
    return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, STORE_MODE)


def create_fresh(path: Path) -> int:
    """A new, empty file at `path` (STORE_MODE), open for writing: a file to be renamed
    over one of the store's. Whatever was at the name is removed first and never opened:
    in a folder every user can write, a link another user put there would have had an
    agent run as root truncate and write the file it points to (/etc/shadow)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # another user's in a sticky folder: EPERM, the write is given up
    return os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, STORE_MODE
    )


def withhold_from_others(path: Path) -> bool:
    """Take the permissions of others off a file of ours (a store made before they were
    set, under a umask of 0022); True when it changed. Another user's file is left."""
    try:
        st = os.stat(path)
        if st.st_uid != os.geteuid() or not st.st_mode & 0o007:
            return False
        os.chmod(path, st.st_mode & 0o7770)
    except OSError:  # absent, or not ours to change: SQLite's own errors say more
        return False
    return True


def connect(path: Path) -> sqlite3.Connection:
    """A read-write connection in WAL mode with synchronous=FULL."""
    # isolation_level=None: we issue BEGIN/COMMIT ourselves (group commit).
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot enable WAL on {path} (got {mode})", path=path)
        # FULL: the WAL is fsynced at every commit, so an ack survives a power cut.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        # Debian builds SQLite with secure_delete on: every freed page is zeroed into the
        # WAL, so a prune writes as much as it frees, and on a full disk cannot commit.
        conn.execute("PRAGMA secure_delete=FAST")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def ro_uri(path: str | os.PathLike[str]) -> str:
    """The URI SQLite opens `path` read-only by. The name is percent-encoded: written as
    it is, a '#' or '?' in it ends the file name there (and drops mode=ro: a read-write
    connection that creates, and reads, another file) and '%41' names another file."""
    name = urllib.parse.quote(os.fspath(path))  # '/' stays, '%', '#', '?' are encoded
    # An empty authority first: a path starting '//' is not taken for a host.
    return f"file://{name}?mode=ro" if name.startswith("/") else f"file:{name}?mode=ro"


def connect_ro(path: Path, timeout: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A read-only connection: it can neither checkpoint nor drop a WAL."""
    return sqlite3.connect(ro_uri(path), uri=True, timeout=timeout)


# SQLite's unix locks: every open connection holds a read lock on these bytes of the file
# (in WAL mode for as long as it is open); a checkpoint on close needs them all.
_SHARED_FIRST = 2**30 + 2
_SHARED_SIZE = 510


def _open_here(ident: tuple[int, int]) -> bool:
    """Whether this process has a descriptor on the file (device, inode) already."""
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own, say)
            st = os.stat(f"/proc/self/fd/{name}")
            if (st.st_dev, st.st_ino) == ident:
                return True
    return False


def held_open(path: Path) -> bool:
    """True when an SQLite connection has the database file at `path` open: that very
    file, not only one that had its name (it holds SQLite's shared lock on the file).

    A file this process has open already counts as held (its own connections share their
    locks): it is not probed, since closing the probe's descriptor would drop every lock
    this process holds on the file, its SQLite connections' too.

    Raises:
        OSError: the file cannot be opened for writing.
    """
    ident = identity(path)
    if ident is not None and _open_here(ident):
        return True
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        # A write lock on the shared bytes, granted only if nobody holds any of them.
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, _SHARED_SIZE, _SHARED_FIRST)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)  # no lock of ours on this file but the probe's, which goes with it
    return False


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file durable: its directory entry goes to disk."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def store_file(path: Path) -> Path:
    """The file a store path names: the target when the path is a symlink. SQLite follows
    the link and keeps the -wal and -shm beside the target, so the store's files are moved
    aside (and a recovered copy put in place) there, and the link stays a link."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at path, None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
