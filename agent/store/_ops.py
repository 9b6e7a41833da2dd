"""The outbox's writes and its delivery reads, as plain functions of a connection.

They run on the writer thread, inside the writer's transaction (each request in its own
savepoint): all of a request or none of it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.analysis.reliability import FleetLife
from agent.records import AlertDraft, dumps
from agent.store._episodes import link
from agent.store._order import follow, overtaken, regroup
from agent.store._queries import NOTE_PREFIX
from agent.store._routing import (
    ALERT,
    CLASS_NAMES,
    DEAD,
    DELIVERED,
    PENDING,
    SUMMARY,
    TABLES,
    chunks,
    marks,
    route,
    settle,
)
from agent.store._sqlite import RowDamaged, now_ts
from agent.summaries import SummaryDraft

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredItem:
    """One item an uplink sends: the frozen JSON text, never rebuilt.

    Attributes:
        klass: ALERT or SUMMARY (alerts go first, summaries only when no alert waits).
        seq: the item's seq within its class.
        tier: its asset's tier (tier 1 first).
        item_id: alert_id or summary_id.
        json: the record as stored.
    """

    klass: int
    seq: int
    tier: int
    item_id: str
    json: str

    @property
    def class_name(self) -> str:
        """ "alert" or "summary" (for topics, endpoints and logs)."""
        return CLASS_NAMES[self.klass]


def meta_int(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def add_meta(conn: sqlite3.Connection, key: str, n: int) -> None:
    conn.execute("UPDATE meta SET value = value + ? WHERE key = ?", (n, key))


def set_note(conn: sqlite3.Connection, key: str, text: str | None) -> None:
    """Keep (or, None, drop) a note the running agent leaves for `status` (see
    agent.store._queries.note)."""
    if text is None:
        conn.execute("DELETE FROM meta WHERE key = ?", (NOTE_PREFIX + key,))
    else:
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (NOTE_PREFIX + key, text)
        )


def bump(conn: sqlite3.Connection, uplink: str, key: str, n: int) -> None:
    """Add n to a per-uplink counter."""
    conn.execute(
        "INSERT INTO uplink_counters (uplink, key, value) VALUES (?, ?, ?) "
        "ON CONFLICT (uplink, key) DO UPDATE SET value = value + excluded.value",
        (uplink, key, n),
    )


def append(
    conn: sqlite3.Connection,
    gateway_id: str,
    drafts: Sequence[AlertDraft],
    state: Mapping[str, str] | None,
    lives: Sequence[tuple[str, FleetLife]] = (),
) -> list[dict[str, Any]]:
    """Number, freeze and insert the drafts, route them to every registered uplink, upsert
    the monitor state and add the completed lives (class, life) to the fleet history, in
    the caller's transaction (the writer's savepoint): all of it or none of it."""
    last = meta_int(conn, "last_seq")
    created = now_ts()
    records: list[dict[str, Any]] = []
    for draft in drafts:
        last += 1
        record = draft.record(gateway_id=gateway_id, seq=last)
        text = dumps(record)  # raises on NaN: that request alone fails (savepoint)
        episode, hold = link(conn, record)  # its place in its episode, for the budget
        conn.execute(
            "INSERT INTO alerts (seq, alert_id, tier, kind, detected_at, created_at, body, "
            "episode, hold) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                last,
                record["alert_id"],
                int(draft.asset.tier),
                draft.kind,
                record["detected_at"],
                created,
                text,
                episode,
                hold,
            ),
        )
        records.append(record)
    if drafts:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (last,))
        route(conn, ALERT, [r["seq"] for r in records])
        follow(conn, records)  # never ahead of its episode's earlier records
    if state:
        conn.executemany(
            "INSERT INTO monitor_state (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(str(k), str(v)) for k, v in state.items()],
        )
    if lives:  # (asset, ended_at) is unique: a retried write adds a life once, and a
        # correction of a replacement (healthy -> failed within a minute) replaces its row
        conn.executemany(
            "INSERT INTO fleet_lives (class, asset, life_hours, failed, ended_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (asset, ended_at) DO UPDATE SET "
            "class = excluded.class, life_hours = excluded.life_hours, "
            "failed = excluded.failed",
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


def append_summaries(
    conn: sqlite3.Connection, gateway_id: str, drafts: Sequence[SummaryDraft]
) -> list[dict[str, Any]]:
    """Number, freeze, insert and route feature summaries (their own seq, never an
    alert's: a gap in alert seqs must only ever mean a missing alert)."""
    last = meta_int(conn, "last_summary_seq")
    created = now_ts()
    records: list[dict[str, Any]] = []
    for draft in drafts:
        last += 1
        record = draft.record(gateway_id=gateway_id, seq=last)
        conn.execute(
            "INSERT INTO summaries (seq, summary_id, tier, sensor_id, created_at, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (last, record["summary_id"], draft.tier, draft.sensor_id, created, dumps(record)),
        )
        records.append(record)
    if drafts:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'last_summary_seq'", (last,))
        route(conn, SUMMARY, [r["seq"] for r in records])
    return records


def load_state(
    conn: sqlite3.Connection, prefix: str | None = None, limit: int | None = None
) -> dict[str, str]:
    """The state rows (those whose key starts with `prefix`: a range on the primary key,
    no scan; at most `limit` of them, lowest keys first)."""
    if prefix is None:
        return dict(conn.execute("SELECT key, value FROM monitor_state").fetchall())
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"
    rows = conn.execute(
        "SELECT key, value FROM monitor_state WHERE key >= ? AND key < ? ORDER BY key LIMIT ?",
        (prefix, upper, -1 if limit is None else max(0, int(limit))),
    ).fetchall()
    return dict(rows)


def drop_state(conn: sqlite3.Connection, keys: Sequence[str]) -> None:
    """Delete state rows (keys that are not there are ignored)."""
    conn.executemany("DELETE FROM monitor_state WHERE key = ?", [(str(k),) for k in keys])


def next_batch(
    conn: sqlite3.Connection, uplink: str, limit: int, *, summaries_only: bool = False
) -> list[StoredItem]:
    """Up to `limit` items pending for the uplink, one class per batch: alerts (tier 1
    first, then oldest first; a record of an alert episode never ahead of its earlier
    ones: agent.store._order), and summaries (oldest first) only when no alert waits
    (or when told to skip the alerts: one held back blocks no summary)."""
    classes = ((ALERT, "o.tier, o.ref"), (SUMMARY, "o.ref"))
    for klass, order in classes[1:] if summaries_only else classes:
        table, id_col = TABLES[klass]
        rows = conn.execute(
            f"SELECT o.ref, t.tier, t.{id_col}, t.body, json_valid(t.body) FROM outbound o "
            f"JOIN {table} t ON t.seq = o.ref "
            f"WHERE o.uplink = ? AND o.class = ? AND o.state = {PENDING} "
            f"ORDER BY {order} LIMIT ?",
            (uplink, klass, max(1, int(limit))),
        ).fetchall()
        if bad := [(seq, iid) for seq, _, iid, _, ok in rows if not ok]:
            # Sent as is, it would be rejected (or worse, parsed into nonsense) on every
            # attempt: the writer treats it as damage and salvages the store.
            raise RowDamaged(
                f"{table} seq {bad[0][0]} ({bad[0][1]!r}) and {len(bad) - 1} more in this "
                "batch: the stored body is not valid JSON"
            )
        if rows:
            return [StoredItem(klass, seq, tier, iid, body) for seq, tier, iid, body, _ in rows]
    return []


def _by_class(items: Iterable[StoredItem]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for it in items:
        out.setdefault(it.klass, []).append(it.seq)
    return out


def mark_delivered(
    conn: sqlite3.Connection, uplink: str, items: Iterable[StoredItem], note: str | None = None
) -> int:
    """Record delivery to one uplink; items every uplink has become complete. A note (kept
    as the row's reason) says the uplink settled the item without sending it, and why."""
    at = now_ts()
    n = 0
    for klass, refs in _by_class(items).items():
        for part in chunks(refs):
            n += conn.execute(
                f"UPDATE outbound SET state = {DELIVERED}, at = ?, reason = ? WHERE uplink = ? "
                f"AND class = ? AND state = {PENDING} AND ref IN ({marks(len(part))})",
                (at, note, uplink, klass, *part),
            ).rowcount
        settle(conn, klass, refs)
    return n


def dead_letter(
    conn: sqlite3.Connection, uplink: str, items: Iterable[StoredItem], reason: str
) -> list[str]:
    """Move pending items of one uplink to its dead letters, with the reason."""
    at = now_ts()
    moved: list[str] = []
    for it in items:
        cur = conn.execute(
            f"UPDATE outbound SET state = {DEAD}, at = ?, reason = ? WHERE uplink = ? "
            f"AND class = ? AND ref = ? AND state = {PENDING}",
            (at, reason, uplink, it.klass, it.seq),
        )
        if cur.rowcount:
            moved.append(it.item_id)
    if moved:
        bump(conn, uplink, "dead_lettered_total", len(moved))
        log.error(
            "uplink[%s]: dead-lettered %d item(s) %s: %s",
            uplink,
            len(moved),
            ", ".join(moved[:20]),
            reason,
        )
    return moved


@dataclass(slots=True)
class RequeueCursor:
    """A chunked requeue's progress: per class, the (ref, uplink) it has gone past, and
    the newest ref dead at its start (a class absent there had no dead letter)."""

    upto: dict[int, int]
    after: dict[int, tuple[int, str]] = field(default_factory=dict)

    @classmethod
    def at_start(cls, conn: sqlite3.Connection) -> RequeueCursor:
        rows = conn.execute(
            f"SELECT class, max(ref) FROM outbound WHERE state = {DEAD} GROUP BY class"
        )
        return cls(upto={int(k): int(r) for k, r in rows})


def requeue(
    conn: sqlite3.Connection,
    *,
    uplink: str | None,
    item_ids: Sequence[str] | None,
    by: str,
    limit: int | None = None,
    cursor: RequeueCursor | None = None,
) -> list[dict[str, Any]]:
    """Put dead letters back in their uplink's queue, and record each in `requeues`.

    Args:
        uplink: only this uplink's dead letters (None: every registered uplink's).
        item_ids: only these alert or summary ids (None: all of them).
        by: who asked (kept with the record).
        limit: at most this many (oldest first, alerts before summaries); a caller
            committing in chunks calls again until fewer come back, with a `cursor`.
        cursor: where the last chunk ended (moved past this one's rows) and the newest
            dead letter at the start: a row requeued by an earlier chunk and dead-lettered
            again by the running agent (the backend still refuses it) is not requeued
            twice in one run, nor one dead-lettered since that is newer than them all.

    Returns:
        What was requeued: uplink, class, item id, the dead-letter reason it had.
    """
    at = now_ts()
    done: list[dict[str, Any]] = []
    for klass, (table, id_col) in TABLES.items():
        left = -1 if limit is None else limit - len(done)  # SQLite: LIMIT -1 is none
        if left == 0:
            break
        where = [f"o.state = {DEAD}", "o.class = ?", "o.uplink IN (SELECT name FROM uplinks)"]
        args: list[Any] = [klass]
        if uplink is not None:
            where.append("o.uplink = ?")
            args.append(uplink)
        if item_ids is not None:
            where.append(f"t.{id_col} IN ({marks(len(item_ids))})")
            args.extend(item_ids)
        if cursor is not None:
            if klass not in cursor.upto:
                continue  # none of this class was dead at the start
            where.append("o.ref <= ?")
            args.append(cursor.upto[klass])
            if klass in cursor.after:
                where.append("(o.ref, o.uplink) > (?, ?)")
                args.extend(cursor.after[klass])
        rows = conn.execute(
            f"SELECT o.uplink, o.ref, t.{id_col}, o.reason, o.at FROM outbound o "
            f"JOIN {table} t ON t.seq = o.ref WHERE {' AND '.join(where)} "
            "ORDER BY o.ref, o.uplink LIMIT ?",
            [*args, left],
        ).fetchall()
        if cursor is not None and rows:
            cursor.after[klass] = (rows[-1][1], rows[-1][0])
        for up, ref, iid, reason, dead_at in rows:
            conn.execute(
                f"UPDATE outbound SET state = {PENDING}, at = NULL, reason = NULL "
                "WHERE uplink = ? AND class = ? AND ref = ?",
                (up, klass, ref),
            )
            conn.execute(
                "INSERT INTO requeues (at, uplink, class, ref, item_id, reason, dead_at, by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (at, up, klass, ref, iid, reason, dead_at, by),
            )
            bump(conn, up, "requeued_total", 1)
            done.append({"uplink": up, "class": CLASS_NAMES[klass], "id": iid, "reason": reason})
        if klass == ALERT and rows:
            # Pending again, maybe behind its clear stored meanwhile: its episode's
            # records go in their order again.
            regroup(conn, [ref for _, ref, _, _, _ in rows])
            for up in sorted({r[0] for r in rows}):
                if late := overtaken(conn, up, [r[1] for r in rows if r[0] == up]):
                    log.warning(
                        "requeued %d alert(s) for uplink %s after a later record of their "
                        "episode (its clear, a raise again, a repair) was already sent or "
                        "dead-lettered: the far end gets them after it (an alert it may "
                        "show open that has cleared): %s",
                        len(late), up, ", ".join(late[:20]),
                    )  # fmt: skip
    if done and limit is None:  # a chunked caller says the total once
        log.warning("requeued %d dead letter(s) (by %s)", len(done), by)
    return done
