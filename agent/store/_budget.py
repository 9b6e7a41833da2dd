"""The disk budget: what goes, in which order, when the outbox outgrows max_bytes.

Runs inside every write transaction (so an eviction and the append that caused it commit
together). Used bytes are the database's live pages, (page_count - freelist_count) x
page_size: SQLite reuses freed pages, so the file stops growing once rows are deleted.
The WAL is bounded separately (journal_size_limit, auto-checkpoint).

Order, each step only while still over budget:
1. complete items (every configured uplink has them), summaries then alerts, oldest first,
   down to PRUNE_TO of the budget (they are safe upstream): first those every uplink ever
   configured has, then those a removed uplink left under its name (logged, counted);
2. feature summaries not yet everywhere, oldest first (the lower class goes first);
3. alerts whose only remaining claim is a dead letter (no uplink waits for them), oldest
   first, logged one by one;
4. undelivered alerts, lowest tier first (3, then 2, then 1): tier 1 only when no tier 2/3
   remains. Within a tier, by their place in their episode (agent.store._episodes), oldest
   first within each: records of closed episodes (and one-off events) first, then records
   of open episodes in between, then the raise of an open episode, and the latest record
   of an open episode last (the one that tells the backend a fault is still open).
Each step counts what it dropped in total and per uplink that still needed it; evicted
alerts and summaries are logged after the commit, in few lines (agent.store._evictlog).

A disk that fills before max_bytes is reached (a 2 GiB default on a small eMMC, a log
growing beside the store) runs steps 1 and 2 against what the disk holds (the file's size
plus the file system's free space, less DISK_RESERVE_BYTES), while there is still room to
do it: on a disk with no room at all the WAL can grow no further and cannot be
checkpointed into a file that must grow, so not even a DELETE commits, and every new alert
would fail, held in memory until dropped, while alerts delivered long ago filled the file.
Alerts still awaited are never evicted for the disk, only for the budget.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from agent.store._evictlog import EvictionLog
from agent.store._ops import add_meta, bump
from agent.store._routing import ALERT, DEAD, PENDING, SUMMARY, TABLES, marks
from agent.store._sqlite import WAL_LIMIT_BYTES

log = logging.getLogger(__name__)

PRUNE_TO = 0.9  # prune complete items to 90 %, so the next append does not prune again
_PRUNE_CHUNK = 256
_SUMMARY_CHUNK = 16
_MAX_ROUNDS = 100_000  # bound on the loops (each round deletes at least one row)
# Free space kept on the disk: a WAL at its size limit and as much again for the
# checkpoint that copies it into the file.
DISK_RESERVE_BYTES = 2 * WAL_LIMIT_BYTES

Pick = Callable[[sqlite3.Connection], list[int]]


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of live pages in the database file."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def _delete(conn: sqlite3.Connection, klass: int, refs: list[int], counter: str | None) -> None:
    """Delete items and their delivery rows; count them for the uplinks that waited."""
    table, _ = TABLES[klass]
    m = marks(len(refs))
    if counter is None:
        # A complete item still pending only for an uplink removed from the config (kept
        # under its name should it return): dropping it is an eviction for that uplink.
        retired = "evicted_total" if klass == ALERT else "summaries_evicted_total"
        for up, n in conn.execute(
            f"SELECT uplink, count(*) FROM outbound WHERE class = ? AND state = {PENDING} "
            f"AND ref IN ({m}) GROUP BY uplink",
            (klass, *refs),
        ).fetchall():
            bump(conn, up, retired, n)
            log.warning(
                "disk budget: pruned %d item(s) kept for uplink %s, which is not configured",
                n,
                up,
                extra={"uplink": up},
            )
    else:
        for state, key in ((PENDING, counter), (DEAD, "dead_letter_evicted_total")):
            for up, n in conn.execute(
                "SELECT uplink, count(*) FROM outbound WHERE class = ? AND state = ? "
                f"AND ref IN ({m}) GROUP BY uplink",
                (klass, state, *refs),
            ).fetchall():
                bump(conn, up, key, n)
    conn.execute(f"DELETE FROM outbound WHERE class = ? AND ref IN ({m})", (klass, *refs))
    conn.execute(f"DELETE FROM {table} WHERE seq IN ({m})", refs)


def _drain(
    conn: sqlite3.Connection,
    below: int,
    klass: int,
    pick: Pick,
    counter: str | None,
    label: str = "",
    evictions: EvictionLog | None = None,
) -> int:
    """Delete what `pick` names until used bytes are at most `below`; returns the count.

    `counter` is the per-uplink counter of an uplink that still waited for an item (None:
    the items were complete); evicted alerts go to `evictions` under `label`.
    """
    total = 0
    for _ in range(_MAX_ROUNDS):
        if used_bytes(conn) <= below:
            break
        refs = pick(conn)
        if not refs:
            break
        if klass == ALERT and evictions is not None:
            for seq, aid, tier, detected_at in conn.execute(
                "SELECT seq, alert_id, tier, detected_at FROM alerts "
                f"WHERE seq IN ({marks(len(refs))}) ORDER BY seq",
                refs,
            ).fetchall():
                evictions.add(label, seq, aid, tier, detected_at)
        _delete(conn, klass, refs, counter)
        total += len(refs)
    return total


def _complete(klass: int, *, kept: bool) -> Pick:
    """Complete items, oldest first. kept=False: only those no removed uplink still waits
    for (safe at every backend); kept=True: the rest, the backlog a removed uplink left
    under its name (pruned only after every item all backends have, so an uplink configured
    again still finds what it lacked)."""
    table, _ = TABLES[klass]
    held = (
        f"EXISTS (SELECT 1 FROM outbound o WHERE o.class = {klass} AND o.ref = {table}.seq "
        f"AND o.state = {PENDING})"
    )
    sql = (
        f"SELECT seq FROM {table} WHERE delivered_at IS NOT NULL AND seq > ? "
        f"AND {'' if kept else 'NOT '}{held} ORDER BY seq LIMIT ?"
    )
    after = [0]  # keyset: each round starts past the last, not past every held row again

    def pick(c: sqlite3.Connection) -> list[int]:
        refs = [r[0] for r in c.execute(sql, (after[0], _PRUNE_CHUNK))]
        if refs:
            after[0] = refs[-1]
        return refs

    return pick


def _prune(conn: sqlite3.Connection, below: int) -> int:
    """Complete items down to `below`: summaries then alerts, those every uplink has first."""
    return sum(
        _drain(conn, below, k, _complete(k, kept=kept), None)
        for kept in (False, True)
        for k in (SUMMARY, ALERT)
    )


def _summaries(conn: sqlite3.Connection) -> list[int]:
    sql = "SELECT seq FROM summaries WHERE delivered_at IS NULL ORDER BY seq LIMIT ?"
    return [r[0] for r in conn.execute(sql, (_SUMMARY_CHUNK,))]


def _dead_only(conn: sqlite3.Connection) -> list[int]:
    row = conn.execute(
        f"SELECT o.ref FROM outbound o WHERE o.class = {ALERT} AND o.state = {DEAD} "
        "AND NOT EXISTS (SELECT 1 FROM outbound p JOIN uplinks u ON u.name = p.uplink "
        f"WHERE p.class = {ALERT} AND p.ref = o.ref AND p.state = {PENDING}) "
        "ORDER BY o.ref LIMIT 1"
    ).fetchone()
    return [] if row is None else [row[0]]


def _undelivered(conn: sqlite3.Connection) -> list[int]:
    for tier in (3, 2, 1):  # one probe of alerts_evict per tier: no sort of the backlog
        row = conn.execute(
            "SELECT seq FROM alerts WHERE delivered_at IS NULL AND tier = ? "
            "ORDER BY hold, seq LIMIT 1",
            (tier,),
        ).fetchone()
        if row is not None:
            return [row[0]]
    return []


def disk_bytes(path: Path) -> int | None:
    """The most the store at `path` can hold on its disk (see the module docstring); None
    when the file system cannot say."""
    try:
        size = os.stat(path).st_size
        fs = os.statvfs(path)
    except OSError:
        return None
    return size + fs.f_bavail * fs.f_frsize - DISK_RESERVE_BYTES


def checkpoint_if_short(conn: sqlite3.Connection, path: Path) -> None:
    """After a commit, with less than DISK_RESERVE_BYTES free: copy the WAL into the file
    now, while the file can still grow, so that the WAL is reused from its start and the
    writes that follow need no new disk space."""
    try:
        fs = os.statvfs(path)
    except OSError:
        return
    if fs.f_bavail * fs.f_frsize < DISK_RESERVE_BYTES:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def enforce(conn: sqlite3.Connection, path: Path, max_bytes: int, evictions: EvictionLog) -> None:
    """Bring used bytes of the store at `path` under max_bytes, in the order of the module
    docstring; below it, under what the disk holds, with what is safe to drop only. What
    it evicts goes to `evictions`, logged once the transaction commits."""
    evictions.begin()
    used = used_bytes(conn)
    if used <= max_bytes:
        disk = disk_bytes(path)
        if disk is not None and used > disk:
            _make_room(conn, disk)
        return
    target = int(max_bytes * PRUNE_TO)
    pruned = _prune(conn, target)
    if pruned:
        add_meta(conn, "delivered_pruned_total", pruned)
        log.info("disk budget: pruned %d delivered item(s), oldest first", pruned)
    steps = (  # (class, pick, global counter, per-uplink counter, label of alerts)
        (SUMMARY, _summaries, "summaries_evicted_total", "summaries_evicted_total", ""),
        (ALERT, _dead_only, "dead_letter_evicted_total", "evicted_total", "dead-lettered"),
        (ALERT, _undelivered, "evicted_total", "evicted_total", "UNDELIVERED"),
    )
    for klass, pick, total_key, counter, label in steps:
        n = _drain(conn, max_bytes, klass, pick, counter, label, evictions)
        if n:
            add_meta(conn, total_key, n)
            if klass == SUMMARY:
                evictions.add_summaries(n)


def _make_room(conn: sqlite3.Connection, disk: int) -> None:
    """The disk fills before the budget: prune complete items, then summaries not yet
    everywhere, down to PRUNE_TO of what the disk holds. Never an alert an uplink still
    waits for: a disk filled for a while by something else must not cost alerts (if
    nothing is left to drop, a write fails as full and is held and retried)."""
    target = int(max(disk, 0) * PRUNE_TO)
    pruned = _prune(conn, target)
    if pruned:
        add_meta(conn, "delivered_pruned_total", pruned)
    evicted = _drain(conn, target, SUMMARY, _summaries, "summaries_evicted_total")
    if evicted:
        add_meta(conn, "summaries_evicted_total", evicted)
    if pruned or evicted:
        log.error(
            "disk nearly full (room for %d bytes of the store, budget not reached): pruned "
            "%d delivered item(s) and evicted %d feature summaries, oldest first",
            disk,
            pruned,
            evicted,
        )
