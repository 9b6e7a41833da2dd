"""Episode ranking never scans the alerts table: the statements use the alerts_open index.

A scan per appended record made every escalation cost a pass over the whole store, and the
one-off ranking of a store from before episodes were tracked quadratic (50 000 undelivered
alerts: 605 s at the first open, past systemd's start timeout, rolled back, again at
every restart)."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from agent.records import AlertDraft, SensorRef
from agent.store import Outbox, _episodes
from tests.agent.store._drafts import draft


def alert(i: int, state: str) -> AlertDraft:
    return dataclasses.replace(draft(2, i), sensor=SensorRef("s1", "z", "modbus"), state=state)


async def test_ranking_statements_use_the_index(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    async with Outbox(db, gateway_id="gw-01", max_bytes=2**26, uplinks=["up"]) as ob:
        records = await ob.append([alert(0, "raised"), alert(1, "escalated")])
    statements: list[str] = []
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.set_trace_callback(statements.append)
        esc = dict(records[1], state="escalated")
        for state in ("escalated", "raised", "cleared"):
            _episodes.link(conn, dict(esc, state=state))
        conn.execute("UPDATE alerts SET episode = NULL")  # as a store from before
        _episodes.backfill(conn)
        conn.set_trace_callback(None)
        touching = [s for s in statements if "alerts" in s and not s.startswith("INSERT")]
        assert any("json_extract" in s for s in touching)  # the escalation's statement ran
        for sql in touching:
            if sql.startswith("UPDATE alerts SET episode = NULL"):
                continue
            plan = " ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "SCAN alerts" not in plan, f"{sql!r} scans the store: {plan}"
        conn.execute("ROLLBACK")
    finally:
        conn.close()
