"""A store damaged or replaced while the agent runs: detect it, copy out, carry on.

Detection (on the writer thread, before and after every transaction):
- error class: SQLITE_CORRUPT / SQLITE_NOTADB from any statement;
- the file at the store's path is not the one we opened (device/inode changed, or it is
  gone): `mv other.db outbox.db` or `rm outbox.db`. SQLite itself notices neither and
  keeps committing into the unlinked inode, so every later "acknowledged" alert would be
  lost when the process ends;
- its header is no longer SQLite's (overwritten in place).

- a row that cannot be read back: a TEXT value that is not UTF-8, an item body that is not
  JSON (a bad sector inside a record, which SQLite's page checks do not see).

Recovery: every readable row of our open connection (which still reaches the old inode)
is copied into `<store>.recovering` (its own rollback journal, one transaction per table,
a range-bisecting fallback around damaged pages), a completion marker is committed, the
damaged or foreign file is moved aside (never deleted), and the copy is renamed into place
and opened like any store. A row whose text is not UTF-8 or whose body is not JSON is not
copied (it would only break the fresh store the same way): it is counted and logged by seq
and id with the rows on unreadable pages. Nothing committed to the old file before
detection is lost when the old file is readable (a replacement), and what was unreadable
is counted. A crash in the middle is finished at the next open (`finish_interrupted`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.store._files import aside_name, move_aside, plausible_seq, seq_floor
from agent.store._routing import TABLES
from agent.store._schema import ddl_statements
from agent.store._sqlite import (
    MAGIC,
    RECOVERING,
    create_fresh,
    fsync_dir,
    identity,
    now_ts,
    ro_uri,
    store_file,
)

log = logging.getLogger(__name__)

_MARKER = "salvage_complete"
_MAX_STATEMENTS = 4000  # bound on the bisection around damaged pages, per recovery
_PAGE_ROWS = 5000  # rows copied per transaction
_LOST_SHOWN = 50  # lost rows named in the log and the fault, per recovery
_ROW_OK = "agent_row_ok"  # SQL function: are a row's values what we could have written
_ID_COLS = {table: id_col for table, id_col in TABLES.values()}
_QUALIFY = re.compile(r"^(CREATE (?:TABLE|INDEX) IF NOT EXISTS )(\w+)")


@dataclass(frozen=True, slots=True)
class StoreFault:
    """What happened to the store file at run time, and what recovery did.

    Attributes:
        kind: "corrupt" (SQLite reported damage) or "replaced" (another file, or none,
            is at the store's path).
        reason: the detection, in words.
        detected_at: UTC timestamp.
        moved_to: where the damaged or foreign file went (None: there was none).
        copied: rows copied into the fresh store, per table.
        lost_rows: rows that could not be read, per table (an upper bound).
        seq_restart: the next alert seq of the fresh store.
        lost: the alerts and summaries lost, as "<table> seq <n> (<id>)" or a seq range
            of unreadable pages (the first _LOST_SHOWN).
    """

    kind: str
    reason: str
    detected_at: str
    moved_to: Path | None
    copied: dict[str, int] = field(default_factory=dict)
    lost_rows: dict[str, int] = field(default_factory=dict)
    seq_restart: int = 0
    lost: tuple[str, ...] = ()


def file_fault(path: Path, opened: tuple[int, int] | None, head_fd: int | None) -> str | None:
    """Why the file at `path` is no longer the store we opened, or None.

    head_fd: a descriptor on the file we opened, kept open while we use it, to read its
    header through. Never a fresh open and close of the file: closing any descriptor of
    a file drops every POSIX lock this process holds on it, SQLite's shared lock too, and
    another process's connection (`edge-agent requeue`) then takes itself for the last
    one on close and deletes the WAL we go on writing into. None: no header check."""
    now = identity(path)
    if now is None:
        return f"{path} disappeared while open (deleted or moved away)"
    if opened is not None and now != opened:
        return f"{path} was replaced by another file while open (inode {opened[1]} -> {now[1]})"
    if head_fd is None:
        return None
    try:
        head = os.pread(head_fd, len(MAGIC), 0)
    except OSError:
        return None  # unreadable right now: SQLite's own errors will say more
    if head and head != MAGIC:
        return f"{path} was overwritten: its header is not SQLite's ({head[:16]!r})"
    return None


def _columns(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info({table})")]


class _Copier:
    """Copies the old connection's tables into the attached fresh database.

    A table goes in pages of _PAGE_ROWS rowids (one transaction each, so a big store shows
    steady progress to the watchdog); a page that fails is halved down to single rows, so
    one damaged leaf costs only the rows on it.
    """

    def __init__(self, conn: sqlite3.Connection, progress: Callable[[], None]) -> None:
        self.conn = conn
        self.progress = progress
        self.statements = 0
        self.lost: dict[str, int] = {}
        self.named: list[str] = []  # lost alerts and summaries, bounded (_LOST_SHOWN)
        self._cols: dict[str, list[str]] = {}
        self._bad: dict[str, dict[int, str]] = {}  # table -> rowid -> id (as readable)
        self._runs: list[list[Any]] = []  # [table, first, last] rowids on unreadable pages
        conn.create_function(_ROW_OK, -1, self._row_ok)  # not deterministic: it records

    def _row_ok(self, table: str, rowid: int, *values: bytes | None) -> int:
        """1 when every value reads back as text (and a body as a JSON object), else 0 and
        the row is remembered. Values arrive CAST AS BLOB: the bytes as stored."""
        try:
            texts = [None if v is None else bytes(v).decode() for v in values]
            for name, text in zip(self._cols[table], texts, strict=True):
                if name == "body" and not isinstance(json.loads(text or "null"), dict):
                    raise ValueError("body is not a JSON object")
            return 1
        except (ValueError, TypeError):  # UnicodeDecodeError and JSONDecodeError included
            cols = self._cols[table]
            id_col = _ID_COLS.get(table)
            raw = values[cols.index(id_col)] if id_col in cols else None
            shown = bytes(raw).decode(errors="replace")[:64] if raw is not None else "?"
            self._bad.setdefault(table, {})[int(rowid)] = shown
            return 0

    def _name(self, text: str) -> None:
        if len(self.named) < _LOST_SHOWN:
            self.named.append(text)

    def _try(self, sql: str, args: tuple[int, ...] = ()) -> bool:
        self.statements += 1
        try:
            self.conn.execute("BEGIN")  # deferred: locks only what it touches
            self.conn.execute(sql, args)
            self.conn.execute("COMMIT")
            return True
        except sqlite3.DatabaseError:
            with contextlib.suppress(sqlite3.Error):
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            return False
        finally:
            self.progress()

    def _ranges(self, name: str, sql: str, lo: int, hi: int) -> int:
        """Copy rowids lo..hi, halving around what fails; returns rowids given up."""
        stack = [(lo, hi)]
        lost = 0
        while stack:
            a, b = stack.pop()
            if self.statements >= _MAX_STATEMENTS:
                lost += b - a + 1
                self._name_range(name, a, b)
                continue
            if self._try(sql + " rowid BETWEEN ? AND ?", (a, b)):
                continue
            if a == b:
                lost += 1
                self._name_range(name, a, b)
                continue
            mid = (a + b) // 2
            stack += [(mid + 1, b), (a, mid)]
        return lost

    def _name_range(self, name: str, a: int, b: int) -> None:
        """Remember unreadable rowids of an item table (its seq), adjacent ones as one run
        (the bisection gives them up in ascending order)."""
        if name not in _ID_COLS:
            return
        runs = self._runs
        if runs and runs[-1][0] == name and runs[-1][2] == a - 1:
            runs[-1][2] = b
        elif len(runs) < _LOST_SHOWN:
            runs.append([name, a, b])

    def _page_end(self, name: str, after: int, hi: int) -> int | None:
        """The last rowid of the next page after `after` (the rest, if paging fails)."""
        try:
            row = self.conn.execute(
                f"SELECT max(rowid) FROM (SELECT rowid FROM main.{name} WHERE rowid > ? "
                "ORDER BY rowid LIMIT ?)",
                (after, _PAGE_ROWS),
            ).fetchone()
        except sqlite3.DatabaseError:
            return hi
        return None if row is None or row[0] is None else int(row[0])

    def table(self, name: str) -> None:
        try:
            old = set(_columns(self.conn, "main", name))
        except sqlite3.DatabaseError:
            old = set()
        cols = [c for c in _columns(self.conn, "fresh", name) if c in old]
        if not cols:
            return  # a table the old file did not have (or whose schema is unreadable)
        names = ", ".join(cols)
        self._cols[name] = cols
        check = f"{_ROW_OK}('{name}', rowid, " + ", ".join(f"CAST({c} AS BLOB)" for c in cols)
        sql = (
            f"INSERT OR IGNORE INTO fresh.{name} ({names}) SELECT {names} FROM main.{name} "
            f"WHERE {check}) AND"
        )
        try:
            lo, hi = self.conn.execute(f"SELECT min(rowid), max(rowid) FROM main.{name}").fetchone()
        except sqlite3.DatabaseError:
            if not self._try(sql + " 1"):
                self.lost[name] = -1  # not even its bounds are readable: unknown how many
            return
        if lo is None:
            return
        lost, cur = 0, int(lo) - 1
        while cur < int(hi) and (end := self._page_end(name, cur, int(hi))) is not None:
            lost += self._ranges(name, sql, cur + 1, end)
            cur = end
        for table, a, b in self._runs:
            self._name(
                f"{table} seq {a}..{b}: unreadable" if a < b else f"{table} seq {a}: unreadable"
            )
        self._runs.clear()
        bad = self._bad.get(name, {})
        for rowid, shown in sorted(bad.items()):
            if name in _ID_COLS:
                self._name(f"{name} seq {rowid} ({shown}): damaged text")
        lost += len(bad)
        if lost:
            self.lost[name] = lost


def _drop_dangling(conn: sqlite3.Connection) -> dict[str, int]:
    """Delivery rows whose item was unreadable would claim a backlog that cannot be sent;
    returns, per item table, how many items had such rows: lost even when no statement
    failed (a damaged interior page can hide a whole leaf without an error)."""
    items: dict[str, int] = {}
    conn.execute("BEGIN")
    for klass, (table, _) in TABLES.items():
        missing = (
            f"FROM fresh.outbound WHERE class = ? AND ref NOT IN (SELECT seq FROM fresh.{table})"
        )
        items[table] = conn.execute(f"SELECT count(DISTINCT ref) {missing}", (klass,)).fetchone()[0]
        conn.execute(f"DELETE {missing}", (klass,))
    conn.execute("COMMIT")
    return items


def _copy(
    conn: sqlite3.Connection, tmp: Path, progress: Callable[[], None] = lambda: None
) -> tuple[dict[str, int], dict[str, int], int, list[str]]:
    """Copy every table into tmp; returns rows copied, rows lost, the last seq seen, and
    the lost items by name (bounded)."""
    conn.execute("ATTACH DATABASE ? AS fresh", (str(tmp),))
    try:
        conn.execute("PRAGMA fresh.journal_mode=DELETE")
        conn.execute("PRAGMA fresh.synchronous=FULL")
        conn.execute("BEGIN")
        for stmt in ddl_statements():
            conn.execute(_QUALIFY.sub(r"\1fresh.\2", stmt))
        conn.execute("COMMIT")
        copier = _Copier(conn, progress)
        tables = [
            r[0] for r in conn.execute("SELECT name FROM fresh.sqlite_master WHERE type = 'table'")
        ]
        for name in tables:
            copier.table(name)
        for table, n in _drop_dangling(conn).items():
            known = copier.lost.get(table, 0)
            if known >= 0 and n > known:  # vanished without an error: lost all the same
                copier.named.append(f"{n - known} {table} with deliveries but no readable row")
                copier.lost[table] = n
        copied = {t: conn.execute(f"SELECT count(*) FROM fresh.{t}").fetchone()[0] for t in tables}
        last = 0
        for sql in (
            "SELECT value FROM fresh.meta WHERE key = 'last_seq'",
            "SELECT max(seq) FROM fresh.alerts",
        ):
            value = conn.execute(sql).fetchone()
            if value and plausible_seq(value[0]):
                last = max(last, int(value[0]))
        conn.execute("BEGIN")
        conn.execute(
            "INSERT OR REPLACE INTO fresh.meta (key, value) VALUES (?, ?)", (_MARKER, now_ts())
        )
        conn.execute("COMMIT")
    finally:
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        with contextlib.suppress(sqlite3.Error):
            conn.execute("DETACH DATABASE fresh")
    return copied, copier.lost, last, copier.named


def salvage(
    conn: sqlite3.Connection,
    path: Path,
    kind: str,
    reason: str,
    progress: Callable[[], None] = lambda: None,
) -> StoreFault:
    """Copy the open store out, move the bad file aside, put the copy in its place.

    Closes `conn` (the caller opens the store again at `path`). On failure nothing has
    been moved and `conn` is still open: the caller retries later. `progress` is called
    after every statement of the copy (the writer tells the watchdog it is not stuck).
    """
    path = store_file(path)
    tmp = path.with_name(path.name + RECOVERING)
    if tmp.is_symlink():
        # Never ours (we make no links): another user's in /tmp, through which the copy
        # of every alert was written where it pointed, as root, then made the store.
        tmp.unlink()
    elif tmp.exists():
        move_aside(tmp, aside_name(tmp, "stale"), sidecars=False)
    try:
        # The recovered store, 0640 as the store was (its journal too); a new file.
        os.close(create_fresh(tmp))
        copied, lost, last, named = _copy(conn, tmp, progress)
    except BaseException:
        for f in (tmp, tmp.with_name(tmp.name + "-journal")):
            with contextlib.suppress(OSError):
                f.unlink()  # our own incomplete copy, not evidence
        raise
    moved_to: Path | None = None
    if path.exists():
        moved_to = aside_name(path, kind)
        # Replaced: the file at the path is foreign, its -wal/-shm are still ours (moved
        # below). Corrupt: the file and its sidecars are the evidence, kept together.
        move_aside(path, moved_to, sidecars=kind == "corrupt")
    with contextlib.suppress(sqlite3.Error):
        conn.close()  # after the move: SQLite sees the move and leaves the WAL alone
    if kind != "corrupt" and any(path.with_name(path.name + s).exists() for s in ("-wal", "-shm")):
        move_aside(path, aside_name(path, "previous"))  # only the sidecars remain here
    os.replace(tmp, path)
    fsync_dir(path.parent)
    restart = max(last + 1, seq_floor()) if kind == "corrupt" else last + 1
    if named:
        log.error(
            "store recovery could not copy %s: %s%s",
            ", ".join(f"{n} {t} row(s)" for t, n in lost.items()),
            "; ".join(named),
            f" (first {_LOST_SHOWN} shown)" if len(named) >= _LOST_SHOWN else "",
        )
    return StoreFault(kind, reason, now_ts(), moved_to, copied, lost, restart, tuple(named))


def finish_interrupted(path: Path) -> None:
    """At open: a recovery cut off by a crash is finished, or its leftovers moved aside."""
    path = store_file(path)
    tmp = path.with_name(path.name + RECOVERING)
    if tmp.is_symlink():
        tmp.unlink()  # not our recovery (see salvage): never made the store
        return
    if not tmp.exists():
        return
    complete = False
    with contextlib.suppress(sqlite3.Error):
        conn = sqlite3.connect(ro_uri(tmp), uri=True, timeout=1.0)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (_MARKER,)).fetchone()
            complete = row is not None
        finally:
            conn.close()
    if not complete:
        target = aside_name(tmp, "incomplete")
        move_aside(tmp, target, sidecars=False)
        log.error("an interrupted store recovery left %s (incomplete); moved aside", target)
        return
    if path.exists():
        target = aside_name(path, "superseded")
        move_aside(path, target)
        log.error(
            "store %s replaced by its completed recovery copy; old file kept at %s", path, target
        )
    else:
        move_aside(path, aside_name(path, "previous"))  # stray -wal/-shm of the old store
    os.replace(tmp, path)
    fsync_dir(path.parent)
    log.warning("finished an interrupted store recovery: %s is the recovered copy", path)
