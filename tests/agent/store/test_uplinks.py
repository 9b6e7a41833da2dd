"""Delivery tracked per (item, uplink): routing, completion, migration, requeue, budget."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.records import AssetRef
from agent.store import FINDINGS, Outbox, StoredItem
from agent.summaries import SummaryDraft
from tests.agent.store._drafts import draft
from tests.agent.store._v1 import make_v1_store
from tests.agent.uplink._alerts import maintenance, sensor_fault, severity, trend

BIG = 1 << 30
T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


def outbox(path: Path, uplinks: tuple[str, ...] | None, max_bytes: int = BIG) -> Outbox:
    return Outbox(path, gateway_id="gw-01", max_bytes=max_bytes, first_seq=1, uplinks=uplinks)


def summary(i: int, pad: str = "") -> SummaryDraft:
    return SummaryDraft(
        asset=AssetRef("press-7", "Press 7", 1),
        sensor_id="m1",
        transport="modbus",
        start=T0 + timedelta(minutes=i),
        end=T0 + timedelta(minutes=i + 1),
        channels={"z": {"readings": 60, "features": {"velocity_rms_mm_s": {"pad": pad}}}},
    )


async def take(ob: Outbox, uplink: str, *seqs: int) -> list[StoredItem]:
    return [it for it in await ob.next_batch(uplink, 1000) if not seqs or it.seq in seqs]


async def test_each_uplink_has_its_own_backlog_and_an_item_completes_when_all_have_it(
    tmp_path: Path,
) -> None:
    async with outbox(tmp_path / "o.db", ("a", "b")) as ob:
        await ob.append([draft(i=i) for i in range(4)])
        await ob.mark_delivered("a", await take(ob, "a"))  # a is current
        assert await take(ob, "a") == []
        assert [it.seq for it in await take(ob, "b")] == [1, 2, 3, 4]  # b is down
        stats = await ob.stats()
        assert (stats.uplinks["a"].pending, stats.uplinks["b"].pending) == (0, 4)
        assert (stats.pending, stats.delivered) == (4, 0)  # kept until b has them
        await ob.mark_delivered("b", await take(ob, "b", 1, 2))
        stats = await ob.stats()
        assert (stats.pending, stats.delivered) == (2, 2)
        recent = await ob.recent(1)
        assert {u: d["state"] for u, d in recent[0]["deliveries"].items()} == {
            "a": "delivered",
            "b": "pending",
        }


async def test_a_new_uplink_gets_the_backlog_not_the_history_and_a_removed_one_lets_go(
    tmp_path: Path,
) -> None:
    db = tmp_path / "o.db"
    async with outbox(db, ("a",)) as ob:
        await ob.append([draft(i=i) for i in range(3)])
        await ob.mark_delivered("a", await take(ob, "a", 1))
    async with outbox(db, ("a", "b")) as ob:  # b configured later
        assert [it.seq for it in await take(ob, "b")] == [2, 3]  # seq 1 is history
    async with outbox(db, ("b",)) as ob:  # a removed: it no longer holds anything back
        await ob.mark_delivered("b", await take(ob, "b"))
        stats = await ob.stats()
        assert (stats.pending, stats.delivered) == (0, 3)
        assert not stats.uplinks["a"].configured and stats.uplinks["a"].pending == 2
    async with outbox(db, None) as ob:  # a CLI tool leaves the registration alone
        assert set((await ob.stats()).uplinks) == {"a", "b"}
        assert (await ob.stats()).uplinks["b"].configured


async def test_an_uplink_configured_again_resumes_its_backlog_and_the_budget_keeps_it(
    tmp_path: Path,
) -> None:
    """Removed for a while (its backend was down for weeks), then configured again: what it
    still waited for was given to it again ("configure it again to resume"), so the budget
    must not prune it as if every uplink had it."""
    db = tmp_path / "o.db"
    pad = "p" * 1500
    async with outbox(db, ("a", "b")) as ob:
        await ob.append([draft(tier=1, i=i, blob=pad) for i in range(20)])
        await ob.mark_delivered("a", await take(ob, "a"))  # "b" is down
    async with outbox(db, ("a",)):  # "b" removed from the configuration
        pass
    async with outbox(db, ("a", "b"), max_bytes=400 * 1024) as ob:  # "b" is back
        stats = await ob.stats()
        assert stats.uplinks["b"].pending == 20 and stats.pending == 20
        for i in range(200):  # "a" is current, the store reaches its budget
            await ob.append([draft(tier=3, i=100 + i, blob=pad)])
            await ob.mark_delivered("a", await take(ob, "a"))
        left = await take(ob, "b")
        stats = await ob.stats()
    # Tier 1 goes last: the budget evicted tier-3 alerts "b" never had, not its backlog.
    assert [it.seq for it in left if it.tier == 1] == list(range(1, 21))
    assert stats.uplinks["b"].evicted_total == stats.evicted_total > 0
    assert len(left) + stats.evicted_total == 220


async def test_a_removed_uplink_keeps_its_backlog_under_its_name_until_it_returns(
    tmp_path: Path,
) -> None:
    """What a reload says of a removed (or renamed) uplink: the items it had not received
    stay under its name and go to it when that name is configured again; meanwhile they
    hold nothing back (so the budget may prune them), and what is stored meanwhile is not
    kept for it."""
    db = tmp_path / "o.db"
    pad = "p" * 1500
    async with outbox(db, ("a", "b")) as ob:
        await ob.append([draft(tier=1, i=i, blob=pad) for i in range(5)])
        await ob.mark_delivered("a", await take(ob, "a"))  # "b" is down
        assert await ob.register_uplinks(("a",), {}) == {"b": 5}  # a reload removes "b"
        await ob.append([draft(i=10 + i) for i in range(2)])  # stored while "b" is away
        await ob.mark_delivered("a", await take(ob, "a"))
        assert (await ob.stats()).pending == 0  # "b" holds nothing back
        assert await ob.register_uplinks(("a", "b"), {}) == {}  # configured again
        assert [it.seq for it in await take(ob, "b")] == [1, 2, 3, 4, 5]
        assert (await ob.stats()).pending == 5  # awaited again: not prunable as complete
    async with outbox(db, ("a",), max_bytes=60 * 1024) as ob:  # away again, a small budget
        for i in range(40):
            await ob.append([draft(tier=3, i=100 + i, blob=pad)])
            await ob.mark_delivered("a", await take(ob, "a"))
    async with outbox(db, ("a", "b")) as ob:
        left = [it.seq for it in await take(ob, "b")]
        stats = await ob.stats()
    assert left == [], "complete while b was away, and a budget nothing else fits in"
    assert stats.uplinks["b"].evicted_total == 5, "and counted them as lost for b"


async def test_the_budget_prunes_what_every_backend_has_before_a_removed_uplinks_backlog(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A backup uplink removed while its backend is down (to be configured again once it is
    back) keeps its backlog under its name; while the main uplink delivers, the budget must
    prune the items every backend already has before that backlog, the only items some
    backend lacks. Only when nothing else is left does the backlog go, counted and logged."""
    db = tmp_path / "o.db"
    pad = "p" * 1500
    async with outbox(db, ("a", "b")) as ob:
        await ob.append([draft(tier=1, i=i, blob=pad) for i in range(5)])
        await ob.mark_delivered("a", await take(ob, "a"))  # "b" is down
        assert await ob.register_uplinks(("a",), {}) == {"b": 5}  # a reload removes "b"
    async with outbox(db, ("a",), max_bytes=400 * 1024) as ob:
        for i in range(300):  # "a" delivers all along; the store reaches its budget
            await ob.append([draft(tier=3, i=100 + i, blob=pad)])
            await ob.mark_delivered("a", await take(ob, "a"))
        pruned = (await ob.stats()).delivered_pruned_total
    async with outbox(db, ("a", "b")) as ob:  # "b" is configured again
        left = [it.seq for it in await take(ob, "b")]
        stats = await ob.stats()
    assert pruned > 0
    assert left == [1, 2, 3, 4, 5], f"b lost its backlog while {pruned} newer items went"
    assert stats.uplinks["b"].evicted_total == 0
    with caplog.at_level(logging.WARNING):
        async with outbox(db, ("a",), max_bytes=400 * 1024) as ob:
            for i in range(300):  # "a" is down too: only undelivered alerts come in
                await ob.append([draft(tier=3, i=1000 + i, blob=pad)])
    async with outbox(db, ("a", "b")) as ob:
        stats = await ob.stats()
        left = [it.seq for it in await take(ob, "b")]
    assert min(left) > 5 and stats.uplinks["b"].evicted_total == 5, stats.uplinks["b"]
    assert any("kept for uplink b, which is not configured" in r.message for r in caplog.records)


async def test_with_no_uplink_alerts_wait_for_the_first_one(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    async with outbox(db, ()) as ob:
        await ob.append([draft(i=i) for i in range(2)])
        assert (await ob.stats()).pending == 2
    async with outbox(db, ("http",)) as ob:
        assert [it.seq for it in await take(ob, "http")] == [1, 2]


async def test_a_v1_store_is_migrated_in_place_without_loss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "o.db"
    make_v1_store(db, delivered=3, pending=4, dead=2)
    with caplog.at_level(logging.WARNING):
        async with outbox(db, ("portfolio", "broker")) as ob:
            state = await ob.load_state()
            stats = await ob.stats()
            dead = await ob.dead_letters()
            to_portfolio = await take(ob, "portfolio")
            to_broker = await take(ob, "broker")
            [rec] = await ob.append([draft()])
    assert state == {"press-7/m1/z/severity": '{"level": 1}'}
    # v1's one uplink is the first configured: its pending alerts and dead letters.
    assert sorted(it.seq for it in to_portfolio) == [4, 5, 6, 7]
    assert sorted((d["uplink"], d["seq"], d["reason"]) for d in dead) == [
        ("portfolio", 8, "HTTP 400: bad"),
        ("portfolio", 9, "HTTP 400: bad"),
    ]
    # A second uplink gets everything not yet delivered everywhere (dead letters too).
    assert sorted(it.seq for it in to_broker) == [4, 5, 6, 7, 8, 9]
    assert (stats.delivered, stats.last_seq, rec["seq"]) == (3, 9, 10)
    assert "migrated from schema v1" in caplog.text
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert not conn.execute(
            "SELECT name FROM sqlite_master WHERE name = 'dead_letters'"
        ).fetchall()


async def test_requeue_by_id_by_uplink_and_all_is_recorded(tmp_path: Path) -> None:
    async with outbox(tmp_path / "o.db", ("a", "b")) as ob:
        recs = await ob.append([draft(i=i) for i in range(4)])
        ids = [r["alert_id"] for r in recs]
        await ob.dead_letter("a", await take(ob, "a", 1, 2), "HTTP 400: refused")
        await ob.dead_letter("b", await take(ob, "b", 3), "HTTP 422: schema")
        assert await ob.requeue(item_ids=["gw-01-999999999999"]) == []
        [one] = await ob.requeue(item_ids=[ids[0]], by="test")
        assert (one["uplink"], one["id"], one["reason"]) == ("a", ids[0], "HTTP 400: refused")
        assert [it.seq for it in await take(ob, "a")] == [1, 3, 4]
        [by_uplink] = await ob.requeue(uplink="b")
        assert by_uplink["id"] == ids[2]
        await ob.dead_letter("b", await take(ob, "b", 3), "HTTP 422: again")
        rest = await ob.requeue()
        assert sorted(r["id"] for r in rest) == [ids[1], ids[2]]
        log = await ob.requeues()
        stats = await ob.stats()
    assert len(log) == 4 and log[-1]["by"] == "test"
    assert stats.dead_lettered == 0
    assert (stats.uplinks["a"].requeued_total, stats.uplinks["b"].requeued_total) == (2, 2)


async def test_summaries_go_after_alerts_and_are_evicted_first(tmp_path: Path) -> None:
    budget = 400 * 1024
    async with outbox(tmp_path / "o.db", ("a",), max_bytes=budget) as ob:
        sums = await ob.append_summaries([summary(i) for i in range(2)])
        [alert] = await ob.append([draft(tier=3)])
        assert sums[0]["summary_id"] == "gw-01-summary-000000000001" and alert["seq"] == 1
        batch = await take(ob, "a")
        assert [(it.class_name, it.seq) for it in batch] == [("alert", 1)]  # alerts first
        await ob.mark_delivered("a", batch)
        assert [(it.class_name, it.seq) for it in await take(ob, "a")] == [
            ("summary", 1),
            ("summary", 2),
        ]
        for i in range(150):  # fill the budget with summaries, then with alerts
            await ob.append_summaries([summary(i, "s" * 1500)])
        await ob.append([draft(tier=3, i=i, blob="a" * 1500) for i in range(40)])
        stats = await ob.stats()
        left = await ob.next_batch("a", 1000)
    assert stats.summaries_evicted_total > 0 and stats.evicted_total == 0
    assert stats.uplinks["a"].summaries_evicted_total == stats.summaries_evicted_total
    assert stats.pending == 40 and len([it for it in left if it.class_name == "alert"]) == 40


async def test_the_budget_keeps_what_one_uplink_still_needs_and_counts_per_uplink(
    tmp_path: Path,
) -> None:
    pad = "p" * 1500
    async with outbox(tmp_path / "o.db", ("a", "b"), max_bytes=400 * 1024) as ob:
        for i in range(200):  # "a" is current, "b" is down
            await ob.append([draft(tier=2, i=i, blob=pad)])
            await ob.mark_delivered("a", await take(ob, "a"))
        stats = await ob.stats()
        left = await take(ob, "b")
    # Delivered to "a" is not delivered: nothing was pruned as if safe upstream...
    assert stats.delivered_pruned_total == 0
    # ...the budget evicted alerts "b" never had, oldest first, and said whose they were.
    assert stats.evicted_total > 0
    assert stats.uplinks["b"].evicted_total == stats.evicted_total
    assert stats.uplinks["a"].evicted_total == 0
    assert len(left) + stats.evicted_total == 200
    assert min(it.seq for it in left) == stats.evicted_total + 1


async def test_a_findings_uplink_is_given_only_findings_and_holds_nothing_else(
    tmp_path: Path,
) -> None:
    """A CMMS uplink carries raised and escalated severity and trend alerts only: a clear,
    a repair or a summary never waits for it (alone, it is complete at once)."""
    path = tmp_path / "o.db"
    mixed = [severity("C"), trend("escalated"), severity("B", "cleared", velocity=2.0),
             maintenance(), sensor_fault()]  # fmt: skip
    async with Outbox(path, gateway_id="gw-01", max_bytes=BIG, first_seq=1,
                      uplinks=("cmms",), carries={"cmms": FINDINGS}) as ob:  # fmt: skip
        await ob.append(mixed)
        await ob.append_summaries([summary(0)])
        assert [it.seq for it in await take(ob, "cmms")] == [1, 2]
        stats = await ob.stats()
        assert (stats.pending, stats.delivered, stats.summaries_pending) == (2, 3, 0)
    # Beside a portfolio uplink that carries everything; then registered on a backlog.
    async with Outbox(path, gateway_id="gw-01", max_bytes=BIG, uplinks=("cmms", "http"),
                      carries={"cmms": FINDINGS}) as ob:  # fmt: skip
        # Its backlog: the findings still waiting; the rest was complete already.
        assert [it.seq for it in await take(ob, "http")] == [1, 2]
        await ob.append(mixed)
        assert [it.seq for it in await take(ob, "cmms")] == [1, 2, 6, 7]
        assert [it.seq for it in await take(ob, "http")] == [1, 2, 6, 7, 8, 9, 10]
        await ob.mark_delivered("http", await take(ob, "http"))
        assert (await ob.stats()).pending == 4  # the findings wait for the CMMS alone
    async with Outbox(path, gateway_id="gw-01", max_bytes=BIG, uplinks=("http", "cmms-2"),
                      carries={"cmms-2": FINDINGS}) as ob:  # fmt: skip
        assert [it.seq for it in await take(ob, "cmms-2")] == [1, 2, 6, 7]
