"""The store seen from another process (the CLI): read-only, or one short write."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from agent.store import _ops, _queries
from agent.store._files import refuse_directory
from agent.store._queries import OutboxStats
from agent.store._sqlite import connect, connect_ro, held_open, identity, translate
from agent.store.errors import StoreError

log = logging.getLogger(__name__)

# An operator's read waits at most this long for a lock another process holds (the agent's
# own writer never blocks readers in WAL mode): "busy, retry" beats a silent hang.
READ_BUSY_S = 2.0


class StoreView:
    """Queries on an open read-only connection (see agent.store._queries)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path

    def stats(self) -> OutboxStats:
        return _queries.stats(self._conn, self._path)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        return _queries.recent(self._conn, limit)

    def recent_pages(self, limit: int) -> Iterator[list[dict[str, Any]]]:
        return _queries.recent_pages(self._conn, limit)

    def dead_letters(self, limit: int, uplink: str | None = None) -> list[dict[str, Any]]:
        return _queries.dead_letters(self._conn, limit, uplink)

    def dead_letter_pages(
        self, limit: int, uplink: str | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        return _queries.dead_letter_pages(self._conn, limit, uplink)

    def requeues(self, limit: int) -> list[dict[str, Any]]:
        return _queries.requeues(self._conn, limit)

    def note(self, key: str) -> str | None:
        return _queries.note(self._conn, key)


@contextlib.contextmanager
def _connection(
    path: Path, opener: Callable[[Path], sqlite3.Connection], doing: str
) -> Iterator[sqlite3.Connection]:
    """A connection to a store of this schema; sqlite3 errors become StoreError."""
    refuse_directory(path)
    try:
        conn = opener(path)
    except sqlite3.Error as exc:
        raise translate(exc, path, f"opening the store for {doing}") from exc
    try:
        _queries.check_version(conn, path)
        yield conn
    except sqlite3.Error as exc:
        raise translate(exc, path, doing) from exc
    finally:
        conn.close()


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[StoreView]:
    """A read-only view of a store file (WAL: it reads while the agent writes).

    Raises:
        StoreBusyError: another process holds a lock on it beyond READ_BUSY_S.
        StoreError: the file is not readable as a store of this schema.
    """
    with _connection(path, lambda p: connect_ro(p, READ_BUSY_S), "reading") as conn:
        yield StoreView(conn, path)


# Rows requeued per transaction beside a running agent: SQLite has one writer, and the
# agent's writer waits at most BUSY_TIMEOUT_S for it (150k rows in one transaction held it
# 2.5 s here, past 5 s above ~300k). A chunk is well under a second even on a slow gateway.
REQUEUE_CHUNK = 5000


def requeue_in_place(
    path: Path, *, uplink: str | None, item_ids: Sequence[str] | None, by: str
) -> list[dict[str, Any]]:
    """Requeue dead letters in a store a running agent holds (see requeue_chunks)."""
    return [d for chunk in requeue_chunks(path, uplink=uplink, item_ids=item_ids, by=by)
            for d in chunk]  # fmt: skip


def requeue_chunks(
    path: Path, *, uplink: str | None, item_ids: Sequence[str] | None, by: str
) -> Iterator[list[dict[str, Any]]]:
    """Requeue dead letters in a store a running agent holds, REQUEUE_CHUNK per transaction:
    each list is yielded once its transaction is committed, and the write lock is free
    between them, for the agent's writer. Interrupted, what was yielded stands and the rest
    are still dead letters: a rerun requeues them (each row once: it is no longer dead).
    One run goes through the dead letters in order once (see RequeueCursor): one the agent
    dead-letters again meanwhile (the backend still refuses it) stays dead, not requeued
    again in the next chunk; so does one dead-lettered during the run that is newer than
    every dead letter at its start (an older one the run has not reached yet is requeued).

    The agent's uplinks pick the rows up at their next read (within seconds).

    Raises:
        StoreError: the store cannot be written (busy beyond the timeout, not migrated), or
            the file at `path` is not the one the agent holds open (checked before each
            chunk: the chunks before it stand).
    """
    refuse_directory(path)
    try:
        held = held_open(path)
        opened = identity(path)
    except OSError as exc:
        raise translate(exc, path, "requeueing dead letters") from exc
    if not held:
        # Opened here, a file put at the store's path while the agent runs (a backup moved
        # in) would be read with the agent's WAL beside it, and our connection, the last
        # on that file, would copy that WAL into it on close and delete it: the agent then
        # reads stale pages and its recovery of the replaced file loses its alerts.
        raise StoreError(
            f"the running agent does not hold the file at {path}: it is starting or "
            "recovering its store, or the file was replaced or deleted while it runs (a "
            "backup moved into its place?), which the agent sets aside at its next write. "
            "Nothing was changed; retry in a moment",
            path=path,
        )
    total = 0
    with _connection(path, connect, "requeueing dead letters") as conn:
        cursor = _ops.RequeueCursor.at_start(conn)
        while True:
            try:
                now = identity(path)
            except OSError as exc:
                raise translate(exc, path, "requeueing dead letters") from exc
            if now != opened:
                # The agent sets a replaced file aside at its next write; rows requeued
                # in it from here on would not follow into the recovered store.
                raise StoreError(
                    f"the store file at {path} was replaced or deleted during the requeue; "
                    f"stopped after {total} requeued (they stand); rerun for the rest",
                    path=path,
                )
            conn.execute("BEGIN IMMEDIATE")
            try:
                done = _ops.requeue(
                    conn,
                    uplink=uplink,
                    item_ids=item_ids,
                    by=by,
                    limit=REQUEUE_CHUNK,
                    cursor=cursor,
                )
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            total += len(done)
            if done:
                yield done
            if len(done) < REQUEUE_CHUNK:
                break
    if total:
        log.warning("requeued %d dead letter(s) (by %s)", total, by)
