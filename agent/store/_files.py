"""The store file at startup: is it corrupt, and if so move it aside, never delete it.

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

import json
import logging
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.store._pairing import refuse_other_names, refuse_unpaired_wal
from agent.store._sqlite import (
    BUSY_TIMEOUT_S,
    MAGIC,
    connect_ro,
    create_fresh,
    fsync_dir,
    is_corrupt,
    ro_uri,
    store_file,
)
from agent.store.errors import StoreError

log = logging.getLogger(__name__)

SEQ_FLOOR_PER_SECOND = 100  # see the module docstring
_MAX_PLAUSIBLE_SEQ = 10**15


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A damaged or foreign file that was moved aside.

    Attributes:
        path: where it is now (next to the store, never deleted).
        reason: why it was moved.
        recovered_seq: the last seq read from it (None when unreadable).
        seq_restart: the first seq of the fresh store.
    """

    path: Path
    reason: str
    recovered_seq: int | None
    seq_restart: int


ISSUED = ".issued"  # beside the store: the highest seqs it ever issued
SEQ_KEYS = ("last_seq", "last_summary_seq")


def issued_path(path: Path) -> Path:
    return path.with_name(path.name + ISSUED)


def read_issued(path: Path) -> dict[str, int]:
    """The highest seqs issued from the store at `path` ({} when never written or
    unreadable: the clock floor is the fallback)."""
    try:
        data = json.loads(issued_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k in SEQ_KEYS and plausible_seq(v)}


class IssuedMark:
    """Keeps `<store>.issued` at the store's last seqs, after every commit (writer thread).

    A store file restored from a backup numbers from where the backup stopped, reusing ids
    the backend already has (it drops the new alerts as duplicates); this file, beside it,
    says how far this store got. Not fsynced: after a power cut the database is ahead of
    it, which is harmless; it only has to outlive a restore of the database file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written: tuple[int, ...] | None = None

    def after_commit(self, conn: sqlite3.Connection) -> None:
        values = tuple(
            int(r[0]) if (r := conn.execute("SELECT value FROM meta WHERE key = ?", (k,))
                          .fetchone()) else 0
            for k in SEQ_KEYS
        )  # fmt: skip
        if values == self._written:
            return
        target = issued_path(self.path)
        tmp = target.with_name(target.name + ".tmp")
        try:
            data = json.dumps(dict(zip(SEQ_KEYS, values, strict=True))).encode()
            with os.fdopen(create_fresh(tmp), "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except OSError as exc:  # a full disk: the clock floor still stands behind it
            log.warning("cannot record the last seq in %s: %s", target, exc)
            return
        self._written = values


def seq_floor() -> int:
    """The wall-clock seq floor (see the module docstring)."""
    return int(time.time() * SEQ_FLOOR_PER_SECOND)


# Tables every schema version of the store has (v1 and v2): a file with other tables is
# another application's database.
_OUR_TABLES = frozenset({"alerts", "meta", "monitor_state"})
# How our schema reads in SQLite's own page of table definitions (sqlite_master keeps the
# CREATE statements as text): found in a file whose header is destroyed, it says "ours".
_SIGNATURES = (b"CREATE TABLE monitor_state (", b"CREATE TABLE meta (key TEXT PRIMARY KEY")
_SCAN_BYTES = 1 << 20  # the schema pages sit at the start of the file (and its WAL)


def refuse_directory(path: Path) -> None:
    """A directory at the store's path: SQLite would only say "disk I/O error".

    Raises:
        StoreError: `path` is a directory.
    """
    if path.is_dir():
        raise StoreError(
            f"store.path {path} is a directory, not a file: name the database file inside "
            f"it (e.g. {path / 'outbox.db'})",
            path=path,
        )


def _has_signature(path: Path) -> bool:
    for f in (path, path.with_name(path.name + "-wal")):
        try:
            with f.open("rb") as fh:
                data = fh.read(_SCAN_BYTES)
        except OSError:
            continue
        if any(sig in data for sig in _SIGNATURES):
            return True
    return False


def _looks_ours(path: Path) -> bool:
    """Evidence that a damaged file was an edge-agent store: the seq mark the agent writes
    beside its store after every commit, or our schema's text inside the file."""
    return issued_path(path).exists() or _has_signature(path)


def foreign(
    path: Path, timeout: float = BUSY_TIMEOUT_S, *, damage_is_ours: bool = False
) -> str | None:
    """What the existing file at `path` is when it is NOT an edge-agent store; None when
    it is ours (intact or damaged), or empty (an empty file or database becomes a store).

    A store.path that names another application's file (a typo) must be refused and left
    exactly as it is. Looks without changing anything (read-only connection).

    damage_is_ours: the running agent's view. A file that is not a readable SQLite
    database (a power cut's garbage, a store whose first page was lost) is taken as its own
    damaged store: it is moved aside byte for byte and reported, and the agent goes on
    alerting, instead of refusing to start and silencing every machine. Only a readable
    database of another application is refused (the agent would add its tables into it).

    Raises:
        sqlite3.Error / OSError: it cannot be read now (locked, permissions).
    """
    # Without waiting: a FIFO another user put at the name in /tmp held a command for ever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return f"not a regular file (mode {stat.filemode(mode)})"
        head = os.read(fd, len(MAGIC))
    finally:
        os.close(fd)
    if not head:
        return None
    if head != MAGIC:
        if damage_is_ours or _looks_ours(path):
            return None  # our store with its header destroyed: quarantined by precheck
        return f"not an SQLite database (it starts with {head!r})"
    conn = connect_ro(path, timeout)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise
        if damage_is_ours or _looks_ours(path):
            return None
        return f"a damaged SQLite database with no sign of being an edge-agent store ({exc})"
    finally:
        conn.close()
    if not tables or tables >= _OUR_TABLES:
        return None
    shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    return f"an SQLite database of another application (tables: {shown})"


def check_path(
    path: Path,
    timeout: float = BUSY_TIMEOUT_S,
    *,
    damage_is_ours: bool = False,
    warn_links: bool = True,
) -> None:
    """Refuse a store.path that names a directory or a file that is not our store
    (damage_is_ours: see foreign). warn_links: log a second name nothing opened (once
    per command: the store's opening checks again, without).

    Raises:
        StoreError: what is at `path` cannot be a store, or cannot be opened as it is (a
            WAL beside it written for another file, a second name): nothing was changed.
        sqlite3.Error / OSError: it cannot be read now (locked, permissions).
    """
    refuse_directory(path)
    # Before anything opens it: SQLite would read (or delete) a WAL that is not this file's.
    refuse_other_names(path, warn=warn_links)
    refuse_unpaired_wal(path)
    if path.exists() and (found := foreign(path, timeout, damage_is_ours=damage_is_ours)):
        raise StoreError(
            f"{path} is not an edge-agent store: {found}. It was left untouched. Check "
            "store.path in the configuration: it must name the agent's own store file, "
            "or a file that does not exist yet (the agent creates it)",
            path=path,
        )


def precheck(path: Path, schema_version: int) -> str | None:
    """Why an existing file is corrupt, or None if it is fine.

    Looks without changing anything: the header is read by hand, and quick_check runs on a
    read-only connection, which can neither checkpoint nor drop the WAL of a damaged file
    (a read-write connection would, on close, and destroy evidence).

    Raises:
        StoreError: the file is not corrupt but cannot be used (newer schema).
        sqlite3.Error / OSError: it cannot be read (locked, permissions): not corrupt.
    """
    with path.open("rb") as f:
        head = f.read(len(MAGIC))
    if not head:
        return None  # an empty file is an empty database
    if head != MAGIC:
        return f"not an SQLite database (header {head[:16]!r})"
    conn = connect_ro(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > schema_version:
            # A newer agent wrote it: not corrupt, so never quarantine; refuse to touch it.
            raise StoreError(
                f"{path} has schema version {version}, this agent knows {schema_version}",
                path=path,
            )
        rows = [r[0] for r in conn.execute("PRAGMA quick_check(20)").fetchall()]
    except sqlite3.DatabaseError as exc:
        if is_corrupt(exc):
            return f"{type(exc).__name__}: {exc}"
        raise
    finally:
        conn.close()
    if rows != ["ok"]:
        return "quick_check: " + "; ".join(map(str, rows))[:500]
    return None


def aside_name(path: Path, what: str) -> Path:
    """A free name next to the store for a file moved aside (never overwrites evidence)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.{what}-{stamp}")
    n = 1
    while any(target.with_name(target.name + s).exists() for s in ("", "-wal", "-shm")):
        n += 1
        target = path.with_name(f"{path.name}.{what}-{stamp}.{n}")
    return target


def move_aside(path: Path, target: Path, *, sidecars: bool = True) -> None:
    """Rename the file (and its -wal/-shm) to target; open descriptors stay valid."""
    if path.exists():
        os.replace(path, target)
    if sidecars:
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.replace(side, target.with_name(target.name + suffix))
    fsync_dir(path.parent)


def recover_last_seq(path: Path) -> int | None:
    """Best effort: the highest seq still readable from a (quarantined) file."""
    best: int | None = None
    queries = (
        "SELECT value FROM meta WHERE key = 'last_seq'",
        "SELECT max(seq) FROM alerts",
        "SELECT max(seq) FROM dead_letters",  # a schema v1 file
    )
    try:
        conn = sqlite3.connect(ro_uri(path), uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        for q in queries:
            try:
                row = conn.execute(q).fetchone()
            except sqlite3.Error:
                continue
            if row and plausible_seq(row[0]):
                best = row[0] if best is None else max(best, row[0])
    finally:
        conn.close()
    return best


def plausible_seq(value: object) -> bool:
    """A damaged page can yield any integer; an absurd one would only risk overflow."""
    return isinstance(value, int) and 0 <= value <= _MAX_PLAUSIBLE_SEQ


def quarantine(path: Path, reason: str) -> Quarantined:
    """Move a corrupt store aside at startup; the caller creates the fresh one."""
    path = store_file(path)
    target = aside_name(path, "corrupt")
    move_aside(path, target)
    recovered = recover_last_seq(target)
    restart = max((recovered or 0) + 1, seq_floor())
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
