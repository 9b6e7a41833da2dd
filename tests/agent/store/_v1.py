"""A schema v1 store as the previous release wrote it (its DDL verbatim), for migration tests."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

V1_DDL = """
CREATE TABLE alerts (
    seq          INTEGER PRIMARY KEY,
    alert_id     TEXT NOT NULL UNIQUE,
    tier         INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    detected_at  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    body         TEXT NOT NULL,
    delivered_at TEXT
);
CREATE INDEX alerts_pending ON alerts (tier, seq) WHERE delivered_at IS NULL;
CREATE INDEX alerts_delivered ON alerts (seq) WHERE delivered_at IS NOT NULL;
CREATE TABLE dead_letters (
    seq          INTEGER PRIMARY KEY,
    alert_id     TEXT NOT NULL,
    tier         INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    detected_at  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    body         TEXT NOT NULL,
    reason       TEXT NOT NULL,
    dead_at      TEXT NOT NULL
);
CREATE TABLE monitor_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL);
CREATE TABLE quarantine (
    id            INTEGER PRIMARY KEY,
    at            TEXT NOT NULL,
    path          TEXT NOT NULL,
    reason        TEXT NOT NULL,
    recovered_seq INTEGER,
    seq_restart   INTEGER NOT NULL
);
"""
TS = "2026-11-21T08:15:02.123Z"


def _body(seq: int, tier: int) -> str:
    rec = {
        "schema": "edge-agent/alert/v1",
        "alert_id": f"gw-01-{seq:012d}",
        "seq": seq,
        "gateway_id": "gw-01",
        "asset": {"id": f"a{tier}", "name": "", "tier": tier},
        "kind": "severity",
        "detected_at": TS,
    }
    return json.dumps(rec, sort_keys=True, separators=(",", ":"))


def make_v1_store(path: Path, *, delivered: int, pending: int, dead: int) -> None:
    """seq 1..delivered delivered, then `pending` undelivered, then `dead` dead letters."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(V1_DDL)
    seq = 0
    for n, done in ((delivered, True), (pending, False)):
        for _ in range(n):
            seq += 1
            conn.execute(
                "INSERT INTO alerts VALUES (?, ?, ?, 'severity', ?, ?, ?, ?)",
                (seq, f"gw-01-{seq:012d}", 1 + seq % 3, TS, TS, _body(seq, 1 + seq % 3),
                 TS if done else None),
            )  # fmt: skip
    for _ in range(dead):
        seq += 1
        conn.execute(
            "INSERT INTO dead_letters VALUES (?, ?, 2, 'severity', ?, ?, ?, 'HTTP 400: bad', ?)",
            (seq, f"gw-01-{seq:012d}", TS, TS, _body(seq, 2), TS),
        )
    conn.execute("INSERT INTO monitor_state VALUES ('press-7/m1/z/severity', '{\"level\": 1}')")
    for key, value in (("last_seq", seq), ("evicted_total", 0), ("gateway_id", "gw-01")):
        conn.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
    conn.execute("PRAGMA user_version=1")
    conn.close()
