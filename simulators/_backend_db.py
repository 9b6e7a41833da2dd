"""The backend simulator's SQLite file: alerts (deduplicated on alert_id), confirmations.

Used only from the backend's one DB thread. A file written by an older backend (without
the asset and detected_at columns) is brought up to date on open, its rows kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from simulators._case_facts import format_time, obj, parse_time, text
from simulators._sim import CountedDb
from simulators.cases import Confirmation

COUNTERS = ("posts", "accepted", "duplicates", "rejected", "unauthorized", "faults_served")
MAX_CASE_RECORDS = 200_000  # records read to build cases (the most recent ones beyond)


def _now() -> str:
    return format_time(datetime.now(UTC))


class BackendDb(CountedDb):
    """The backend's SQLite file, used only from one worker thread."""

    def __init__(self, path: str) -> None:
        super().__init__(path, COUNTERS)
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS alerts (receipt INTEGER PRIMARY KEY AUTOINCREMENT, "
            "alert_id TEXT NOT NULL UNIQUE, gateway_id TEXT NOT NULL, seq INTEGER NOT NULL, "
            "received_at TEXT NOT NULL, body TEXT NOT NULL)"
        )
        self._add_case_columns()
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS confirmations (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "anchor_alert_id TEXT NOT NULL, confirmed_at TEXT NOT NULL, by TEXT NOT NULL, "
            "note TEXT NOT NULL)"
        )

    def _add_case_columns(self) -> None:
        cols = {row[1] for row in self.conn.execute("PRAGMA table_info(alerts)")}
        if "asset_id" in cols:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("ALTER TABLE alerts ADD COLUMN asset_id TEXT")
            self.conn.execute("ALTER TABLE alerts ADD COLUMN detected_at TEXT")
            rows = self.conn.execute("SELECT receipt, body FROM alerts").fetchall()
            self.conn.executemany(
                "UPDATE alerts SET asset_id = ?, detected_at = ? WHERE receipt = ?",
                [(*_case_keys(json.loads(body)), receipt) for receipt, body in rows],
            )
            self.conn.execute(
                "CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (detected_at, receipt)"
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def store(self, records: list[dict[str, Any]]) -> tuple[int, int]:
        now = _now()
        accepted = 0
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for rec in records:
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO alerts (alert_id, gateway_id, seq, received_at, body, "
                    "asset_id, detected_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        rec["alert_id"],
                        rec["gateway_id"],
                        rec["seq"],
                        now,
                        json.dumps(rec, sort_keys=True, separators=(",", ":")),
                        *_case_keys(rec),
                    ),
                )
                accepted += cur.rowcount
            duplicates = len(records) - accepted
            self.bump(accepted=accepted, duplicates=duplicates)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return accepted, duplicates

    def list(self, after: int, limit: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT receipt, received_at, body FROM alerts WHERE receipt > ? "
            "ORDER BY receipt LIMIT ?",
            (after, limit),
        ).fetchall()
        return [{"receipt": r, "received_at": at, "alert": json.loads(b)} for r, at, b in rows]

    def get(self, alert_id: str) -> dict[str, Any] | None:
        """The stored record with this alert_id, or None."""
        row = self.conn.execute(
            "SELECT body FROM alerts WHERE alert_id = ?", (alert_id,)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def case_records(self) -> Iterator[dict[str, Any]]:
        """Records with an asset, the most recent MAX_CASE_RECORDS by detection time."""
        rows = self.conn.execute(
            "SELECT body FROM alerts WHERE asset_id IS NOT NULL "
            "ORDER BY detected_at DESC, receipt DESC LIMIT ?",
            (MAX_CASE_RECORDS,),
        ).fetchall()
        for (body,) in reversed(rows):
            yield json.loads(body)

    def confirm(self, anchor_alert_id: str, by: str, note: str) -> Confirmation:
        """Store a confirmation of the case `anchor_alert_id` belongs to, now."""
        now = _now()
        self.conn.execute(
            "INSERT INTO confirmations (anchor_alert_id, confirmed_at, by, note) "
            "VALUES (?, ?, ?, ?)",
            (anchor_alert_id, now, by, note),
        )
        at = parse_time(now)
        assert at is not None
        return Confirmation(anchor_alert_id, at, by, note)

    def confirmations(self) -> list[Confirmation]:
        out = []
        for anchor, at, by, note in self.conn.execute(
            "SELECT anchor_alert_id, confirmed_at, by, note FROM confirmations ORDER BY id"
        ):
            ts = parse_time(at)
            if ts is not None:
                out.append(Confirmation(anchor, ts, by, note))
        return out

    def stats(self) -> dict[str, int]:
        out = self.counters()
        out["stored"] = self.conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
        out["confirmations"] = self.conn.execute("SELECT count(*) FROM confirmations").fetchone()[0]
        return out


def _case_keys(rec: Any) -> tuple[str | None, str | None]:
    """(asset id, detected_at) of a record, for the cases' per-asset, time-ordered reads."""
    asset_id = text(obj(obj(rec).get("asset")).get("id"), 200)
    detected = obj(rec).get("detected_at")
    return asset_id, detected if isinstance(detected, str) else None
