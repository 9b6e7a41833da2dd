"""Updates reach a real SQLite store in order, survive a full store, and a bad one is
dropped loudly without stopping the rest."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
from pathlib import Path

import jsonschema
import pytest

from agent.analysis.monitor import Update
from agent.pending import STATE_BATCH_S, PendingWrites, UpdateWriter
from agent.records import Progression, TimeToFailure
from agent.runtime import PipelineCounters
from agent.store import Outbox
from tests.agent.store._drafts import draft
from tests.agent.test_reload_mqtt import until

SCHEMA = json.loads((Path(__file__).parents[2] / "agent/schemas/alert-v1.json").read_text())


def _limit_pages(ob: Outbox, extra: int) -> object:
    # Test-only reach into the writer thread: SQLite's own page limit gives a genuine
    # SQLITE_FULL (the store tests also fill a real tmpfs).
    return ob._call(
        lambda c: c.execute(
            f"PRAGMA max_page_count = {c.execute('PRAGMA page_count').fetchone()[0] + extra}"
        ).fetchone(),
        write=False,
        what="limit",
    )


async def test_full_store_holds_updates_in_order_and_writes_them_later(tmp_path: Path) -> None:
    counters = PipelineCounters()
    async with Outbox(tmp_path / "o.db", gateway_id="gw", max_bytes=1 << 30, first_seq=1) as ob:
        pending = PendingWrites(ob, counters)
        await _limit_pages(ob, 0)
        big = [Update([draft(i=i, blob="z" * 4000)], {f"k{i}": "old"}) for i in range(3)]
        for u in big:
            assert await pending.write(u) is None  # not stored: the store is full
        assert len(pending) == 3 and counters.store_errors_total >= 1
        assert pending.failing  # /healthz says "degraded" at once
        await _limit_pages(ob, 1000)
        # A later update jumps nothing: with `now` it writes everything held first, in order.
        reset = Update([draft(i=9)], {"k0": "reset", "k1": "reset", "k2": "reset"})
        records = await pending.write(reset, now=True)
        assert records is not None and records[0]["seq"] == 4
        assert len(pending) == 0 and counters.alerts_total == 4 and counters.alerts_lost_total == 0
        assert not pending.failing and pending.held_for_s == 0.0
        state = await ob.load_state()
    assert state == {"k0": "reset", "k1": "reset", "k2": "reset"}  # the newest state wins


async def test_an_unstorable_update_is_dropped_and_counted_not_fatal(tmp_path: Path) -> None:
    counters = PipelineCounters()
    async with Outbox(tmp_path / "o.db", gateway_id="gw", max_bytes=1 << 30, first_seq=1) as ob:
        pending = PendingWrites(ob, counters)
        bad = draft(i=1, raw=b"bytes")  # no JSON for it: a bug upstream
        assert await pending.write(Update([bad], {})) is None
        good = await pending.write(Update([draft(i=2)], {}))
    assert good is not None and good[0]["seq"] == 1
    assert counters.alerts_lost_total == 1 and counters.alerts_total == 1


async def test_an_alert_with_a_non_finite_number_is_kept_without_it(tmp_path: Path) -> None:
    """JSON has no NaN or infinity, so such a record could not be stored and the alert was
    lost; now the section holding one is null and the evidence says what was left out."""
    counters = PipelineCounters()
    async with Outbox(tmp_path / "o.db", gateway_id="gw", max_bytes=1 << 30, first_seq=1) as ob:
        pending = PendingWrites(ob, counters)
        bad = draft(i=1, crest_factor=float("nan"))
        bad = dataclasses.replace(
            bad,
            severity=dataclasses.replace(bad.severity, value=float("inf")),
            time_to_failure=TimeToFailure(12.0, 3.0, float("inf"), "velocity_rms_mm_s", 7.1, "m"),
            progression=Progression(0.3, "mm/s per day", 24.0),
        )
        stored = await pending.write(Update([bad], {}))
        assert stored is not None
    with sqlite3.connect(tmp_path / "o.db") as conn:  # the frozen text the uplinks send
        (rec,) = [json.loads(body) for (body,) in conn.execute("SELECT body FROM alerts")]
    jsonschema.validate(rec, SCHEMA)
    assert rec["seq"] == 1 and rec["severity"] is None and rec["time_to_failure"] is None
    assert rec["progression"] == {"rate_per_day": 0.3, "unit": "mm/s per day", "window_hours": 24.0}
    assert rec["evidence"]["non_finite"] == [
        "severity", "time_to_failure", "evidence.features.crest_factor"
    ]  # fmt: skip
    assert rec["evidence"]["features"] == {"kurtosis": 5.8}
    assert "time_to_failure held a number that is not finite" in rec["no_estimate_reason"]
    assert counters.alerts_lost_total == 0 and counters.alerts_total == 1


async def test_held_updates_are_bounded(tmp_path: Path) -> None:
    counters = PipelineCounters()
    async with Outbox(tmp_path / "o.db", gateway_id="gw", max_bytes=1 << 30, first_seq=1) as ob:
        pending = PendingWrites(ob, counters, limit=2)
        for i in range(5):
            pending.hold(Update([draft(i=i)], {}))
        assert len(pending) == 2 and counters.alerts_lost_total == 3


async def test_concurrent_writers_each_get_their_own_records(tmp_path: Path) -> None:
    """One writer's flush stores the others' updates too: each still learns it was stored
    (a maintenance request must not be answered "not stored" when it was)."""
    counters = PipelineCounters()
    async with Outbox(tmp_path / "o.db", gateway_id="gw", max_bytes=1 << 30, first_seq=1) as ob:
        pending = PendingWrites(ob, counters)
        results = await asyncio.gather(
            *(pending.write(Update([draft(i=i)]), now=True) for i in range(20))
        )
    assert all(r is not None and len(r) == 1 for r in results), results
    assert sorted(r[0]["seq"] for r in results if r) == list(range(1, 21))


async def test_held_for_counts_from_the_oldest_waiting_update(tmp_path: Path) -> None:
    """State-only updates wait a moment to share a transaction; /healthz calls the agent
    degraded only when updates wait much longer than that (or a write failed)."""
    counters = PipelineCounters()
    async with Outbox(tmp_path / "o.db", gateway_id="gw", max_bytes=1 << 30, first_seq=1) as ob:
        pending = PendingWrites(ob, counters)
        assert pending.held_for_s == 0.0
        pending.hold(Update([], {"k": "1"}))
        await asyncio.sleep(0.05)
        pending.hold(Update([], {"k": "2"}))  # a later update does not restart the clock
        assert pending.held_for_s >= 0.05
        async with pending.lock:
            await pending.flush()
        assert pending.held_for_s == 0.0 and not pending.failing
        assert await ob.load_state() == {"k": "2"}


async def test_the_writer_lets_state_wait_for_company_and_writes_an_alert_at_once(
    tmp_path: Path,
) -> None:
    """State-only updates wait up to STATE_BATCH_S to share a transaction; an alert is
    written at once; the shutdown's close ends the producers, then writes what is held."""
    counters = PipelineCounters()
    async with Outbox(tmp_path / "o.db", gateway_id="gw", max_bytes=1 << 30, first_seq=1) as ob:
        pending = PendingWrites(ob, counters)
        writer = UpdateWriter(pending)
        task = asyncio.create_task(writer.run())
        writer.persist(Update([], {"k": "1"}))
        await asyncio.sleep(STATE_BATCH_S / 5)
        assert len(pending) == 1  # waiting for company
        await until(lambda: len(pending) == 0, 10 * STATE_BATCH_S)  # then written alone
        async with pending.lock:  # that write is over (a flush takes what arrives meanwhile)
            assert await ob.load_state() == {"k": "1"}
        writer.persist(Update([draft(i=1)], {"k": "2"}))
        # At once: well before the batch time is up (one commit on a local file).
        await until(lambda: counters.alerts_total == 1, 0.8 * STATE_BATCH_S)
        assert await ob.load_state() == {"k": "2"}
        writer.persist(Update([], {"k": "3"}))
        await writer.close([task])
        assert writer.closed and task.cancelled() and len(pending) == 0
        assert await ob.load_state() == {"k": "3"}
        await writer.flush_after_crash()  # after the last flush: nothing more is written
    assert counters.alerts_lost_total == 0 and counters.store_errors_total == 0


async def test_a_store_that_stays_full_is_logged_once_per_episode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Every retry logged an ERROR with a held count that changes (never collapsed as a
    # repeat): a day of full disk put thousands of lines in the journal.
    counters = PipelineCounters()
    async with Outbox(tmp_path / "o.db", gateway_id="gw", max_bytes=1 << 30, first_seq=1) as ob:
        pending = PendingWrites(ob, counters)
        await _limit_pages(ob, 0)
        with caplog.at_level(logging.DEBUG, logger="agent.pending"):
            for i in range(10):
                assert (
                    await pending.write(Update([draft(i=i, blob="z" * 4000)], {}), now=True) is None
                )
            await _limit_pages(ob, 1000)
            assert await pending.write(Update([draft(i=99)], {}), now=True) is not None
    said = [r for r in caplog.records if r.name == "agent.pending" and r.levelno >= logging.INFO]
    failed = [r for r in said if "store write failed" in r.getMessage()]
    resumed = [r for r in said if "store writes resumed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelno == logging.ERROR, [r.getMessage() for r in said]
    assert len(resumed) == 1, [r.getMessage() for r in said]
    assert counters.store_errors_total == 10 and counters.alerts_total == 11
