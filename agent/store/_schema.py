"""Opening the outbox database: pragmas, versioned schema, and quarantine of a corrupt file.

Runs only on the store's writer thread (sqlite3 connections stay on the thread that made
them), never on the event loop.

Quarantine trade-off: a corrupt file is renamed, never deleted, and a fresh store is
created. The per-gateway seq must never be reused, because the backend deduplicates on
alert_id and would silently drop a new alert that reused an old id. So the fresh store
starts above max(the last seq still readable from the quarantined file, a wall-clock floor
of unix_seconds x 100). The floor covers a file too damaged to read: it stays above every
seq issued before as long as the gateway averaged fewer than 100 alerts per second since the
counter started (alerts are rare events) and the clock is sane. If the file is unreadable
AND the clock was reset to the past, reuse is possible; the quarantine row in the new
database records what was recovered so an operator can see it. A brand-new store starts at
the same floor (not at 1), so an operator who deletes the file does not make the backend
drop new alerts as duplicates of old ones.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.store.errors import StoreError, StoreFullError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SEQ_FLOOR_PER_SECOND = 100  # see the module docstring
_MAX_PLAUSIBLE_SEQ = 10**15
_WAL_LIMIT_BYTES = 4 * 2**20  # truncate the WAL back to this after a checkpoint
_BUSY_TIMEOUT_S = 5.0

_DDL = """
CREATE TABLE IF NOT EXISTS alerts (
    seq          INTEGER PRIMARY KEY,
    alert_id     TEXT NOT NULL UNIQUE,
    tier         INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    detected_at  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    body         TEXT NOT NULL,
    delivered_at TEXT
);
CREATE INDEX IF NOT EXISTS alerts_pending ON alerts (tier, seq) WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS alerts_delivered ON alerts (seq) WHERE delivered_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq          INTEGER PRIMARY KEY,
    alert_id     TEXT NOT NULL,
    tier         INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    detected_at  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    body         TEXT NOT NULL,
    reason       TEXT NOT NULL,
    dead_at      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS monitor_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_lives (
    id          INTEGER PRIMARY KEY,
    class       TEXT NOT NULL,
    asset       TEXT NOT NULL,
    life_hours  REAL NOT NULL,
    failed      INTEGER NOT NULL,
    ended_at    TEXT NOT NULL,
    UNIQUE (asset, ended_at)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id            INTEGER PRIMARY KEY,
    at            TEXT NOT NULL,
    path          TEXT NOT NULL,
    reason        TEXT NOT NULL,
    recovered_seq INTEGER,
    seq_restart   INTEGER NOT NULL
);
"""

_CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A corrupt file that was moved aside at open."""

    path: Path
    reason: str
    recovered_seq: int | None
    seq_restart: int


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


def translate(exc: BaseException, path: Path, doing: str) -> StoreError:
    """Our error for a sqlite3/OS error (callers raise it `from` the original)."""
    name = getattr(exc, "sqlite_errorname", None)
    if name is None and isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno)
    cls = StoreFullError if is_full(exc) else StoreError
    return cls(f"{doing} failed on {path}: {exc}", path=path, code=name)


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves (group commit).
    conn = sqlite3.connect(
        path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=True
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot enable WAL on {path} (got {mode})", path=path)
        # FULL: the WAL is fsynced at every commit, so an ack survives a power cut.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


_MAGIC = b"SQLite format 3\x00"


def _precheck(path: Path) -> str | None:
    """Why an existing file is corrupt, or None if it is fine.

    Looks without changing anything: the header is read by hand, and quick_check runs on a
    read-only connection, which can neither checkpoint nor drop the WAL of a damaged file
    (a read-write connection would, on close, and destroy evidence).

    Raises:
        StoreError: the file is not corrupt but cannot be used (newer schema).
        sqlite3.Error / OSError: it cannot be read (locked, permissions): not corrupt.
    """
    with path.open("rb") as f:
        head = f.read(len(_MAGIC))
    if not head:
        return None  # an empty file is an empty database
    if head != _MAGIC:
        return f"not an SQLite database (header {head[:16]!r})"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            # A newer agent wrote it: not corrupt, so never quarantine; refuse to touch it.
            raise StoreError(
                f"{path} has schema version {version}, this agent knows {SCHEMA_VERSION}",
                path=path,
            )
        rows = [r[0] for r in conn.execute("PRAGMA quick_check(20)").fetchall()]
    except sqlite3.DatabaseError as exc:
        if primary_code(exc) in _CORRUPT_CODES:
            return f"{type(exc).__name__}: {exc}"
        raise
    finally:
        conn.close()
    if rows != ["ok"]:
        return "quick_check: " + "; ".join(map(str, rows))[:500]
    return None


def _fsync_dir(directory: Path) -> None:
    # A rename or a new file is durable only once its directory entry is on disk.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _quarantine_files(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():  # two quarantines in one second: never overwrite evidence
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    _fsync_dir(path.parent)
    return target


def _recover_last_seq(path: Path) -> int | None:
    """Best effort: the highest seq still readable from a (quarantined) file."""
    best: int | None = None
    queries = (
        "SELECT value FROM meta WHERE key = 'last_seq'",
        "SELECT max(seq) FROM alerts",
        "SELECT max(seq) FROM dead_letters",
    )
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        for q in queries:
            try:
                row = conn.execute(q).fetchone()
            except sqlite3.Error:
                continue
            # A damaged page can yield any integer; an absurd one would only risk overflow.
            if row and isinstance(row[0], int) and 0 <= row[0] <= _MAX_PLAUSIBLE_SEQ:
                best = row[0] if best is None else max(best, row[0])
    finally:
        conn.close()
    return best


def seq_floor() -> int:
    """The wall-clock seq floor (see the module docstring)."""
    return int(time.time() * SEQ_FLOOR_PER_SECOND)


def _create(conn: sqlite3.Connection, gateway_id: str, first_seq: int | None) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        # One statement at a time: executescript() would COMMIT our open transaction.
        for stmt in _DDL.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        for key, value in (
            # A fresh store starts at the clock floor, not at 1: if an operator deleted the
            # old file, ids from 1 would collide with alerts the backend already has, and
            # it would drop the new ones as duplicates.
            ("last_seq", (seq_floor() if first_seq is None else first_seq) - 1),
            ("evicted_total", 0),
            ("dead_letter_evicted_total", 0),
            ("delivered_pruned_total", 0),
            ("gateway_id", gateway_id),
            ("created_at", now_ts()),
        ):
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _record_quarantine(conn: sqlite3.Connection, q: Quarantined) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO quarantine (at, path, reason, recovered_seq, seq_restart) "
        "VALUES (?, ?, ?, ?, ?)",
        (now_ts(), str(q.path), q.reason, q.recovered_seq, q.seq_restart),
    )
    conn.execute(
        "UPDATE meta SET value = max(value, ?) WHERE key = 'last_seq'", (q.seq_restart - 1,)
    )
    conn.execute("COMMIT")


def open_db(
    path: Path, gateway_id: str, first_seq: int | None = None
) -> tuple[sqlite3.Connection, Quarantined | None]:
    """Open or create the outbox; a corrupt file is quarantined and replaced.

    Returns:
        The connection (WAL, synchronous=FULL, schema current) and what was quarantined.

    Raises:
        StoreError: the file cannot be opened and is not corrupt (locked, newer schema,
            permissions, disk full while creating).
    """
    quarantined: Quarantined | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            reason = _precheck(path)
            if reason is not None:
                quarantined = _quarantine(path, reason)
        conn = _connect(path)
        _fsync_dir(path.parent)
        _create(conn, gateway_id, first_seq)  # idempotent: IF NOT EXISTS / INSERT OR IGNORE
        if quarantined is not None:
            _record_quarantine(conn, quarantined)
        stored_gw = conn.execute("SELECT value FROM meta WHERE key = 'gateway_id'").fetchone()
        if stored_gw and stored_gw[0] != gateway_id:
            log.warning(
                "store %s was created for gateway %s, now used as %s; seq continues",
                path,
                stored_gw[0],
                gateway_id,
            )
    except StoreError:
        raise
    except (sqlite3.Error, OSError) as exc:
        raise translate(exc, path, "opening the store") from exc
    return conn, quarantined


def _quarantine(path: Path, reason: str) -> Quarantined:
    target = _quarantine_files(path)
    recovered = _recover_last_seq(target)
    floor = seq_floor()
    restart = max((recovered or 0) + 1, floor)
    log.error(
        "STORE CORRUPT: %s moved aside to %s (%s); NOT deleted, keep it for recovery. "
        "A fresh store was created; seq restarts at %d (last readable seq: %s). "
        "Alerts not yet delivered from the old file are NOT in the new store.",
        path,
        target,
        reason,
        restart,
        recovered,
    )
    return Quarantined(target, reason, recovered, restart)
