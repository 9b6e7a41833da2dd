"""Delivery order within an alert episode: its records never overtake each other.

An uplink takes its pending alerts by `outbound.tier` (tier 1 first), then oldest first
(agent.store._ops.next_batch). The tier was each record's own asset tier, so a reload that
changed an asset's tier between a raise (tier 3) and its clear (tier 1) had the clear
delivered first: the backend saw a clear of nothing, then an alert that never cleared; a
CMMS opened a second work order for the escalation. So `outbound.tier` is the sort key,
not a fact about the record (that stays in `alerts.tier`): a record of an episode (kind,
asset, sensor, channel: agent.store._episodes) takes the key of its episode's earliest
record still pending for that uplink; with the same key, the older goes first. Another
episode still goes by its own tier. A maintenance record goes after the pending records
of the episodes it closes (their highest key), never before them.

Each delivery row carries its alert's episode (`outbound.episode`, NULL for summaries and
one-off events): the earliest pending record of an episode for an uplink is one seek into
`outbound_episode`, whatever the backlog (100k+ rows) or the episode's history.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent.store._episodes import CLOSED, episode_key
from agent.store._routing import ALERT, DELIVERED, PENDING, chunks, marks, register

# The sort key of the earliest record of `outbound`'s episode pending for its uplink
# (itself, if it is the earliest): one seek into outbound_episode.
_EARLIEST = (
    "SELECT o2.tier FROM outbound o2 WHERE o2.episode = outbound.episode "
    f"AND o2.uplink = outbound.uplink AND o2.state = {PENDING} ORDER BY o2.ref LIMIT 1"
)
_SET = (
    f"UPDATE outbound SET tier = ({_EARLIEST}) WHERE state = {PENDING} "
    f"AND episode IS NOT NULL AND tier != ({_EARLIEST})"
)


def follow(conn: sqlite3.Connection, records: Sequence[Mapping[str, Any]]) -> None:
    """Give newly routed alerts their episode's sort key (in the append's transaction)."""
    seqs = [int(r["seq"]) for r in records if r.get("kind") != "maintenance"]
    for part in chunks(seqs):
        conn.execute(f"{_SET} AND class = {ALERT} AND ref IN ({marks(len(part))})", part)
    for r in records:
        if r.get("kind") == "maintenance" and (keys := _closed(r)):
            conn.execute(
                "UPDATE outbound SET tier = coalesce((SELECT max(o2.tier) FROM outbound o2 "
                f"WHERE o2.episode IN ({marks(len(keys))}) AND o2.uplink = outbound.uplink "
                f"AND o2.state = {PENDING} AND o2.ref < outbound.ref), tier) "
                f"WHERE class = {ALERT} AND state = {PENDING} AND ref = ?",
                (*keys, int(r["seq"])),
            )


def regroup(conn: sqlite3.Connection, refs: Iterable[int] | None = None) -> int:
    """Put every pending record of the episodes of `refs` (None: of all episodes) back
    behind its episode's earliest pending record: after a requeue (a dead-lettered raise
    pending again behind its clear), for a newly registered uplink (its rows copied from
    the records' own tiers), and once for a store written before (its rows' episodes
    filled first). Returns the rows moved."""
    if refs is None:
        conn.execute(
            "UPDATE outbound SET episode = (SELECT episode FROM alerts WHERE seq = ref) "
            f"WHERE class = {ALERT} AND state != {DELIVERED} AND episode IS NULL"
        )
        pairs = set(conn.execute(
            f"SELECT DISTINCT episode, uplink FROM outbound WHERE state = {PENDING} "
            "AND episode IS NOT NULL"
        ).fetchall())  # fmt: skip
    else:
        pairs = set()
        for part in chunks(refs):
            pairs.update(conn.execute(
                f"SELECT DISTINCT episode, uplink FROM outbound WHERE class = {ALERT} "
                f"AND ref IN ({marks(len(part))}) AND episode IS NOT NULL",
                part,
            ).fetchall())  # fmt: skip
    n = 0
    for episode, uplink in sorted(pairs):
        # Once per (episode, uplink), not per row: a flapping channel's episode can hold
        # 100k records after an outage, and a requeue comes in chunks of 5000.
        row = conn.execute(
            f"SELECT tier FROM outbound WHERE episode = ? AND uplink = ? AND state = {PENDING} "
            "ORDER BY ref LIMIT 1",
            (episode, uplink),
        ).fetchone()
        if row is not None:
            n += conn.execute(
                f"UPDATE outbound SET tier = ? WHERE episode = ? AND uplink = ? "
                f"AND state = {PENDING} AND tier != ?",
                (row[0], episode, uplink, row[0]),
            ).rowcount
    return n


def overtaken(conn: sqlite3.Connection, uplink: str, refs: Sequence[int]) -> list[str]:
    """Of the alerts just requeued for `uplink`, those a later record of their episode (a
    clear, a raise again, a repair: it closed the episode) already left for, sent or
    dead-lettered: the far end gets them after it, the order no queue can restore."""
    out: list[str] = []
    for part in chunks(refs):
        out += [r[0] for r in conn.execute(
            "SELECT a.alert_id FROM alerts a WHERE a.seq IN "
            f"({marks(len(part))}) AND a.episode IS NOT NULL AND a.hold = {CLOSED} "
            "AND json_extract(a.body, '$.state') != 'cleared' AND NOT EXISTS (SELECT 1 "
            "FROM outbound b WHERE b.episode = a.episode AND b.uplink = ? "
            f"AND b.state = {PENDING} AND b.ref > a.seq) ORDER BY a.seq",
            (*part, uplink),
        )]  # fmt: skip
    return out


def register_in_order(
    conn: sqlite3.Connection, names: Sequence[str], carries: Mapping[str, str] | None = None
) -> dict[str, int]:
    """agent.store._routing.register, and an added uplink's rows in episode order."""
    known = {r[0] for r in conn.execute("SELECT name FROM uplinks")}
    kept = register(conn, names, carries)
    if set(names) - known:
        regroup(conn)  # rows another uplink has are already grouped: unchanged
    return kept


def _closed(record: Mapping[str, Any]) -> list[str]:
    """The episodes a maintenance record closes (as agent.store._episodes.link reads it)."""
    asset = str(record["asset"]["id"])
    closed = (record.get("evidence") or {}).get("closed_alerts") or ()
    return [
        episode_key(str(c.get("kind")), asset, str(c.get("sensor")), str(c.get("channel")))
        for c in closed
        if isinstance(c, Mapping)
    ]
