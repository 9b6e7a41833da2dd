"""Read-only views of the store: counts per uplink, recent items, dead letters, history.

Plain functions of a connection: the agent runs them on its writer thread, the CLI on a
read-only connection of its own (WAL lets it read while the agent writes).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.records import parse_ts
from agent.store._routing import ALERT, CLASS_NAMES, DEAD, PENDING, SUMMARY, TABLES
from agent.store._schema import SCHEMA_VERSION
from agent.store._sqlite import store_file
from agent.store.errors import StoreError

_COUNTER_KEYS = (
    "evicted_total",
    "dead_letter_evicted_total",
    "summaries_evicted_total",
    "dead_lettered_total",
    "requeued_total",
)


@dataclass(frozen=True, slots=True)
class UplinkBacklog:
    """One uplink's share of the store.

    Attributes:
        configured: registered now (an unconfigured uplink's rows are kept, inert).
        pending: alerts waiting for this uplink.
        pending_summaries: feature summaries waiting for it.
        oldest_pending_age_s: wall-clock age of its oldest waiting alert (0 if none).
        dead_lettered: its dead letters now (alerts and summaries).
        evicted_total: alerts evicted by the disk budget before it had them, ever.
        dead_letter_evicted_total: its dead letters evicted by the disk budget, ever.
        summaries_evicted_total: summaries evicted before it had them, ever.
        dead_lettered_total: items it dead-lettered, ever.
        requeued_total: its dead letters requeued by an operator, ever.
    """

    configured: bool
    pending: int = 0
    pending_summaries: int = 0
    oldest_pending_age_s: float = 0.0
    dead_lettered: int = 0
    evicted_total: int = 0
    dead_letter_evicted_total: int = 0
    summaries_evicted_total: int = 0
    dead_lettered_total: int = 0
    requeued_total: int = 0


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Counts for status and health.

    Attributes:
        pending: alerts some configured uplink still waits for (or, with no uplink
            configured, every alert not delivered).
        delivered: alerts every uplink has, still kept (pruned oldest-first by the budget).
        dead_lettered: alerts dead-lettered by at least one configured uplink.
        oldest_pending_age_s: wall-clock age of the oldest alert not yet everywhere.
        db_bytes: database file plus WAL on disk.
        evicted_total: undelivered alerts dropped for the disk budget, ever.
        last_seq: the highest alert seq ever issued (never reused).
        dead_letter_evicted_total: dead-lettered alerts dropped for the disk budget, ever.
        delivered_pruned_total: delivered items pruned for the disk budget, ever.
        quarantined_total: damaged or foreign files moved aside in this store's history.
        summaries_pending: feature summaries not yet everywhere.
        summaries_evicted_total: summaries dropped for the disk budget, ever.
        uplinks: per uplink name, its backlog.
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
    summaries_pending: int = 0
    summaries_evicted_total: int = 0
    uplinks: dict[str, UplinkBacklog] = field(default_factory=dict)


def check_version(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a store this code cannot read (v1: not migrated yet; a newer agent's)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        # A newer agent's tables may mean something else: reading them could show wrong
        # counts, and requeue would write rows that agent does not expect.
        raise StoreError(
            f"store {path} has schema v{version}, newer than this edge-agent knows "
            f"(v{SCHEMA_VERSION}); use the edge-agent version that wrote it",
            path=path,
        )
    if version == 0:
        raise StoreError(
            f"{path} is not an edge-agent store (an SQLite file without its schema): check "
            "store.path in the configuration",
            path=path,
        )
    if version < 2:
        raise StoreError(
            f"store {path} has schema v{version}; start the agent once (edge-agent run) "
            "and it migrates the store in place",
            path=path,
        )


def _meta(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


NOTE_PREFIX = "note:"  # meta keys of notes (text), apart from the counters


def note(conn: sqlite3.Connection, key: str) -> str | None:
    """A note the running agent left (agent.store._ops.set_note), or None."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (NOTE_PREFIX + key,)).fetchone()
    return str(row[0]) if row else None


def age_s(created_at: str | None) -> float:
    if not created_at:
        return 0.0
    # A clock that jumped back must not report a negative age.
    return max(0.0, (datetime.now(UTC) - parse_ts(created_at)).total_seconds())


def _scalar(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def _backlog(conn: sqlite3.Connection, name: str, configured: bool) -> UplinkBacklog:
    def count(klass: int, state: int) -> int:
        # The state is written into the SQL, not bound: only then can SQLite use the
        # partial indexes (WHERE state = 0 / 2) instead of scanning every row.
        sql = f"SELECT count(*) FROM outbound WHERE uplink = ? AND class = ? AND state = {state}"
        return int(_scalar(conn, sql, (name, klass)))

    oldest_ref = min(  # one index seek per tier, not a scan of the backlog
        (
            r
            for t in (1, 2, 3)
            if (r := _scalar(conn, f"SELECT min(ref) FROM outbound WHERE uplink = ? AND class = "
                                   f"{ALERT} AND state = {PENDING} AND tier = ?", (name, t)))
            is not None
        ),
        default=None,
    )  # fmt: skip
    oldest = _scalar(conn, "SELECT created_at FROM alerts WHERE seq = ?", (oldest_ref,))
    counters = dict(
        conn.execute("SELECT key, value FROM uplink_counters WHERE uplink = ?", (name,))
    )
    return UplinkBacklog(
        configured=configured,
        pending=count(ALERT, PENDING),
        pending_summaries=count(SUMMARY, PENDING),
        oldest_pending_age_s=age_s(oldest),
        dead_lettered=count(ALERT, DEAD) + count(SUMMARY, DEAD),
        **{k: int(counters.get(k, 0)) for k in _COUNTER_KEYS},
    )


def stats(conn: sqlite3.Connection, path: Path) -> OutboxStats:
    # Counts come from indexes (the partial indexes on what is not delivered): this runs
    # on the writer thread for every /healthz, so it must stay cheap with a large backlog.
    configured = [r[0] for r in conn.execute("SELECT name FROM uplinks ORDER BY name")]
    others = [r[0] for r in conn.execute("SELECT name FROM retired_uplinks ORDER BY name")]
    incomplete = int(_scalar(conn, "SELECT count(*) FROM alerts WHERE delivered_at IS NULL"))
    # Every incomplete alert is waited for by a configured uplink, or only dead-lettered.
    dead = int(
        _scalar(
            conn,
            f"SELECT count(DISTINCT ref) FROM outbound WHERE class = {ALERT} "
            f"AND state = {DEAD} AND uplink IN (SELECT name FROM uplinks)",
        )
    )
    dead_only = int(
        _scalar(
            conn,
            f"SELECT count(DISTINCT o.ref) FROM outbound o WHERE o.class = {ALERT} "
            f"AND o.state = {DEAD} AND o.uplink IN (SELECT name FROM uplinks) AND NOT EXISTS "
            "(SELECT 1 FROM outbound p JOIN uplinks u ON u.name = p.uplink WHERE "
            f"p.class = {ALERT} AND p.ref = o.ref AND p.state = {PENDING})",
        )
    )
    pending = incomplete - dead_only if configured else incomplete
    oldest = _scalar(
        conn,
        "SELECT created_at FROM alerts WHERE seq = "
        "(SELECT min(seq) FROM alerts WHERE delivered_at IS NULL)",
    )
    size = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):  # no WAL right now is fine
            size += os.stat(f"{store_file(path)}{suffix}").st_size
    return OutboxStats(
        pending=pending,
        delivered=int(_scalar(conn, "SELECT count(*) FROM alerts WHERE delivered_at IS NOT NULL")),
        dead_lettered=dead,
        oldest_pending_age_s=age_s(oldest),
        db_bytes=size,
        evicted_total=_meta(conn, "evicted_total"),
        last_seq=_meta(conn, "last_seq"),
        dead_letter_evicted_total=_meta(conn, "dead_letter_evicted_total"),
        delivered_pruned_total=_meta(conn, "delivered_pruned_total"),
        quarantined_total=int(_scalar(conn, "SELECT count(*) FROM quarantine")),
        summaries_pending=int(
            _scalar(conn, "SELECT count(*) FROM summaries WHERE delivered_at IS NULL")
        ),
        summaries_evicted_total=_meta(conn, "summaries_evicted_total"),
        uplinks={
            **{n: _backlog(conn, n, True) for n in configured},
            **{n: _backlog(conn, n, False) for n in others},
        },
    )


def _deliveries(conn: sqlite3.Connection, klass: int, ref: int) -> dict[str, dict[str, Any]]:
    states = {0: "pending", 1: "delivered", 2: "dead_letter"}
    # A delivered row with a reason was settled without sending (the uplink does not carry
    # that item: a clear opens no work order).
    return {
        up: {
            "state": "skipped" if st == 1 and reason else states.get(st, str(st)),
            "at": at,
            "reason": reason,
        }
        for up, st, at, reason in conn.execute(
            "SELECT uplink, state, at, reason FROM outbound WHERE class = ? AND ref = ? "
            "ORDER BY uplink",
            (klass, ref),
        )
    }


# `edge-agent alerts` reads this many alerts per query: its memory stays bounded whatever
# --limit asks, and between pages it holds no snapshot, so the agent's WAL checkpoints.
PAGE_ROWS = 200

_ABOVE_ANY_SEQ = 2**63 - 1  # SQLite's largest integer: the first page's keyset bound
_RECENT = "SELECT seq, alert_id, tier, created_at, body, delivered_at FROM alerts "


def _stored_record(body: str) -> Any:
    """A stored record for an operator's listing: a damaged one (a bad sector: the agent
    salvages the store when it next reads it) is shown as such, not a failed command."""
    try:
        return json.loads(body)
    except ValueError as exc:
        return {"unreadable": f"damaged record text ({exc})", "text": body[:200]}


def _recent_row(conn: sqlite3.Connection, row: tuple[Any, ...]) -> dict[str, Any]:
    seq, aid, tier, created, body, delivered_at = row
    return {
        "seq": seq,
        "alert_id": aid,
        "tier": tier,
        "created_at": created,
        "delivered": delivered_at is not None,
        "delivered_at": delivered_at,
        "deliveries": _deliveries(conn, ALERT, seq),
        "record": _stored_record(body),
    }


def recent_pages(
    conn: sqlite3.Connection, limit: int, page_rows: int = PAGE_ROWS
) -> Iterator[list[dict[str, Any]]]:
    """Newest alerts first, at most `limit`, a page at a time (keyset on seq).

    Each page is read whole before it is yielded: no statement stays open while the
    caller writes (to a pipe a pager holds, say), so no read snapshot pins the WAL.
    """
    left, before = max(0, int(limit)), _ABOVE_ANY_SEQ
    while left > 0:
        rows = conn.execute(
            _RECENT + "WHERE seq < ? ORDER BY seq DESC LIMIT ?", (before, min(page_rows, left))
        ).fetchall()
        if not rows:
            return
        yield [_recent_row(conn, r) for r in rows]
        left, before = left - len(rows), rows[-1][0]


def recent(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """Newest alerts first, with where each one was delivered."""
    return [r for page in recent_pages(conn, limit) for r in page]


def _dead_keys(
    conn: sqlite3.Connection, limit: int, uplink: str | None
) -> list[tuple[str, int, str, int, str | None]]:
    """(when, class, uplink, seq, reason) of the newest dead letters, without bodies."""
    keys: list[tuple[str, int, str, int, str | None]] = []
    for klass in TABLES:
        where = f"state = {DEAD} AND class = ?" + (" AND uplink = ?" if uplink else "")
        args: tuple[Any, ...] = (klass, uplink) if uplink else (klass,)
        keys += [
            (at or "", klass, up, ref, reason)
            for up, ref, reason, at in conn.execute(
                f"SELECT uplink, ref, reason, at FROM outbound WHERE {where} "
                "ORDER BY at DESC LIMIT ?",
                (*args, limit),
            )
        ]
    keys.sort(key=lambda k: k[0], reverse=True)
    return keys[:limit]


def _dead_page(
    conn: sqlite3.Connection, keys: Sequence[tuple[str, int, str, int, str | None]]
) -> list[dict[str, Any]]:
    bodies: dict[tuple[int, int], tuple[str, str]] = {}
    for klass, (table, id_col) in TABLES.items():
        refs = sorted({ref for _, k, _, ref, _ in keys if k == klass})
        if refs:
            marks = ",".join("?" * len(refs))
            for seq, iid, body in conn.execute(
                f"SELECT seq, {id_col}, body FROM {table} WHERE seq IN ({marks})", refs
            ):
                bodies[klass, seq] = (iid, body)
    return [
        {
            "uplink": up,
            "class": CLASS_NAMES[klass],
            "seq": ref,
            "id": bodies[klass, ref][0],
            "reason": reason,
            "dead_lettered_at": at or None,
            "record": _stored_record(bodies[klass, ref][1]),
        }
        for at, klass, up, ref, reason in keys
        if (klass, ref) in bodies  # evicted since the keys were read: gone, not shown
    ]


def dead_letter_pages(
    conn: sqlite3.Connection, limit: int, uplink: str | None = None, page_rows: int = PAGE_ROWS
) -> Iterator[list[dict[str, Any]]]:
    """Dead letters, newest first: uplink, class, id, reason, when, and the record.

    The keys come first (small); the records a page at a time, as recent_pages does.
    """
    keys = _dead_keys(conn, max(0, int(limit)), uplink)
    for i in range(0, len(keys), page_rows):
        yield _dead_page(conn, keys[i : i + page_rows])


def dead_letters(
    conn: sqlite3.Connection, limit: int, uplink: str | None = None
) -> list[dict[str, Any]]:
    """Dead letters, newest first: uplink, class, id, reason, when, and the record."""
    return [d for page in dead_letter_pages(conn, limit, uplink) for d in page]


def quarantines(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT at, path, reason, recovered_seq, seq_restart FROM quarantine ORDER BY id"
    ).fetchall()
    keys = ("at", "path", "reason", "recovered_seq", "seq_restart")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def requeues(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT at, uplink, class, item_id, reason, dead_at, by FROM requeues "
        "ORDER BY id DESC LIMIT ?",
        (max(0, int(limit)),),
    ).fetchall()
    return [
        {
            "at": at,
            "uplink": up,
            "class": CLASS_NAMES.get(k, str(k)),
            "id": iid,
            "reason": reason,
            "dead_lettered_at": dead_at,
            "by": by,
        }
        for at, up, k, iid, reason, dead_at, by in rows
    ]
