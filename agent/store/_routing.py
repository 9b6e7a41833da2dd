"""Who still needs what: per-(item, uplink) delivery rows, uplink registration, completion.

Every item (an alert, or a feature summary) gets one `outbound` row per registered uplink
that carries it when it is stored: pending, then delivered or dead-lettered. Most uplinks
carry every item; a CMMS uplink (`carries` = FINDINGS) only severity and trend alerts
raised or escalated (EPISODES, what the configuration registers: their clears and the
repairs too, so it knows when an asset's work order ends), so a sensor fault or a summary
never waits for it
(an item no uplink carries is complete at once). An item is *complete* (its
`delivered_at` set) once every registered uplink has it, or does not carry it; only
complete items are pruned first by the disk budget. A newly configured uplink is
registered at open and gets a pending row for every item it carries that is not complete
yet (so adding an uplink after an outage, or configuring the first one, delivers the
backlog to it too, but no history that every other uplink already has). An uplink
removed from the configuration is unregistered: its rows stay (visible, requeueable,
pruned with their items) but no longer hold items back; configured again, what it still
lacks holds its items back again.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence

from agent.store._sqlite import now_ts

log = logging.getLogger(__name__)

ALERT = 0  # the class of an item: alerts go first and are evicted last
SUMMARY = 1
PENDING, DELIVERED, DEAD = 0, 1, 2
TABLES = {ALERT: ("alerts", "alert_id"), SUMMARY: ("summaries", "summary_id")}
CLASS_NAMES = {ALERT: "alert", SUMMARY: "summary"}
LEGACY_UPLINK = "http"  # the default name of schema v1's one http uplink
_CHUNK = 500  # bound on SQL variables per statement


def chunks(refs: Iterable[int]) -> Iterable[list[int]]:
    items = [int(s) for s in refs]
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def marks(n: int) -> str:
    return ",".join("?" * n)


FINDINGS = "findings"  # what a CMMS uplink carries: raised or escalated severity/trend alerts
# Findings, their clears and repairs: what a CMMS uplink is given, so it knows when all the
# channels of an asset's work order cleared (or the asset was repaired) and the order ends.
EPISODES = "episodes"
# Which items an uplink `u` carries, as SQL over the item `t` (u.carries NULL: every item).
_CARRIED = {
    ALERT: f"(u.carries IS NULL OR (u.carries IN ('{FINDINGS}', '{EPISODES}') AND t.kind IN "
    "('severity', 'trend') AND json_extract(t.body, '$.state') IN ('raised', 'escalated')) "
    f"OR (u.carries = '{EPISODES}' AND (t.kind = 'maintenance' OR (t.kind IN ('severity', "
    "'trend') AND json_extract(t.body, '$.state') = 'cleared'))))",
    SUMMARY: "u.carries IS NULL",
}
# A delivery row's alert episode (agent.store._order keeps an episode's records in order).
_EPISODE = {ALERT: "t.episode", SUMMARY: "NULL"}


def route(conn: sqlite3.Connection, klass: int, refs: Sequence[int]) -> None:
    """Pending rows for new items, one per registered uplink that carries them (inside the
    append); items no uplink carries are complete at once."""
    table, _ = TABLES[klass]
    for part in chunks(refs):
        conn.execute(
            "INSERT OR IGNORE INTO outbound (uplink, class, ref, tier, state, episode) "
            f"SELECT u.name, ?, t.seq, t.tier, {PENDING}, {_EPISODE[klass]} "
            f"FROM uplinks u, {table} t WHERE t.seq IN ({marks(len(part))}) AND {_CARRIED[klass]}",
            (klass, *part),
        )
    if conn.execute("SELECT 1 FROM uplinks WHERE carries IS NOT NULL LIMIT 1").fetchone():
        settle(conn, klass, refs)


def settle(conn: sqlite3.Connection, klass: int, refs: Iterable[int] | None = None) -> int:
    """Mark items complete that every registered uplink now has; returns how many."""
    table, _ = TABLES[klass]
    cond = (
        "delivered_at IS NULL AND EXISTS (SELECT 1 FROM uplinks) AND NOT EXISTS ("
        "SELECT 1 FROM outbound o JOIN uplinks u ON u.name = o.uplink "
        f"WHERE o.class = ? AND o.ref = {table}.seq AND o.state != {DELIVERED})"
    )
    at = now_ts()
    if refs is None:
        return conn.execute(
            f"UPDATE {table} SET delivered_at = ? WHERE {cond}", (at, klass)
        ).rowcount
    n = 0
    for part in chunks(refs):
        n += conn.execute(
            f"UPDATE {table} SET delivered_at = ? WHERE seq IN ({marks(len(part))}) AND {cond}",
            (at, *part, klass),
        ).rowcount
    return n


def register(
    conn: sqlite3.Connection, names: Sequence[str], carries: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Make the registered uplinks exactly `names` (see the module docstring); `carries`:
    name -> FINDINGS for an uplink that does not carry every item. Returns, for each uplink
    unregistered now, how many items it had not received (kept under its name)."""
    carries = _usable(conn, carries or {})
    known = {r[0] for r in conn.execute("SELECT name FROM uplinks")}
    kept: dict[str, int] = {}
    for gone in sorted(known - set(names)):
        conn.execute("DELETE FROM uplinks WHERE name = ?", (gone,))
        conn.execute(
            "INSERT OR REPLACE INTO retired_uplinks (name, at) VALUES (?, ?)", (gone, now_ts())
        )
        left = kept[gone] = conn.execute(
            f"SELECT count(*) FROM outbound WHERE uplink = ? AND state = {PENDING}", (gone,)
        ).fetchone()[0]
        log.warning(
            "uplink %s is no longer configured: its %d undelivered item(s) are kept under "
            "that name but no longer hold anything back (an uplink configured again under "
            "the name %s resumes them)",
            gone,
            left,
            gone,
        )
    for name in names:
        if name in known:
            conn.execute("UPDATE uplinks SET carries = ? WHERE name = ?", (carries.get(name), name))
            continue
        conn.execute(
            "INSERT INTO uplinks (name, added_at, carries) VALUES (?, ?, ?)",
            (name, now_ts(), carries.get(name)),
        )
        conn.execute("DELETE FROM retired_uplinks WHERE name = ?", (name,))
        routed = 0
        for klass, (table, _) in TABLES.items():
            # Configured again: what it did not have while it was away (completed without
            # it) is awaited again, so not complete: never pruned as safe upstream.
            routed += conn.execute(
                f"UPDATE {table} SET delivered_at = NULL WHERE delivered_at IS NOT NULL AND "
                f"seq IN (SELECT ref FROM outbound WHERE uplink = ? AND class = ? "
                f"AND state != {DELIVERED})",
                (name, klass),
            ).rowcount
            routed += conn.execute(
                "INSERT OR IGNORE INTO outbound (uplink, class, ref, tier, state, episode) "
                f"SELECT u.name, ?, t.seq, t.tier, {PENDING}, {_EPISODE[klass]} "
                f"FROM uplinks u, {table} t WHERE u.name = ? AND t.delivered_at IS NULL "
                f"AND {_CARRIED[klass]}",
                (klass, name),
            ).rowcount
        log.info(
            "uplink %s registered: %d stored item(s) not yet delivered everywhere", name, routed
        )
    if names:
        for klass in TABLES:
            settle(conn, klass)
    return kept


def _usable(conn: sqlite3.Connection, carries: Mapping[str, str]) -> Mapping[str, str]:
    """`carries`, or nothing when this SQLite has no JSON functions to tell findings: then
    every uplink is given every item (a CMMS uplink settles what it does not carry)."""
    if not carries:
        return carries
    try:
        conn.execute("SELECT json_extract('{}', '$.state')")
    except sqlite3.OperationalError:
        log.warning("this SQLite has no JSON functions: every uplink is given every item")
        return {}
    return carries


def migrate_v1(conn: sqlite3.Connection, legacy: str) -> None:
    """Schema v1 -> v2: v1 tracked delivery per alert for its one uplink.

    That uplink becomes `legacy`: its deliveries and dead letters become its rows, and its
    undelivered alerts its pending rows. Nothing is dropped: dead letters move back into
    `alerts` (their bodies are needed to requeue them).
    """
    conn.execute("INSERT OR IGNORE INTO uplinks (name, added_at) VALUES (?, ?)", (legacy, now_ts()))
    conn.execute(
        "INSERT OR IGNORE INTO outbound (uplink, class, ref, tier, state, at) "
        f"SELECT ?, {ALERT}, seq, tier, {DELIVERED}, delivered_at FROM alerts "
        "WHERE delivered_at IS NOT NULL",
        (legacy,),
    )
    conn.execute(
        "INSERT OR IGNORE INTO alerts "
        "(seq, alert_id, tier, kind, detected_at, created_at, body, delivered_at) "
        "SELECT seq, alert_id, tier, kind, detected_at, created_at, body, NULL FROM dead_letters"
    )
    dead = conn.execute(
        "INSERT OR IGNORE INTO outbound (uplink, class, ref, tier, state, at, reason) "
        f"SELECT ?, {ALERT}, seq, tier, {DEAD}, dead_at, reason FROM dead_letters",
        (legacy,),
    ).rowcount
    pending = conn.execute(
        "INSERT OR IGNORE INTO outbound (uplink, class, ref, tier, state) "
        f"SELECT ?, {ALERT}, seq, tier, {PENDING} FROM alerts WHERE delivered_at IS NULL",
        (legacy,),
    ).rowcount
    conn.execute("DROP TABLE dead_letters")
    log.warning(
        "store migrated from schema v1: %d undelivered alert(s) and %d dead letter(s) kept "
        "for uplink %s",
        pending,
        dead,
        legacy,
    )
