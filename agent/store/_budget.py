"""The disk budget: what goes, in which order, when the outbox outgrows max_bytes.

Runs inside every write transaction (so an eviction and the append that caused it commit
together). Used bytes are the database's live pages, (page_count - freelist_count) x
page_size: SQLite reuses freed pages, so the file stops growing once rows are deleted.
The WAL is bounded separately (journal_size_limit, auto-checkpoint).

Order, each step only while still over budget:
1. delivered rows, oldest first, down to PRUNE_TO of the budget (they are safe upstream);
2. dead letters, oldest first (the backend refused them; logged one by one);
3. undelivered alerts, lowest tier first (3, then 2, then 1), oldest first: tier 1 only
   when no tier 2/3 remains. Every one is logged with its alert_id and counted.
"""

from __future__ import annotations

import logging
import sqlite3

from agent.store._ops import add_meta

log = logging.getLogger(__name__)

PRUNE_TO = 0.9  # prune delivered rows to 90 %, so the next append does not prune again
_DELIVERED_CHUNK = 256
_EVICT_CHUNK = 1  # one at a time: evict no more undelivered alerts than needed
_MAX_ROUNDS = 100_000  # bound on the loops (each round deletes at least one row)


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of live pages in the database file."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def enforce(conn: sqlite3.Connection, max_bytes: int) -> None:
    """Bring used bytes under max_bytes, in the order of the module docstring."""
    if used_bytes(conn) <= max_bytes:
        return
    target = int(max_bytes * PRUNE_TO)
    pruned = 0
    for _ in range(_MAX_ROUNDS):
        if used_bytes(conn) <= target:
            break
        cur = conn.execute(
            "DELETE FROM alerts WHERE seq IN (SELECT seq FROM alerts "
            "WHERE delivered_at IS NOT NULL ORDER BY seq LIMIT ?)",
            (_DELIVERED_CHUNK,),
        )
        if cur.rowcount <= 0:
            break
        pruned += cur.rowcount
    if pruned:
        add_meta(conn, "delivered_pruned_total", pruned)
        log.info("disk budget: pruned %d delivered alert(s), oldest first", pruned)
    _evict(
        conn, max_bytes, "dead_letters", "", "dead_letter_evicted_total", "dead letter(s)", "seq"
    )
    _evict(
        conn,
        max_bytes,
        "alerts",
        "WHERE delivered_at IS NULL",
        "evicted_total",
        "UNDELIVERED alert(s)",
        "tier DESC, seq",
    )


def _evict(
    conn: sqlite3.Connection,
    max_bytes: int,
    table: str,
    where: str,
    counter: str,
    what: str,
    order: str,
) -> None:
    total = 0
    for _ in range(_MAX_ROUNDS):
        if used_bytes(conn) <= max_bytes:
            break
        rows = conn.execute(
            f"SELECT seq, alert_id, tier FROM {table} {where} ORDER BY {order} LIMIT ?",
            (_EVICT_CHUNK,),
        ).fetchall()
        if not rows:
            break
        seqs = [r[0] for r in rows]
        conn.execute(f"DELETE FROM {table} WHERE seq IN ({','.join('?' * len(seqs))})", seqs)
        for _seq, aid, tier in rows:
            log.error(
                "disk budget exceeded (%d bytes): evicted %s %s (tier %d)",
                max_bytes,
                what,
                aid,
                tier,
                extra={"alert_id": aid, "tier": tier},
            )
        total += len(rows)
    if total:
        add_meta(conn, counter, total)
        log.error("disk budget: evicted %d %s in total this round", total, what)
