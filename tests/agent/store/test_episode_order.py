"""An alert episode's records are delivered in the order they were stored, whatever tier
its asset had at each (a reload changes it); other episodes still go by their tier."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path

import pytest

from agent.store import Outbox, _order
from tests.agent.uplink._alerts import maintenance, severity

UP = "up"


def outbox(path: Path, uplinks: tuple[str, ...] = (UP,)) -> Outbox:
    return Outbox(path, gateway_id="gw-01", max_bytes=1 << 30, first_seq=1, uplinks=uplinks)


async def order(ob: Outbox, uplink: str = UP) -> list[str]:
    return [it.item_id for it in await ob.next_batch(uplink, 100)]


def ids(records: list[dict[str, object]]) -> list[str]:
    return [str(r["alert_id"]) for r in records]


async def test_a_clear_stored_after_a_tier_change_waits_behind_its_raise(
    tmp_path: Path,
) -> None:
    """Raise on a tier-3 asset, a reload makes it tier 1, then its escalation and clear.
    Before: the escalation and the clear (tier 1) went ahead of their raise. Now the
    episode keeps its order (at its raise's place); the tier-2 alert of another asset
    still goes ahead of the tier-3 episode, and stays after a restart."""
    db = tmp_path / "outbox.db"
    async with outbox(db) as ob:
        [raised] = await ob.append([severity("C", tier=3, i=0)])
        [other] = await ob.append([severity("C", tier=2, aid="fan-2", i=1)])
        later = await ob.append(
            [severity("D", "escalated", tier=1, velocity=5.2, i=2),
             severity("B", "cleared", tier=1, velocity=2.0, i=3)]
        )  # fmt: skip
        [fresh] = await ob.append([severity("C", tier=1, aid="pump-1", i=4)])
        want = [fresh["alert_id"], other["alert_id"], raised["alert_id"], *ids(later)]
        assert await order(ob) == want
        # The records keep their own tier: only their place in the queue follows the raise.
        assert [it.tier for it in await ob.next_batch(UP, 100)] == [1, 2, 3, 1, 1]
    async with outbox(db) as ob:  # restarted
        assert await order(ob) == want


async def test_a_new_raise_of_the_same_channel_waits_behind_the_pending_clear(
    tmp_path: Path,
) -> None:
    """A clear (tier 3) pending, then the channel raised again on tier 1: the clear
    ahead of the new raise would close it at the far end if it came after."""
    async with outbox(tmp_path / "outbox.db") as ob:
        first = await ob.append([severity("C", tier=3, i=0), severity("B", "cleared", tier=3, i=1)])
        [again] = await ob.append([severity("C", tier=1, i=2)])
        assert await order(ob) == [*ids(first), again["alert_id"]]


async def test_a_repair_waits_behind_the_records_of_the_episodes_it_closes(
    tmp_path: Path,
) -> None:
    m = maintenance(i=5)
    m = dataclasses.replace(
        m,
        asset=dataclasses.replace(m.asset, tier=1),
        evidence={**m.evidence,
                  "closed_alerts": [{"kind": "severity", "sensor": "m1-de", "channel": "z"}]},
    )  # fmt: skip
    async with outbox(tmp_path / "outbox.db") as ob:
        [raised] = await ob.append([severity("C", tier=3, i=0)])
        [repair] = await ob.append([m])
        assert await order(ob) == [raised["alert_id"], repair["alert_id"]]


async def test_a_requeued_raise_goes_before_its_clear_stored_meanwhile(tmp_path: Path) -> None:
    """The raise (tier 3) dead-lettered, its clear stored on tier 1 while it was: an
    operator requeues the raise. Before: the clear went first. Now the raise, then it."""
    async with outbox(tmp_path / "outbox.db") as ob:
        [raised] = await ob.append([severity("C", tier=3, i=0)])
        await ob.dead_letter(UP, await ob.next_batch(UP, 1), "400 invalid record")
        [cleared] = await ob.append([severity("B", "cleared", tier=1, i=1)])
        [other] = await ob.append([severity("C", tier=2, aid="fan-2", i=2)])
        await ob.requeue(item_ids=[raised["alert_id"]])
        assert await order(ob) == [other["alert_id"], raised["alert_id"], cleared["alert_id"]]


async def test_an_uplink_added_later_gets_the_episodes_in_order(tmp_path: Path) -> None:
    """Its pending rows are made from the records' own tiers at registration (a new
    uplink, or a reload adding one): grouped there too."""
    db = tmp_path / "outbox.db"
    async with outbox(db) as ob:
        recs = [*await ob.append([severity("C", tier=3, i=0)]),
                *await ob.append([severity("B", "cleared", tier=1, i=1)])]  # fmt: skip
        await ob.register_uplinks((UP, "second"), {})
        assert await order(ob, "second") == ids(recs)
    async with outbox(db, (UP, "second", "third")) as ob:
        assert await order(ob, "third") == ids(recs)


async def test_a_store_written_before_is_put_in_episode_order_at_open(tmp_path: Path) -> None:
    """A file an older agent wrote: its pending clear sorted ahead of its raise. Put in
    order once, at the first open."""
    db = tmp_path / "outbox.db"
    async with outbox(db) as ob:
        recs = await ob.append([severity("C", tier=3, i=0), severity("B", "cleared", tier=3, i=1)])
    with sqlite3.connect(db) as conn:  # as the previous version left it
        conn.execute("UPDATE outbound SET tier = 1 WHERE ref = ?", (recs[1]["seq"],))
        conn.execute("DELETE FROM meta WHERE key = 'episodes_grouped_at'")
        conn.execute("DROP INDEX outbound_episode")
        conn.execute("ALTER TABLE outbound DROP COLUMN episode")
    async with outbox(db) as ob:
        assert await order(ob) == ids(recs)


async def test_the_order_lookups_use_indexes(tmp_path: Path) -> None:
    """The outbox can hold 100k+ rows: each lookup an index seek, never a scan."""
    async with outbox(tmp_path / "outbox.db"):
        pass
    with sqlite3.connect(tmp_path / "outbox.db") as conn:
        plan = [
            r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {_order._SET} AND ref IN (?)", (1,))
        ]
    assert not [p for p in plan if p.startswith("SCAN")], plan
    assert any("outbound_episode" in p for p in plan), plan


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)


async def test_requeueing_a_raise_whose_clear_was_sent_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The clear went while its raise was dead-lettered: the raise requeued reaches the
    far end after it (no queue can undo that), and the operator is told which."""
    async with outbox(tmp_path / "outbox.db") as ob:
        [raised] = await ob.append([severity("C", tier=3, i=0)])
        await ob.dead_letter(UP, await ob.next_batch(UP, 1), "400 invalid record")
        [pending_ok] = await ob.append([severity("C", tier=3, aid="fan-2", i=1)])
        await ob.dead_letter(UP, await ob.next_batch(UP, 1), "400 invalid record")
        await ob.append([severity("B", "cleared", tier=1, i=2)])
        await ob.mark_delivered(UP, await ob.next_batch(UP, 1))
        await ob.requeue(item_ids=[raised["alert_id"], pending_ok["alert_id"]])
    [line] = [r.getMessage() for r in caplog.records if "later record" in r.getMessage()]
    assert line.endswith(raised["alert_id"]), line
