"""A store replaced, deleted or damaged while the agent runs: real files, real renames."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest

from agent.store import Outbox, StoreFault
from agent.store._files import SEQ_FLOOR_PER_SECOND
from agent.store._salvage import RECOVERING, _copy
from tests.agent.store._drafts import draft
from tests.agent.store._tamper import UP, backup_of, damage_header
from tests.agent.store._tamper import watched_outbox as outbox


def leftovers(folder: Path, pattern: str) -> list[Path]:
    """Files set aside next to the store (evidence is never deleted)."""
    return sorted(folder.glob(pattern))


async def pending_ids(ob: Outbox) -> list[str]:
    return sorted(it.item_id for it in await ob.next_batch(UP, 10_000))


@pytest.mark.parametrize("how", ["mv", "rm"])
async def test_replaced_or_deleted_file_loses_no_acknowledged_alert(
    tmp_path: Path, how: str
) -> None:
    db = tmp_path / "outbox.db"
    foreign = b"an operator's file, mv'd over the store by mistake\n" * 50
    faults: list[StoreFault] = []
    async with outbox(db, faults) as ob:
        before = await ob.append([draft(i=i) for i in range(5)], {"k": "1"})
        delivered = await ob.next_batch(UP, 2)
        await ob.mark_delivered(UP, delivered)
        if how == "mv":
            other = tmp_path / "other.db"
            other.write_bytes(foreign)
            os.replace(other, db)
        else:
            db.unlink()
        # The next write sees it: nothing is acknowledged into a file nobody can reach.
        after = await ob.append([draft(i=10)], {"k": "2"})
        [fault] = faults
        stored = await pending_ids(ob)
        state = await ob.load_state()
        [q] = await ob.quarantines()
        again = await ob.append([draft(i=11)])
    assert fault.kind == "replaced"
    assert "replaced" in fault.reason or "disappeared" in fault.reason
    # Every acknowledged alert is in the fresh store, undelivered ones still pending.
    assert stored == sorted(r["alert_id"] for r in (before + after)[2:])
    assert state == {"k": "2"}
    # Numbering continues: the old file was readable, so no jump to the clock floor.
    assert [r["seq"] for r in before + after + again] == [1, 2, 3, 4, 5, 6, 7]
    if how == "mv":
        assert fault.moved_to is not None and fault.moved_to.read_bytes() == foreign
        assert q["path"] == str(fault.moved_to)
    with sqlite3.connect(db) as conn:  # the file at the path is the store again
        assert conn.execute("SELECT count(*) FROM alerts").fetchone()[0] == 7


def marker(i: int) -> str:
    return f"MARKER-{i:04d}-" + "q" * 24


async def fill(ob: Outbox, n: int, marked: int) -> None:
    """n alerts (one a transaction), alert `marked` carrying a marker in its body, all of
    them checkpointed into the main file (as SQLite's auto-checkpoint does)."""
    for i in range(n):
        extra = {"note": marker(i)} if i == marked else {}
        await ob.append([draft(i=i, **extra)], {f"s{i % 5}": str(i)})
    with sqlite3.connect(db_of(ob)) as other:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def db_of(ob: Outbox) -> Path:
    return ob.path


def overwrite_at(db: Path, needle: bytes, data: bytes, *, page_start: bool = False) -> int:
    """Write `data` over the one place `needle` is in the file (or from the start of its
    page): a bad sector exactly there. Returns the offset written."""
    content = db.read_bytes()
    assert content.count(needle) == 1, content.count(needle)
    at = content.index(needle)
    if page_start:
        page = int.from_bytes(content[16:18], "big") or 65536
        at -= at % page
    with db.open("r+b") as f:
        f.seek(at)
        f.write(data)
    return at


async def test_corrupted_while_open_is_quarantined_and_the_rest_recovered(
    tmp_path: Path,
) -> None:
    db = tmp_path / "outbox.db"
    faults: list[StoreFault] = []
    async with outbox(db, faults) as ob:
        await fill(ob, 300, marked=150)
        # Two pages of noise from the page holding alert 150 (seeded: the same every run).
        overwrite_at(db, marker(150).encode(), random.Random(150).randbytes(8192), page_start=True)
        t0 = time.time()
        await pending_ids(ob)  # the uplink's next read runs into the damage
        [fault] = faults
        after = await ob.append([draft(i=999)], {"s0": "after"})
        left = await pending_ids(ob)
        state = await ob.load_state()
        stats = await ob.stats()
    print(f"\ncopied {fault.copied}, lost {fault.lost_rows} {fault.lost}")
    assert fault.kind == "corrupt" and fault.moved_to is not None
    assert fault.moved_to.exists() and fault.moved_to.name.startswith("outbox.db.corrupt-")
    # What was readable came across; what was not is counted, not silently dropped.
    assert fault.copied["alerts"] >= 250, fault.copied
    assert fault.copied["alerts"] + fault.lost_rows.get("alerts", 0) >= 300
    assert fault.lost, "the lost alerts are named"
    assert after[0]["alert_id"] in left and state["s0"] == "after"
    # A damaged file's numbering cannot be trusted: seq jumps above the clock floor.
    assert after[0]["seq"] >= int(t0 - 60) * SEQ_FLOOR_PER_SECOND
    assert stats.quarantined_total == 1 and stats.pending == len(left)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(b"\xff\xfe" * 18, id="not-utf8"),  # what the sqlite3 module cannot decode
        pytest.param(b'"}]' * 12, id="not-json"),  # valid UTF-8, the body no longer parses
    ],
)
async def test_a_damaged_alert_body_is_salvaged_not_read_forever(
    tmp_path: Path, damage: bytes
) -> None:
    """A bad sector inside one record passes SQLite's page checks; reading it failed on
    every batch (or sent garbage), so the uplink delivered nothing after it, for good."""
    db = tmp_path / "outbox.db"
    faults: list[StoreFault] = []
    async with outbox(db, faults) as ob:
        await fill(ob, 40, marked=20)
        needle = marker(20).encode()
        assert len(damage) == len(needle)
        overwrite_at(db, needle, damage)
        ids = await pending_ids(ob)  # the uplink's next read: the store is salvaged
        [fault] = faults
        after = await ob.append([draft(i=999)])
        left = await pending_ids(ob)  # the fresh store reads back whole
        delivered = await ob.next_batch(UP, 100)
        await ob.mark_delivered(UP, delivered)
        stats = await ob.stats()
    damaged = "seq 21 (gw-01-000000000021)"  # the 21st alert, which carried the marker
    assert fault.kind == "corrupt"
    assert fault.lost_rows == {"alerts": 1}, fault.lost_rows
    assert fault.copied["alerts"] == 39
    assert [x for x in fault.lost if damaged in x], fault.lost  # named: seq and id
    assert damaged not in ids and len(ids) == 39
    assert left == sorted([*ids, after[0]["alert_id"]])
    assert stats.pending == 0 and stats.quarantined_total == 1


async def test_header_overwritten_in_place_is_detected(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    faults: list[StoreFault] = []
    async with outbox(db, faults) as ob:
        before = await ob.append([draft(i=i) for i in range(3)])
        with db.open("r+b") as f:
            f.write(b"\0" * 100)
        await ob.append([draft(i=3)])
        [fault] = faults
        ids = await pending_ids(ob)
    assert fault.kind == "corrupt" and "header" in fault.reason
    assert set(r["alert_id"] for r in before) <= set(ids)  # still in the WAL, copied out


async def test_a_recovery_cut_off_by_a_crash_is_finished_at_the_next_open(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    faults: list[StoreFault] = []
    async with outbox(db, faults) as ob:
        records = await ob.append([draft(i=i) for i in range(4)])
    # The crash came after the copy was complete, before the bad file was moved aside.
    conn = sqlite3.connect(db, isolation_level=None)
    _copy(conn, db.with_name(db.name + RECOVERING))
    conn.close()
    db.write_bytes(b"garbage that replaced the store")
    async with outbox(db, faults) as ob:
        ids = await pending_ids(ob)
    assert ids == sorted(r["alert_id"] for r in records)
    assert leftovers(tmp_path, "outbox.db.superseded-*")
    assert not db.with_name(db.name + RECOVERING).exists()


async def test_an_incomplete_recovery_copy_is_set_aside_not_used(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    faults: list[StoreFault] = []
    async with outbox(db, faults) as ob:
        records = await ob.append([draft(i=i) for i in range(2)])
    half = db.with_name(db.name + RECOVERING)
    with sqlite3.connect(half) as conn:
        conn.execute("CREATE TABLE alerts (seq INTEGER PRIMARY KEY)")  # no completion mark
    async with outbox(db, faults) as ob:
        ids = await pending_ids(ob)
    assert ids == sorted(r["alert_id"] for r in records)
    assert leftovers(tmp_path, "outbox.db.recovering.incomplete-*")


async def test_concurrent_writes_during_a_replacement_all_land(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    faults: list[StoreFault] = []
    acked: list[str] = []
    async with outbox(db, faults) as ob:

        async def writer(k: int) -> None:
            for i in range(40):
                recs = await ob.append([draft(i=k * 100 + i)])
                acked.extend(r["alert_id"] for r in recs)
                await asyncio.sleep(0)

        async def replace() -> None:
            await asyncio.sleep(0.05)
            other = tmp_path / "other.db"
            other.write_bytes(b"x" * 4096)
            await asyncio.to_thread(os.replace, other, db)

        await asyncio.gather(*(writer(k) for k in range(4)), replace())
        ids = await pending_ids(ob)
    assert len(faults) == 1
    assert sorted(acked) == ids and len(ids) == 160


async def test_a_large_store_is_copied_in_pages_and_reports_progress(tmp_path: Path) -> None:
    """The copy goes in pages, each one telling the writer (and so the watchdog) that the
    recovery moves on: a big store on slow flash is not mistaken for a hung agent."""
    db = tmp_path / "outbox.db"
    faults: list[StoreFault] = []
    async with outbox(db, faults) as ob:
        await ob.append([], {f"k{i}": "v" for i in range(12_000)})
    conn = sqlite3.connect(db, isolation_level=None)
    ticks: list[int] = []
    copied, lost, _last, _named = _copy(conn, tmp_path / "copy.db", lambda: ticks.append(1))
    conn.close()
    assert copied["monitor_state"] == 12_000 and lost == {}
    assert len(ticks) >= 3  # 12,000 rows in pages of 5,000, each reporting


def _store_linked_to_another_disk(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """store.path (state/outbox.db) a symlink to the file on another disk (data/outbox.db):
    (the disk's folder, the state folder, the target, the link)."""
    disk, state = tmp_path / "data", tmp_path / "state"
    disk.mkdir()
    state.mkdir()
    real, link = disk / "outbox.db", state / "outbox.db"
    link.symlink_to(real)
    return disk, state, real, link


async def test_a_symlinked_store_is_recovered_beside_its_target_and_stays_a_link(
    tmp_path: Path,
) -> None:
    """store.path a symlink to the file on another disk: SQLite keeps the -wal and -shm
    beside the target. A recovery moved the link aside (as the "corrupt" file), left the
    damaged file where it was with its WAL checkpointed into it and deleted, and put the
    recovered store where the link had been: from then on the agent wrote onto the link's
    disk, and the metric of the store's size left out its WAL."""
    disk, state, real, link = _store_linked_to_another_disk(tmp_path)
    faults: list[StoreFault] = []
    async with outbox(link, faults) as ob:
        before = await ob.append([draft(i=i) for i in range(3)])
        stats = await ob.stats()
        assert stats.db_bytes == sum(os.stat(f"{real}{s}").st_size for s in ("", "-wal"))
        await asyncio.to_thread(damage_header, real)
        await ob.append([draft(i=3)])
        [fault] = faults
        ids = await pending_ids(ob)
        assert link.is_symlink() and link.resolve() == real
        assert fault.moved_to is not None and fault.moved_to.parent == disk
        # The damaged file is kept with its WAL (the evidence, and the alerts in it).
        assert fault.moved_to.with_name(fault.moved_to.name + "-wal").exists()
    assert fault.kind == "corrupt"
    assert set(r["alert_id"] for r in before) <= set(ids)
    assert sorted(p.name for p in state.iterdir()) == [
        "outbox.db",
        "outbox.db.inode",
        "outbox.db.issued",
    ]


async def test_a_symlinked_store_found_corrupt_at_open_is_set_aside_beside_its_target(
    tmp_path: Path,
) -> None:
    """The quarantine at open moved the link aside, not the damaged file, and created the
    fresh store where the link had been (on the link's disk)."""
    disk, state, real, link = _store_linked_to_another_disk(tmp_path)
    real.write_bytes(b"\0" * 4096)  # a power cut's garbage: taken as our damaged store
    faults: list[StoreFault] = []
    async with outbox(link, faults) as ob:
        await ob.append([draft(i=0)])
        quarantined = ob.quarantined
    assert quarantined is not None and quarantined.path.parent == disk
    assert quarantined.path.read_bytes() == b"\0" * 4096
    assert link.is_symlink() and link.resolve() == real
    assert sorted(p.name for p in state.iterdir()) == [
        "outbox.db",
        "outbox.db.inode",
        "outbox.db.issued",
    ]


async def test_a_store_replaced_after_the_last_write_is_recovered_at_the_stop(
    tmp_path: Path,
) -> None:
    """A backup moved over the store after the agent's last write, then a stop: the agent
    closed without looking, its WAL (every alert since its last checkpoint) stayed beside
    the backup, and the next start read that WAL into the backup as its own, pages of two
    files mixed, with no fault said. The stop now recovers first, as a write would."""
    db = tmp_path / "outbox.db"
    faults: list[StoreFault] = []
    async with outbox(db, faults) as ob:
        stored = await ob.append([draft(i=0)])
        backup = await asyncio.to_thread(backup_of, db)
        kept = await asyncio.to_thread(backup.read_bytes)
        for i in range(1, 4):
            stored += await ob.append([draft(i=i)])
        await asyncio.to_thread(os.replace, backup, db)
    [fault] = faults
    assert fault.kind == "replaced" and fault.moved_to is not None
    assert fault.moved_to.read_bytes() == kept  # set aside as it was
    async with outbox(db, []) as ob:
        ids = await pending_ids(ob)
    assert ids == sorted(r["alert_id"] for r in stored)
