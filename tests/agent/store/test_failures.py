"""The outbox under failure: corrupt file, full disk, disk budget. Real files, real mounts."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.store import Outbox, StoreError, StoreFullError
from agent.store._files import SEQ_FLOOR_PER_SECOND
from tests.agent.store._drafts import draft

BIG = 1 << 30


def _read(path: Path) -> bytes:
    return path.read_bytes()


UP = "up"


def outbox(path: Path, max_bytes: int = BIG) -> Outbox:
    return Outbox(path, gateway_id="gw-01", max_bytes=max_bytes, first_seq=1, uplinks=(UP,))


async def test_our_store_overwritten_with_garbage_is_quarantined_not_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "outbox.db"
    async with outbox(db) as ob:
        await ob.append([draft()])  # a real store: the agent's seq mark lies beside it
    garbage = b"this is not a database, it is a power cut's leftovers\n" * 200
    db.write_bytes(garbage)
    (tmp_path / "outbox.db-wal").write_bytes(b"wal leftovers")
    with caplog.at_level(logging.ERROR):
        async with outbox(db) as ob:
            [rec] = await ob.append([draft()])
            [q] = await ob.quarantines()
            stats = await ob.stats()
    kept = Path(q["path"])
    assert kept.parent == tmp_path and kept.name.startswith("outbox.db.corrupt-")
    assert _read(kept) == garbage  # kept byte for byte, with its WAL
    assert _read(kept.with_name(kept.name + "-wal")) == b"wal leftovers"
    assert ob.quarantined is not None and stats.quarantined_total == 1
    # Nothing readable: seq restarts at the wall-clock floor, above any plausible old seq.
    assert q["recovered_seq"] is None
    assert rec["seq"] == q["seq_restart"] >= int(time.time() - 60) * SEQ_FLOOR_PER_SECOND
    assert any("STORE CORRUPT" in r.message and r.levelno == logging.ERROR for r in caplog.records)


async def test_our_store_with_its_header_destroyed_is_recognised_and_quarantined(
    tmp_path: Path,
) -> None:
    # No seq mark beside it: our schema's text in the file is the evidence.
    db = tmp_path / "outbox.db"
    async with outbox(db) as ob:
        await ob.append([draft()])
    (tmp_path / "outbox.db.issued").unlink()
    with db.open("r+b") as f:
        f.write(b"\xff" * 100)
    async with outbox(db) as ob:
        [q] = await ob.quarantines()
    assert "not an SQLite database" in q["reason"]


async def test_another_applications_database_is_refused_and_left_untouched(
    tmp_path: Path,
) -> None:
    # store.path with a typo naming another application's SQLite database: our tables
    # were added into it and a store made of it.
    other = tmp_path / "inventory.db"
    with contextlib.closing(sqlite3.connect(other)) as conn, conn:
        conn.execute("CREATE TABLE parts (name TEXT, qty INTEGER)")
        conn.execute("INSERT INTO parts VALUES ('bearing 6205', 4)")
    before = _read(other)
    with pytest.raises(StoreError, match="is not an edge-agent store") as err:
        async with outbox(other):
            pass
    assert str(other) in str(err.value) and "store.path" in str(err.value)
    assert _read(other) == before
    assert sorted(os.listdir(tmp_path)) == ["inventory.db"]


async def test_garbage_at_the_store_path_is_moved_aside_whole_and_the_agent_goes_on(
    tmp_path: Path,
) -> None:
    # To the running agent, a file that is no database at all is its own store damaged
    # (a power cut): refusing to start would silence every machine. Kept byte for byte.
    db = tmp_path / "outbox.db"
    db.write_bytes(b"part,qty\nbearing 6205,4\n" * 50)
    before = _read(db)
    async with outbox(db) as ob:
        [q] = await ob.quarantines()
        await ob.append([draft(i=1)])
    [kept] = await asyncio.to_thread(lambda: list(tmp_path.glob("outbox.db.corrupt-*")))
    assert _read(kept) == before and "not an SQLite database" in q["reason"]


async def test_damaged_pages_quarantined_and_seq_continues(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    async with outbox(db) as ob:
        for i in range(40):
            await ob.append([draft(i=i)])
    size = db.stat().st_size
    page = 4096
    with db.open("r+b") as f:  # scribble over every page but the first (schema) page
        for off in range(page, size, page):
            f.seek(off + 100)
            f.write(os.urandom(page - 200))
    async with outbox(db) as ob:
        [rec] = await ob.append([draft()])
        [q] = await ob.quarantines()
    assert _read(Path(q["path"]))
    assert rec["seq"] > 40, "a reused seq would be dropped by the backend as a duplicate"
    print(
        f"\nquarantined {Path(q['path']).name}: recovered seq {q['recovered_seq']}, "
        f"restart {q['seq_restart']} ({q['reason'][:80]})"
    )


@contextlib.contextmanager
def small_disk(where: Path, size: str = "2m") -> Iterator[Path | None]:
    """A real tmpfs of `size` mounted at `where`, or None if mounting is not allowed."""
    where.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    )
    if res.returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=10)


def fill(path: Path, leave: int = 0) -> int:
    """Write until the file system says ENOSPC (or only `leave` bytes are free); returns
    bytes written."""
    n = 0
    chunk = b"\0" * 65536
    if leave:
        fs = os.statvfs(path.parent)
        n = max(0, fs.f_bavail * fs.f_frsize - leave)
        with path.open("wb") as f:
            for _ in range(n // len(chunk)):
                f.write(chunk)
            f.write(b"\0" * (n % len(chunk)))
        return n
    with path.open("wb", buffering=0) as f:  # unbuffered: nothing left to fail at close
        try:
            for _ in range(10_000):  # bounded: 640 MB at most
                n += f.write(chunk)
                f.flush()
            raise AssertionError("the small disk never filled up")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    # top up the last partial block with small writes
    with contextlib.suppress(OSError), path.open("ab", buffering=0) as f:
        for _ in range(65536 // 512):
            f.write(b"\0" * 512)
            f.flush()
    return n


async def test_disk_full_is_reported_and_contained(tmp_path: Path) -> None:
    with small_disk(tmp_path / "mnt") as mnt:
        if mnt is None:
            pytest.skip("cannot mount a tmpfs here (needs root); see the max_page_count test")
        db = mnt / "outbox.db"
        async with outbox(db) as ob:
            before = await ob.append([draft(i=i) for i in range(3)], {"k": "1"})
            filler = mnt / "filler"
            fill(filler)
            with pytest.raises(StoreFullError) as info:
                # Enough data that the WAL must grow into space that is not there.
                await ob.append([draft(i=i, blob="x" * 2000) for i in range(40)], {"k": "2"})
            assert info.value.code is not None and "FULL" in info.value.code
            # Contained: nothing of it was stored, the store still answers.
            stats = await ob.stats()
            assert (stats.pending, stats.last_seq) == (3, 3)
            assert (await ob.load_state()) == {"k": "1"}
            filler.unlink()  # space is back
            after = await ob.append([draft(i=9)], {"k": "3"})
        assert [r["seq"] for r in before + after] == [1, 2, 3, 4]
        async with outbox(db) as ob:  # and what was acknowledged is all still there
            assert [a.seq for a in await ob.next_batch(UP, 10)] == [1, 2, 3, 4]
            assert (await ob.load_state()) == {"k": "3"}


async def test_a_full_disk_is_logged_once_per_episode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Every write failing on a full disk logged an ERROR (300 appends: 300 lines).
    with small_disk(tmp_path / "mnt") as mnt:
        if mnt is None:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        async with outbox(mnt / "outbox.db") as ob:
            filler = mnt / "filler"
            fill(filler)
            with caplog.at_level(logging.INFO, logger="agent.store"):
                for i in range(20):
                    with pytest.raises(StoreFullError):
                        await ob.append([draft(i=i, blob="x" * 2000) for _ in range(20)])
                filler.unlink()
                await ob.append([draft(i=99)])
    full = [r for r in caplog.records if "is FULL" in r.message and r.levelno >= logging.INFO]
    back = [r for r in caplog.records if "writable again after 20" in r.message]
    assert len(full) == 1 and len(back) == 1


async def test_a_full_disk_makes_room_from_delivered_alerts_not_from_new_ones(
    tmp_path: Path,
) -> None:
    """The disk fills up long before the budget (a 2 GiB default on a small eMMC, a log
    file growing beside the store): alerts every uplink already has are safe upstream and
    must give way to new ones, or every new alert is held in memory until it is dropped."""
    with small_disk(tmp_path / "mnt", "40m") as mnt:
        if mnt is None:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        async with outbox(mnt / "outbox.db") as ob:  # budget: 1 GiB, far above the disk
            for r in range(40):
                await ob.append([draft(i=100 * r + i, blob="x" * 2000) for i in range(100)])
                await ob.mark_delivered(UP, await ob.next_batch(UP, 1000))
            assert (await ob.stats()).delivered_pruned_total == 0  # the disk had room
            # A log grows beside the store, slowly, then takes every byte left.
            stored = []
            for i, leave in enumerate((16, 12, 8, 6, 4, 2, 1, 0)):
                await asyncio.to_thread(fill, mnt / f"log.{i}", leave=leave * 2**20)
                stored += await ob.append([draft(1, i, blob="y" * 2000)])
            for i in range(600):  # ~1.5 MB of new alerts on a disk with no room left
                stored += await ob.append([draft(1, 100 + i, blob="y" * 2000)])
            stats = await ob.stats()
            pending = await ob.next_batch(UP, 1000)
        assert [a.seq for a in pending] == [r["seq"] for r in stored]  # none lost
        assert stats.evicted_total == 0
        assert 0 < stats.delivered_pruned_total < 4000  # room came from delivered alerts
        assert stats.delivered == 4000 - stats.delivered_pruned_total


async def test_a_disk_filled_by_others_never_costs_an_awaited_alert(tmp_path: Path) -> None:
    """Nothing delivered to prune: new alerts wait (held by the caller), the stored ones
    are kept, whatever fills the disk."""
    with small_disk(tmp_path / "mnt", "16m") as mnt:
        if mnt is None:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        async with outbox(mnt / "outbox.db") as ob:
            stored = await ob.append([draft(3, i, blob="x" * 2000) for i in range(50)])
            await asyncio.to_thread(fill, mnt / "filler")
            for i in range(200):
                with contextlib.suppress(StoreFullError):
                    stored += await ob.append([draft(1, i, blob="y" * 2000)])
            stats = await ob.stats()
            pending = await ob.next_batch(UP, 1000)
        assert stats.evicted_total == 0
        assert sorted(a.seq for a in pending) == sorted(r["seq"] for r in stored)


async def test_budget_prunes_delivered_then_evicts_lowest_tier(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    budget = 420 * 1024  # schema v2 has ~100 KiB of empty tables and indexes
    pad = "y" * 1500
    caplog.set_level(logging.ERROR)

    def evicted_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "disk budget" in r.message and "evicted" in r.message]

    async with outbox(tmp_path / "outbox.db", max_bytes=budget) as ob:
        await ob.append([draft(2, i, blob=pad) for i in range(60)])
        await ob.mark_delivered(UP, await ob.next_batch(UP, 1000))
        tier1 = []
        for i in range(60):  # each round: one tier-1 and two tier-3 alerts
            tier1 += await ob.append([draft(1, i, blob=pad)])
            await ob.append([draft(3, i, blob=pad), draft(3, i + 1, blob=pad)])
        stats = await ob.stats()
        pending = await ob.next_batch(UP, 1000)
        while_open = evicted_lines()
    assert stats.delivered_pruned_total == 60 and stats.delivered == 0  # delivered went first
    assert stats.evicted_total > 1
    assert stats.pending + stats.evicted_total == 180  # every alert accounted for
    assert {a.seq for a in pending if a.tier == 1} == {r["seq"] for r in tier1}
    # The first eviction (its transaction's) is said at once; the rest in one summary (at
    # most one a minute, here when the outbox closes), not a line per alert (104
    # lines here before). The counts add up exactly.
    [first] = while_open
    n_first = getattr(first, "evicted", 0)
    assert 1 <= n_first < stats.evicted_total and "gw-01-" in first.message
    lines = evicted_lines()
    assert len(lines) == 2, [r.message for r in lines]
    assert sum(getattr(r, "evicted", 0) for r in lines) == stats.evicted_total
    rest = lines[1].message
    assert f"evicted {stats.evicted_total - n_first} alert(s)" in rest
    assert "tier 3:" in rest and "tier 1" not in rest and "UNDELIVERED" in rest


async def test_reopen_after_uuid_named_path_creates_directories(tmp_path: Path) -> None:
    db = tmp_path / uuid.uuid4().hex / "state" / "outbox.db"
    async with outbox(db) as ob:
        await ob.append([draft()])
    assert db.exists()


async def test_sqlite_full_from_page_limit_is_contained(tmp_path: Path) -> None:
    """A genuine SQLITE_FULL without root: SQLite's own max_page_count (tmpfs test above
    covers the real ENOSPC path)."""
    async with outbox(tmp_path / "outbox.db") as ob:
        await ob.append([draft()])

        def limit(extra: int) -> object:
            # Test-only reach into the writer thread: the pragma is per connection.
            return ob._call(
                lambda c: c.execute(
                    f"PRAGMA max_page_count = "
                    f"{c.execute('PRAGMA page_count').fetchone()[0] + extra}"
                ).fetchone(),
                write=False,
                what="limit",
            )

        await limit(0)
        with pytest.raises(StoreFullError):
            await ob.append([draft(i=i, blob="z" * 4000) for i in range(10)])
        assert (await ob.stats()).last_seq == 1
        await limit(1000)
        [rec] = await ob.append([draft(i=2)])
    assert rec["seq"] == 2


async def test_a_wiped_store_never_reuses_an_alert_id(tmp_path: Path) -> None:
    """An operator deletes the store (reinstall): new ids must not collide with old ones,
    or the backend would drop the new alerts as duplicates."""
    path = tmp_path / "outbox.db"
    async with Outbox(path, gateway_id="gw-01", max_bytes=BIG) as ob:
        (old,) = await ob.append([draft()])
    assert old["seq"] >= int(time.time() - 60) * SEQ_FLOOR_PER_SECOND
    for f in await asyncio.to_thread(lambda: list(tmp_path.glob("outbox.db*"))):
        f.unlink()
    await asyncio.sleep(0.05)  # the floor rises 100 per second: more than this store issued
    async with Outbox(path, gateway_id="gw-01", max_bytes=BIG) as ob:
        (new,) = await ob.append([draft()])
    assert new["seq"] > old["seq"] and new["alert_id"] != old["alert_id"]
