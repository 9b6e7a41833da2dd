"""The store's files are not readable by other users, whatever the agent's umask."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.store import Outbox, StoreFault, store_lock
from tests.agent.store._drafts import draft

UP = "up"


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A hand-started agent's usual umask: files readable by anyone unless set."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _outbox(path: Path, faults: list[StoreFault]) -> Outbox:
    return Outbox(
        path, gateway_id="gw-01", max_bytes=1 << 30, first_seq=1, uplinks=(UP,),
        on_fault=faults.append,
    )  # fmt: skip


def _modes(folder: Path, prefix: str) -> dict[str, str]:
    return {
        p.name: oct(stat.S_IMODE(p.stat().st_mode))
        for p in sorted(folder.iterdir())
        if p.name.startswith(prefix)
    }


async def test_store_files_are_created_for_the_agent_and_its_group_only(
    tmp_path: Path, open_umask: None
) -> None:
    """Under a umask of 0022 the store, its WAL and -shm, its lock and its .issued mark
    were created 0644: in a shared folder any local user read the alerts and the dead
    letters (plant data, a backend's error bodies). Now 0640, and a store recovered at run
    time (the `.recovering` copy put in place) too."""
    db = tmp_path / "outbox.db"
    faults: list[StoreFault] = []
    with store_lock(db):
        async with _outbox(db, faults) as ob:
            await ob.append([draft(i=0)])
            await ob.dead_letter(UP, await ob.next_batch(UP, 10), "HTTP 401")
            names = ["outbox.db", "outbox.db-wal", "outbox.db-shm", "outbox.db.lock"]
            expected = dict.fromkeys([*names, "outbox.db.issued", "outbox.db.inode"], "0o640")
            assert _modes(tmp_path, "outbox.db") == expected
            other = tmp_path / "other"
            other.write_bytes(b"not a store\n" * 100)
            os.replace(other, db)  # the agent recovers its store at the next write
            await ob.append([draft(i=1)])
            [fault] = faults
            assert fault.kind == "replaced"
            assert oct(stat.S_IMODE(db.stat().st_mode)) == "0o640"
            assert oct(stat.S_IMODE((tmp_path / "outbox.db-wal").stat().st_mode)) == "0o640"


async def test_a_store_readable_by_others_is_withheld_from_them_at_open(
    tmp_path: Path, open_umask: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A store an older agent made 0644 stayed readable by anyone; opening it now takes
    the others' permissions off and says so once."""
    db = tmp_path / "outbox.db"
    async with _outbox(db, []) as ob:
        await ob.append([draft(i=0)])
    for name in ("outbox.db", "outbox.db.issued"):
        (tmp_path / name).chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="agent.store"):
        async with _outbox(db, []) as ob:
            assert len(await ob.recent(10)) == 1
            modes = _modes(tmp_path, "outbox.db")
    assert set(modes.values()) == {"0o640"}, modes
    [warning] = [r.getMessage() for r in caplog.records if "other users" in r.getMessage()]
    assert "outbox.db," in warning and "outbox.db.issued" in warning
