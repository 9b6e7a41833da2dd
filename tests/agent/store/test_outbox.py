"""The outbox on real SQLite files: numbering, durability, group commit, order, state."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from agent.records import dumps
from agent.store import Outbox, StoreClosedError, StoredItem
from tests.agent.store._drafts import draft

BIG = 1 << 30


UP = "up"


def outbox(path: Path, **kw: object) -> Outbox:
    return Outbox(
        path,
        gateway_id="gw-01",
        max_bytes=int(kw.pop("max_bytes", BIG)),
        first_seq=1,
        uplinks=(UP,),
        **kw,
    )


async def items(ob: Outbox, *seqs: int, uplink: str = UP) -> list[StoredItem]:
    """The pending items with these seqs (all pending ones when none given)."""
    batch = await ob.next_batch(uplink, 1000)
    return [it for it in batch if not seqs or it.seq in seqs]


async def test_seq_monotonic_and_persisted_across_reopen(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    async with outbox(db) as ob:
        first = await ob.append([draft(), draft(1)])
        second = await ob.append([draft(2)])
    assert [r["seq"] for r in first + second] == [1, 2, 3]
    assert first[0]["alert_id"] == "gw-01-000000000001"

    # Delete every row behind the store's back (as pruning would): seq still never reused.
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM alerts")
    async with outbox(db) as ob:
        third = await ob.append([draft(3), draft(4)])
        assert (await ob.stats()).last_seq == 5
    assert [r["seq"] for r in third] == [4, 5]


async def test_append_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    async with outbox(db) as ob:
        [rec] = await ob.append([draft(tier=1)], {"press-7/m1-de/z/severity": "{}"})
        # An independent connection (another process would see the same) finds it.
        with sqlite3.connect(db) as other:
            body, delivered = other.execute(
                "SELECT body, delivered_at FROM alerts WHERE seq = ?", (rec["seq"],)
            ).fetchone()
            state = other.execute("SELECT value FROM monitor_state").fetchall()
        assert body == dumps(rec) and delivered is None
        assert state == [("{}",)]


async def test_append_waits_for_its_commit(tmp_path: Path) -> None:
    """While another connection holds the write lock, append cannot be acknowledged."""
    db = tmp_path / "outbox.db"
    async with outbox(db) as ob:
        blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(ob.append([draft()]))
        await asyncio.sleep(0.4)
        assert not task.done(), "append returned before its transaction could commit"
        blocker.execute("ROLLBACK")
        blocker.close()
        async with asyncio.timeout(5):
            [rec] = await task
        assert rec["seq"] == 1


async def test_group_commit_shares_transactions(tmp_path: Path) -> None:
    n = 400
    async with outbox(tmp_path / "outbox.db") as ob:
        t0 = time.monotonic()
        results = await asyncio.gather(*(ob.append([draft(i=i)]) for i in range(n)))
        elapsed = time.monotonic() - t0
        counters = ob.counters
        seqs = sorted(r[0]["seq"] for r in results)
    print(
        f"\ngroup commit: {n} concurrent appends in {counters.transactions} transactions "
        f"(max group {counters.max_group}), {n / elapsed:.0f} appends/s"
    )
    assert seqs == list(range(1, n + 1))
    assert counters.write_requests == n
    assert counters.transactions <= n // 4


async def test_state_commits_with_its_alerts_or_not_at_all(tmp_path: Path) -> None:
    async with outbox(tmp_path / "outbox.db") as ob:
        await ob.append([draft()], {"k": "1"})
        # A record that cannot be serialised (bytes: a bug upstream) fails its append alone:
        # neither the alert nor the state it came with is stored, and a concurrent append
        # is unharmed.
        bad = ob.append([draft(i=1), draft(i=2, raw=b"bytes")], {"k": "2"})
        good = ob.append([draft(i=3)], {"other": "x"})
        res = await asyncio.gather(bad, good, return_exceptions=True)
        assert isinstance(res[0], TypeError)
        assert [r["seq"] for r in res[1]] == [2]  # the failed one consumed no seq
        assert await ob.load_state() == {"k": "1", "other": "x"}
        assert await ob.append([], {"k": "3"}) == []  # state only
        assert (await ob.load_state())["k"] == "3"
        stats = await ob.stats()
    assert (stats.pending, stats.last_seq) == (2, 2)


async def test_next_batch_tier1_first_then_oldest(tmp_path: Path) -> None:
    async with outbox(tmp_path / "outbox.db") as ob:
        await ob.append([draft(3, 0), draft(2, 1), draft(3, 2)])
        await ob.append([draft(1, 3), draft(2, 4), draft(1, 5)])
        batch = await ob.next_batch(UP, 10)
        assert [(a.tier, a.seq) for a in batch] == [(1, 4), (1, 6), (2, 2), (2, 5), (3, 1), (3, 3)]
        assert json.loads(batch[0].json)["seq"] == 4
        assert batch[0].item_id == "gw-01-000000000004"
        assert [a.seq for a in await ob.next_batch(UP, 2)] == [4, 6]


async def test_delivered_dead_letter_recent_and_stats(tmp_path: Path) -> None:
    async with outbox(tmp_path / "outbox.db") as ob:
        await ob.append([draft(i=i) for i in range(5)])
        first_two = await items(ob, 1, 2)
        assert await ob.mark_delivered(UP, first_two) == 2
        assert await ob.mark_delivered(UP, first_two) == 0  # idempotent
        bad = await items(ob, 3)
        assert await ob.dead_letter(UP, bad, "HTTP 400: bad detected_at") == ["gw-01-000000000003"]
        assert [a.seq for a in await ob.next_batch(UP, 10)] == [4, 5]
        stats = await ob.stats()
        assert (stats.pending, stats.delivered, stats.dead_lettered) == (2, 2, 1)
        assert stats.oldest_pending_age_s >= 0 and stats.db_bytes > 0
        up = stats.uplinks[UP]
        assert (up.pending, up.dead_lettered, up.dead_lettered_total) == (2, 1, 1)
        recent = await ob.recent(10)
        assert [r["seq"] for r in recent] == [5, 4, 3, 2, 1]
        assert [r["delivered"] for r in recent] == [False, False, False, True, True]
        assert recent[2]["deliveries"][UP]["state"] == "dead_letter"
        assert recent[2]["deliveries"][UP]["reason"] == "HTTP 400: bad detected_at"
        assert recent[4]["deliveries"][UP]["state"] == "delivered"
        [dl] = await ob.dead_letters()
        assert dl["reason"].startswith("HTTP 400") and dl["record"]["seq"] == 3
        assert (dl["uplink"], dl["class"], dl["id"]) == (UP, "alert", "gw-01-000000000003")


async def test_backlog_survives_restart_and_wakes_uplink(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    async with outbox(db) as ob:
        await ob.append([draft(i=i) for i in range(3)])
    async with outbox(db) as ob:
        assert ob.wake_event(UP).is_set()
        assert [a.seq for a in await ob.next_batch(UP, 10)] == [1, 2, 3]


async def test_closed_outbox_refuses(tmp_path: Path) -> None:
    ob = outbox(tmp_path / "outbox.db")
    with pytest.raises(StoreClosedError):
        await ob.append([draft()])
    async with ob:
        pass
    with pytest.raises(StoreClosedError):
        await ob.stats()
