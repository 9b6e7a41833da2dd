"""Which stored alerts the disk budget may give up first: each alert's place in its episode.

An episode is one alert condition on one channel: kind, asset, sensor, channel (raised,
escalated, cleared). Each alert row carries `hold`, its rank for eviction within a tier
(agent.store._budget evicts the lowest hold first, oldest first within it):

- CLOSED (0): a record of an episode that was cleared (or closed by a maintenance record),
  and the one-off records (gateway_fault, maintenance): the backend misses history only;
- BETWEEN (1): a record of an open episode that is neither its raise nor its latest state;
- RAISED (2): the raise of an open episode that has a later record;
- LATEST (3): the latest record of an open episode: without it the backend never learns
  that the machine has an open fault.

Kept up to date at each append, per record, through a partial index over the rows of open
episodes only (`hold > 0`): one indexed statement per record, touching only the rows of
the one open episode of that key (a raise closes whatever an earlier, never cleared,
episode of its key left open), so no scan and no growth with the backlog.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

CLOSED, BETWEEN, RAISED, LATEST = 0, 1, 2, 3
_EPISODIC = ("severity", "trend", "sensor_fault")
_SEP = "\x1f"  # cannot occur in ids from the config
_CHUNK = 1000  # rows read at a time by backfill


def episode_key(kind: str, asset: str, sensor: str, channel: str) -> str:
    return _SEP.join((kind, asset, sensor, channel))


def link(conn: sqlite3.Connection, record: Mapping[str, Any]) -> tuple[str | None, int]:
    """The (episode, hold) of a record about to be inserted; updates the earlier rows of
    the episodes it continues or closes (in the caller's transaction)."""
    kind, state = record["kind"], record["state"]
    asset = record["asset"]["id"]
    if kind == "maintenance":  # closes the asset's alerts its evidence lists
        for c in (record.get("evidence") or {}).get("closed_alerts") or ():
            if isinstance(c, Mapping):
                _close(conn, episode_key(str(c.get("kind")), asset, str(c.get("sensor")),
                                         str(c.get("channel"))))  # fmt: skip
        return None, CLOSED
    if kind not in _EPISODIC:
        return None, CLOSED  # a one-off event (gateway_fault)
    sensor = record["sensor"]
    key = episode_key(kind, asset, sensor["id"], sensor["channel"])
    if state == "cleared":
        _close(conn, key)
        return key, CLOSED
    if state == "raised":  # a new episode: one never cleared before it is history now
        _close(conn, key)
    else:  # the previous latest record becomes the raise or a record in between
        conn.execute(
            f"UPDATE alerts SET hold = CASE WHEN json_extract(body, '$.state') = 'raised' "
            f"THEN {RAISED} ELSE {BETWEEN} END WHERE episode = ? AND hold > 0 "
            f"AND hold = {LATEST}",  # `hold > 0` lets SQLite use alerts_open: no scan
            (key,),
        )
    return key, LATEST


def backfill(conn: sqlite3.Connection) -> int:
    """Rank the undelivered alerts of a store written before episodes were tracked (once,
    at open; the rows read oldest first as if appended again). Returns how many."""
    done, last = 0, -1
    while True:  # a chunk at a time: a large backlog's bodies never all in memory at once
        rows = conn.execute(
            "SELECT seq, body FROM alerts WHERE seq > ? AND delivered_at IS NULL "
            "AND episode IS NULL AND kind IN ('severity', 'trend', 'sensor_fault', "
            "'maintenance') ORDER BY seq LIMIT ?",
            (last, _CHUNK),
        ).fetchall()
        if not rows:
            return done
        for seq, body in rows:
            try:
                record = json.loads(body)
                episode, hold = link(conn, record)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # unreadable: stays CLOSED, as before (oldest first)
            conn.execute(
                "UPDATE alerts SET episode = ?, hold = ? WHERE seq = ?", (episode, hold, seq)
            )
        done += len(rows)
        last = rows[-1][0]


def _close(conn: sqlite3.Connection, key: str) -> None:
    conn.execute(f"UPDATE alerts SET hold = {CLOSED} WHERE episode = ? AND hold > 0", (key,))
