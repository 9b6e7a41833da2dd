"""Opening the outbox database: versioned schema, migration, and quarantine at startup.

Runs only on the store's writer thread (sqlite3 connections stay on the thread that made
them), never on the event loop.

Schema v2 (v1 tracked delivery per alert, for one uplink): delivery is tracked per
(item, uplink) in `outbound` (see agent.store._routing); feature summaries live beside the
alerts in `summaries`; requeued dead letters are recorded in `requeues`. A v1 file is
migrated in place, in one transaction, at the first open.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.store import _episodes, _order, _routing
from agent.store._files import (
    SEQ_KEYS,
    Quarantined,
    check_path,
    issued_path,
    precheck,
    quarantine,
    read_issued,
    refuse_directory,
    seq_floor,
)
from agent.store._lock import lock_path
from agent.store._pairing import inode_path, record_file
from agent.store._sqlite import (
    SIDECARS,
    connect,
    create_private,
    fsync_dir,
    now_ts,
    store_file,
    translate,
    withhold_from_others,
)
from agent.store.errors import StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

# Each statement is CREATE ... IF NOT EXISTS: opening is idempotent, and additions from other
# features only add statements.
_DDL = """
CREATE TABLE IF NOT EXISTS alerts (
    seq          INTEGER PRIMARY KEY,
    alert_id     TEXT NOT NULL UNIQUE,
    tier         INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    detected_at  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    body         TEXT NOT NULL,
    delivered_at TEXT,
    episode      TEXT,
    hold         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS alerts_evict ON alerts (tier, hold, seq) WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (episode) WHERE hold > 0;
CREATE INDEX IF NOT EXISTS alerts_delivered ON alerts (seq) WHERE delivered_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS summaries (
    seq          INTEGER PRIMARY KEY,
    summary_id   TEXT NOT NULL UNIQUE,
    tier         INTEGER NOT NULL,
    sensor_id    TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    body         TEXT NOT NULL,
    delivered_at TEXT
);
CREATE INDEX IF NOT EXISTS summaries_pending ON summaries (seq) WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS summaries_delivered ON summaries (seq) WHERE delivered_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS outbound (
    uplink TEXT NOT NULL,
    class  INTEGER NOT NULL,
    ref    INTEGER NOT NULL,
    tier   INTEGER NOT NULL,
    state  INTEGER NOT NULL DEFAULT 0,
    at     TEXT,
    reason TEXT,
    episode TEXT,
    PRIMARY KEY (uplink, class, ref)
);
CREATE INDEX IF NOT EXISTS outbound_pending ON outbound (uplink, class, tier, ref) WHERE state = 0;
CREATE INDEX IF NOT EXISTS outbound_item ON outbound (class, ref);
CREATE INDEX IF NOT EXISTS outbound_dead ON outbound (uplink, class, ref) WHERE state = 2;
CREATE INDEX IF NOT EXISTS outbound_episode ON outbound (episode, uplink, ref) WHERE state = 0;
CREATE TABLE IF NOT EXISTS uplinks (name TEXT PRIMARY KEY, added_at TEXT NOT NULL, carries TEXT);
CREATE TABLE IF NOT EXISTS retired_uplinks (name TEXT PRIMARY KEY, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS uplink_counters (
    uplink TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  INTEGER NOT NULL,
    PRIMARY KEY (uplink, key)
);
CREATE TABLE IF NOT EXISTS requeues (
    id       INTEGER PRIMARY KEY,
    at       TEXT NOT NULL,
    uplink   TEXT NOT NULL,
    class    INTEGER NOT NULL,
    ref      INTEGER NOT NULL,
    item_id  TEXT NOT NULL,
    reason   TEXT,
    dead_at  TEXT,
    by       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS monitor_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_lives (
    id          INTEGER PRIMARY KEY,
    class       TEXT NOT NULL,
    asset       TEXT NOT NULL,
    life_hours  REAL NOT NULL,
    failed      INTEGER NOT NULL,
    ended_at    TEXT NOT NULL,
    UNIQUE (asset, ended_at)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id            INTEGER PRIMARY KEY,
    at            TEXT NOT NULL,
    path          TEXT NOT NULL,
    reason        TEXT NOT NULL,
    recovered_seq INTEGER,
    seq_restart   INTEGER NOT NULL
);
"""


_RANKED = "episodes_ranked_at"  # set once the alerts carry their episode and hold
_GROUPED = "episodes_grouped_at"  # set once pending rows are in episode order (_order)


def _add_episodes(conn: sqlite3.Connection) -> None:
    """A file from before episodes were tracked: add the columns in place (ranked after
    the DDL, by agent.store._episodes.backfill; the delivery rows' episode filled by
    agent.store._order.regroup) and drop the index they replace."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(alerts)")}
    if cols and "hold" not in cols:
        conn.execute("ALTER TABLE alerts ADD COLUMN episode TEXT")
        conn.execute("ALTER TABLE alerts ADD COLUMN hold INTEGER NOT NULL DEFAULT 0")
    conn.execute("DROP INDEX IF EXISTS alerts_pending")  # alerts_evict covers it
    out = {r[1] for r in conn.execute("PRAGMA table_info(outbound)")}
    if out and "episode" not in out:  # filled at open (agent.store._order.regroup)
        conn.execute("ALTER TABLE outbound ADD COLUMN episode TEXT")


def ddl_statements() -> list[str]:
    """The DDL one statement at a time (executescript() would COMMIT our transaction)."""
    return [s.strip() for s in _DDL.split(";") if s.strip()]


def create(
    conn: sqlite3.Connection,
    gateway_id: str,
    first_seq: int | None,
    uplinks: Sequence[str] | None,
    carries: Mapping[str, str] | None = None,
) -> None:
    """Create or migrate the schema and register the uplinks, in one transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.execute("BEGIN IMMEDIATE")
    try:
        _add_episodes(conn)
        for stmt in ddl_statements():
            conn.execute(stmt)
        if "carries" not in {r[1] for r in conn.execute("PRAGMA table_info(uplinks)")}:
            conn.execute("ALTER TABLE uplinks ADD COLUMN carries TEXT")  # added in place
        if version == 1:
            _routing.migrate_v1(conn, uplinks[0] if uplinks else _routing.LEGACY_UPLINK)
        # A fresh store starts at the clock floor, not at 1: if an operator deleted the old
        # file, ids from 1 would collide with alerts the backend already has, and it would
        # drop the new ones as duplicates.
        start = seq_floor() if first_seq is None else first_seq
        for key, value in (
            ("last_seq", start - 1),
            ("last_summary_seq", start - 1),
            ("evicted_total", 0),
            ("dead_letter_evicted_total", 0),
            ("delivered_pruned_total", 0),
            ("summaries_evicted_total", 0),
            ("gateway_id", gateway_id),
            ("created_at", now_ts()),
        ):
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
        if uplinks is not None:
            _order.register_in_order(conn, uplinks, carries or {})
        if conn.execute("SELECT 1 FROM meta WHERE key = ?", (_RANKED,)).fetchone() is None:
            n = _episodes.backfill(conn)
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (_RANKED, now_ts()))
            if n:
                log.info("store: ranked %d undelivered alert(s) by episode", n)
        if conn.execute("SELECT 1 FROM meta WHERE key = ?", (_GROUPED,)).fetchone() is None:
            # Written before: a clear may wait ahead of its raise (another tier then).
            n = _order.regroup(conn)
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (_GROUPED, now_ts()))
            if n:
                log.info("store: %d pending delivery row(s) put in episode order", n)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def record_quarantine(conn: sqlite3.Connection, q: Quarantined) -> None:
    """Remember a moved-aside file in the fresh store; seq restarts above what it had."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO quarantine (at, path, reason, recovered_seq, seq_restart) "
        "VALUES (?, ?, ?, ?, ?)",
        (now_ts(), str(q.path), q.reason, q.recovered_seq, q.seq_restart),
    )
    for key in ("last_seq", "last_summary_seq"):
        conn.execute(
            "UPDATE meta SET value = max(value, ?) WHERE key = ?", (q.seq_restart - 1, key)
        )
    conn.execute("COMMIT")


def catch_up_issued(conn: sqlite3.Connection, path: Path) -> None:
    """A store behind the seqs it already issued (its file restored from a backup) numbers
    on above them (agent.store._files.IssuedMark), loudly: the ids in between are the
    backend's already."""
    issued = read_issued(path)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for key in SEQ_KEYS:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            have = int(row[0]) if row else 0
            if issued.get(key, 0) > have:
                conn.execute("UPDATE meta SET value = ? WHERE key = ?", (issued[key], key))
                log.error(
                    "store %s is behind the ids it already issued (%s %d, issued up to %d): "
                    "restored from a backup? Numbering goes on above them; alerts stored "
                    "after that backup are not in this file",
                    path,
                    key,
                    have,
                    issued[key],
                )
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _private(path: Path) -> None:
    """The store file created with STORE_MODE (its -wal and -shm follow it); one made
    readable by others before (an older agent, a umask of 0022) is withheld from them."""
    target = store_file(path)  # SQLite's files sit beside a symlink's target
    create_private(target)
    files = [target, *(target.with_name(target.name + s) for s in SIDECARS)]
    files += [issued_path(path), lock_path(path), inode_path(path)]
    changed = [f.name for f in files if withhold_from_others(f)]
    if changed:
        log.warning(
            "store %s: %s could be read by other users; now only by the agent's user and "
            "its group (mode 0640)",
            path,
            ", ".join(changed),
        )


def open_db(
    path: Path,
    gateway_id: str,
    first_seq: int | None = None,
    uplinks: Sequence[str] | None = None,
    carries: Mapping[str, str] | None = None,
) -> tuple[sqlite3.Connection, Quarantined | None]:
    """Open or create the outbox; a corrupt file is quarantined and replaced.

    Args:
        path: the database file.
        gateway_id: recorded at creation; a mismatch is logged.
        first_seq: the first seq of a new store (None: the clock floor).
        uplinks: the configured uplink names to register (None: leave registration as is).
        carries: what an uplink is given when not every item (agent.store._routing).

    Returns:
        The connection (WAL, synchronous=FULL, schema current) and what was quarantined.

    Raises:
        StoreError: the file cannot be opened and is not corrupt (locked, newer schema,
            permissions, disk full while creating), or the path names a directory or
            another application's SQLite database (left untouched).
    """
    from agent.store._salvage import finish_interrupted  # it builds on this module

    quarantined: Quarantined | None = None
    try:
        refuse_directory(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        finish_interrupted(path)  # our own interrupted recovery first: it may fix the file
        # Another application's database is refused, never quarantined or written into;
        # unreadable garbage is taken as our damaged store (see foreign).
        check_path(path, damage_is_ours=True, warn_links=False)
        if path.exists():
            reason = precheck(path, SCHEMA_VERSION)
            if reason is not None:
                quarantined = quarantine(path, reason)
        _private(path)
        record_file(path)  # which file its WAL is written for (agent.store._pairing)
        conn = connect(path)
        fsync_dir(path.parent)
        try:
            create(conn, gateway_id, first_seq, uplinks, carries)
            if quarantined is not None:
                record_quarantine(conn, quarantined)
            catch_up_issued(conn, path)
            stored_gw = conn.execute("SELECT value FROM meta WHERE key = 'gateway_id'").fetchone()
        except BaseException:
            conn.close()
            raise
        if stored_gw and stored_gw[0] != gateway_id:
            log.warning(
                "store %s was created for gateway %s, now used as %s; seq continues",
                path,
                stored_gw[0],
                gateway_id,
            )
    except StoreError:
        raise
    except (sqlite3.Error, OSError) as exc:
        raise translate(exc, path, "opening the store") from exc
    return conn, quarantined
