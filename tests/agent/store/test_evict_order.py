"""The disk budget's order within a tier: an open fault's latest record is given up last."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path

import pytest

from agent.records import AlertDraft, SensorRef
from agent.store import Outbox
from tests.agent.store._drafts import draft

UP = "up"
BUDGET = 420 * 1024  # schema v2 has ~100 KiB of empty tables and indexes
PAD = "y" * 1500


def alert(i: int, sensor: str, state: str = "raised", kind: str = "severity") -> AlertDraft:
    """A tier-2 alert of `kind` on sensor `sensor` of one asset, in state `state`."""
    d = draft(2, i, asset="press-7", blob=PAD)
    return dataclasses.replace(
        d,
        sensor=SensorRef(sensor, "z", "modbus"),
        state=state,
        kind=kind,  # type: ignore[arg-type]
    )


def outbox(path: Path) -> Outbox:
    return Outbox(path, gateway_id="gw-01", max_bytes=BUDGET, uplinks=[UP], first_seq=1)


async def test_open_episode_outlives_closed_ones_within_a_tier(tmp_path: Path) -> None:
    """Oldest first would evict the raise of a fault still open (the backend would never
    learn of it) while closed episodes newer than it stay."""
    async with outbox(tmp_path / "outbox.db") as ob:
        [open_raise] = await ob.append([alert(0, "s-open")])
        [b_raise] = await ob.append([alert(1, "s-esc")])
        [b_mid] = await ob.append([alert(2, "s-esc", "escalated")])
        [b_last] = await ob.append([alert(3, "s-esc", "escalated")])
        closed: list[str] = []
        for i in range(100):  # closed episodes: raise and clear, 200 records over the budget
            for r in await ob.append([alert(10 + i, f"s{i}"), alert(11 + i, f"s{i}", "cleared")]):
                closed.append(r["alert_id"])
        stats = await ob.stats()
        left = {it.item_id for it in await ob.next_batch(UP, 1000)}
    assert stats.evicted_total > 4, "the test must evict more than the open episodes hold"
    assert open_raise["alert_id"] in left, "the raise of an open fault was evicted"
    assert b_last["alert_id"] in left and b_raise["alert_id"] in left
    gone = set(closed) - left
    assert len(gone) == stats.evicted_total  # only closed episodes went
    assert gone == set(closed[: len(gone)])  # oldest first among them
    assert b_mid["alert_id"] in left


async def test_within_open_episodes_the_latest_record_goes_last(tmp_path: Path) -> None:
    async with outbox(tmp_path / "outbox.db") as ob:
        [first] = await ob.append([alert(0, "s-x")])  # the oldest: an open raise, latest
        recs = [r["alert_id"] for r in await ob.append([alert(0, "s-a")])]
        recs += [r["alert_id"] for r in await ob.append([alert(1, "s-a", "escalated")])]
        recs += [r["alert_id"] for r in await ob.append([alert(2, "s-a", "escalated")])]
        latest = []
        for i in range(200):  # one open episode per sensor, each its raise only
            latest += [r["alert_id"] for r in await ob.append([alert(10 + i, f"t{i}")])]
            if (await ob.stats()).evicted_total >= 2:
                break
        left = {it.item_id for it in await ob.next_batch(UP, 1000)}
    # The escalation in between went first, then the raise; the latest state stayed.
    assert recs[1] not in left and recs[0] not in left and recs[2] in left
    assert set(latest) <= left and first["alert_id"] in left


async def test_maintenance_and_clears_close_episodes(tmp_path: Path) -> None:
    """Holds as stored: a clear closes its episode; a maintenance record closes those it
    lists; a gateway fault is a one-off."""
    m = dataclasses.replace(
        alert(5, "*", "cleared", "maintenance"),
        evidence={"closed_alerts": [{"sensor": "s-m", "channel": "z", "kind": "trend"}]},
    )
    async with outbox(tmp_path / "outbox.db") as ob:
        await ob.append([alert(0, "s-c"), alert(1, "s-m", kind="trend"), alert(2, "s-o")])
        await ob.append([alert(3, "s-c", "cleared"), m, alert(4, "g", kind="gateway_fault")])
    with sqlite3.connect(tmp_path / "outbox.db") as conn:
        holds = [r[0] for r in conn.execute("SELECT hold FROM alerts ORDER BY seq")]
    assert holds == [0, 0, 3, 0, 0, 0]


async def test_a_store_from_before_is_ranked_at_open(tmp_path: Path) -> None:
    """A file written before episodes were tracked: its undelivered alerts are ranked once."""
    db = tmp_path / "outbox.db"
    async with outbox(db) as ob:
        await ob.append([alert(0, "s-o"), alert(1, "s-c"), alert(2, "s-c", "cleared")])
    with sqlite3.connect(db) as conn:  # as the previous version left it
        conn.execute("DROP INDEX alerts_evict")
        conn.execute("DROP INDEX alerts_open")
        conn.execute("ALTER TABLE alerts DROP COLUMN hold")
        conn.execute("ALTER TABLE alerts DROP COLUMN episode")
        conn.execute("CREATE INDEX alerts_pending ON alerts (tier, seq) WHERE delivered_at IS NULL")
        conn.execute("DELETE FROM meta WHERE key = 'episodes_ranked_at'")
    async with outbox(db):
        pass
    with sqlite3.connect(db) as conn:
        holds = [r[0] for r in conn.execute("SELECT hold FROM alerts ORDER BY seq")]
        idx = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert holds == [3, 0, 0]
    assert "alerts_pending" not in idx and "alerts_evict" in idx


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
