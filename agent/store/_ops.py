"""The outbox's SQL, as plain functions of a connection; they run on the writer thread."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.analysis.reliability import FleetLife
from agent.records import AlertDraft, dumps, parse_ts
from agent.store._schema import now_ts

log = logging.getLogger(__name__)

_CHUNK = 500  # bound on SQL variables per statement


@dataclass(frozen=True, slots=True)
class StoredAlert:
    """One undelivered alert as the uplink sends it: the frozen JSON text, never rebuilt."""

    seq: int
    tier: int
    json: str


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Counts for status and health.

    Attributes:
        pending: stored, not yet delivered, not dead-lettered.
        delivered: delivered rows still kept (pruned oldest-first under the budget).
        dead_lettered: rejected by a backend, kept for inspection.
        oldest_pending_age_s: wall-clock age of the oldest pending alert (0 if none).
        db_bytes: database file plus WAL on disk.
        evicted_total: undelivered alerts dropped for the disk budget, ever.
        last_seq: the highest seq ever issued (never reused).
        dead_letter_evicted_total: dead letters dropped for the disk budget, ever.
        delivered_pruned_total: delivered rows pruned for the disk budget, ever.
        quarantined_total: corrupt files moved aside into this store's history.
    """

    pending: int
    delivered: int
    dead_lettered: int
    oldest_pending_age_s: float
    db_bytes: int
    evicted_total: int
    last_seq: int
    dead_letter_evicted_total: int = 0
    delivered_pruned_total: int = 0
    quarantined_total: int = 0


def meta_int(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def add_meta(conn: sqlite3.Connection, key: str, n: int) -> None:
    conn.execute("UPDATE meta SET value = value + ? WHERE key = ?", (n, key))


def chunks(seqs: Iterable[int]) -> Iterable[list[int]]:
    items = [int(s) for s in seqs]
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def append(
    conn: sqlite3.Connection,
    gateway_id: str,
    drafts: Sequence[AlertDraft],
    state: Mapping[str, str] | None,
    lives: Sequence[tuple[str, FleetLife]] = (),
) -> list[dict[str, Any]]:
    """Number, freeze and insert the drafts, upsert the monitor state and add the completed
    lives (class, life) to the fleet history, in the caller's transaction (the writer's
    savepoint): all of it or none of it."""
    last = meta_int(conn, "last_seq")
    created = now_ts()
    records: list[dict[str, Any]] = []
    for draft in drafts:
        last += 1
        record = draft.record(gateway_id=gateway_id, seq=last)
        text = dumps(record)  # raises on NaN: that request alone fails (savepoint)
        conn.execute(
            "INSERT INTO alerts (seq, alert_id, tier, kind, detected_at, created_at, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                last,
                record["alert_id"],
                int(draft.asset.tier),
                draft.kind,
                record["detected_at"],
                created,
                text,
            ),
        )
        records.append(record)
    if drafts:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (last,))
    if state:
        conn.executemany(
            "INSERT INTO monitor_state (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(str(k), str(v)) for k, v in state.items()],
        )
    if lives:  # (asset, ended_at) is unique: a retried write adds a life once
        conn.executemany(
            "INSERT OR IGNORE INTO fleet_lives (class, asset, life_hours, failed, ended_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(c, x.asset, float(x.hours), int(x.failed), x.ended_at) for c, x in lives],
        )
    return records


def fleet_lives(conn: sqlite3.Connection) -> dict[str, list[FleetLife]]:
    """The fleet history: completed lives by class, oldest first."""
    out: dict[str, list[FleetLife]] = {}
    rows = conn.execute(
        "SELECT class, life_hours, failed, asset, ended_at FROM fleet_lives ORDER BY id"
    ).fetchall()
    for cls, hours, failed, asset, ended_at in rows:
        out.setdefault(cls, []).append(FleetLife(float(hours), bool(failed), asset, ended_at))
    return out


def load_state(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM monitor_state").fetchall())


def next_batch(conn: sqlite3.Connection, limit: int) -> list[StoredAlert]:
    # Tier 1 first, then oldest first (seq order is creation order); served by the
    # partial index alerts_pending (tier, seq).
    rows = conn.execute(
        "SELECT seq, tier, body FROM alerts WHERE delivered_at IS NULL ORDER BY tier, seq LIMIT ?",
        (max(1, int(limit)),),
    ).fetchall()
    return [StoredAlert(seq, tier, body) for seq, tier, body in rows]


def mark_delivered(conn: sqlite3.Connection, seqs: Iterable[int]) -> int:
    at = now_ts()
    n = 0
    for part in chunks(seqs):
        marks = ",".join("?" * len(part))
        cur = conn.execute(
            f"UPDATE alerts SET delivered_at = ? WHERE delivered_at IS NULL AND seq IN ({marks})",
            (at, *part),
        )
        n += cur.rowcount
    return n


def dead_letter(conn: sqlite3.Connection, seqs: Iterable[int], reason: str) -> list[str]:
    at = now_ts()
    moved: list[str] = []
    for part in chunks(seqs):
        marks = ",".join("?" * len(part))
        ids = [
            r[0]
            for r in conn.execute(
                f"SELECT alert_id FROM alerts WHERE delivered_at IS NULL AND seq IN ({marks})", part
            )
        ]
        conn.execute(
            "INSERT OR REPLACE INTO dead_letters "
            "(seq, alert_id, tier, kind, detected_at, created_at, body, reason, dead_at) "
            "SELECT seq, alert_id, tier, kind, detected_at, created_at, body, ?, ? "
            f"FROM alerts WHERE delivered_at IS NULL AND seq IN ({marks})",
            (reason, at, *part),
        )
        conn.execute(f"DELETE FROM alerts WHERE delivered_at IS NULL AND seq IN ({marks})", part)
        moved.extend(ids)
    if moved:
        log.error("dead-lettered %d alert(s) %s: %s", len(moved), ", ".join(moved[:20]), reason)
    return moved


def _age_s(created_at: str | None) -> float:
    if not created_at:
        return 0.0
    # A clock that jumped back must not report a negative age.
    return max(0.0, (datetime.now(UTC) - parse_ts(created_at)).total_seconds())


def stats(conn: sqlite3.Connection, path: Path) -> OutboxStats:
    pending, oldest = conn.execute(
        "SELECT count(*), min(created_at) FROM alerts WHERE delivered_at IS NULL"
    ).fetchone()
    delivered = conn.execute(
        "SELECT count(*) FROM alerts WHERE delivered_at IS NOT NULL"
    ).fetchone()[0]
    dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    size = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):  # no WAL right now is fine
            size += os.stat(f"{path}{suffix}").st_size
    return OutboxStats(
        pending=pending,
        delivered=delivered,
        dead_lettered=dead,
        oldest_pending_age_s=_age_s(oldest),
        db_bytes=size,
        evicted_total=meta_int(conn, "evicted_total"),
        last_seq=meta_int(conn, "last_seq"),
        dead_letter_evicted_total=meta_int(conn, "dead_letter_evicted_total"),
        delivered_pruned_total=meta_int(conn, "delivered_pruned_total"),
        quarantined_total=conn.execute("SELECT count(*) FROM quarantine").fetchone()[0],
    )


def recent(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT seq, alert_id, tier, created_at, body, delivered_at, NULL, NULL FROM alerts "
        "UNION ALL "
        "SELECT seq, alert_id, tier, created_at, body, NULL, reason, dead_at FROM dead_letters "
        "ORDER BY seq DESC LIMIT ?",
        (max(0, int(limit)),),
    ).fetchall()
    return [
        {
            "seq": seq,
            "alert_id": aid,
            "tier": tier,
            "created_at": created,
            "delivered": delivered_at is not None,
            "delivered_at": delivered_at,
            "dead_letter_reason": reason,
            "dead_lettered_at": dead_at,
            "record": json.loads(body),
        }
        for seq, aid, tier, created, body, delivered_at, reason, dead_at in rows
    ]


def dead_letters(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT seq, alert_id, reason, dead_at, body FROM dead_letters ORDER BY seq DESC LIMIT ?",
        (max(0, int(limit)),),
    ).fetchall()
    return [
        {"seq": s, "alert_id": a, "reason": r, "dead_lettered_at": d, "record": json.loads(b)}
        for s, a, r, d, b in rows
    ]


def quarantines(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT at, path, reason, recovered_seq, seq_restart FROM quarantine ORDER BY id"
    ).fetchall()
    keys = ("at", "path", "reason", "recovered_seq", "seq_restart")
    return [dict(zip(keys, r, strict=True)) for r in rows]
