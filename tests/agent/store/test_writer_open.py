"""The store writer's first open: a failure after the connection was made leaves nothing
open (a real SQLite file; the path made unreadable between the connect and the check)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from agent.store._writer import Writer


def _descriptors_on(ident: tuple[int, int]) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
        n += (st.st_dev, st.st_ino) == ident
    return n


async def test_a_first_open_that_fails_after_connecting_closes_the_connection(
    tmp_path: Path,
) -> None:
    """The opener connected, then the writer's check of the file failed (the store path
    turned into a symlink loop): the error reached the caller, but the connection stayed
    open, its descriptors and SQLite locks on the store with it, for the process's life
    (and a reopen retried every 5 s leaked one more each time)."""
    db = tmp_path / "outbox.db"
    keep = tmp_path / "kept.db"  # the file itself, after its name is taken away
    opened: list[sqlite3.Connection] = []

    def opener() -> sqlite3.Connection:
        conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        opened.append(conn)
        os.link(db, keep)
        loop = tmp_path / "loop"
        loop.symlink_to(db)
        os.replace(loop, db)  # db -> db: os.stat(db) fails with ELOOP
        return conn

    writer = Writer(db, opener)
    with pytest.raises(OSError, match="symbolic links"):
        await writer.start()
    st = keep.stat()
    assert _descriptors_on((st.st_dev, st.st_ino)) == 0
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")
