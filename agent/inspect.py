"""`edge-agent status` and `edge-agent alerts`: look at a (possibly running) agent's store.

Read-only: opens the SQLite file with mode=ro (WAL lets it read while the agent writes),
and asks the running agent's /healthz when its port is fixed in the configuration.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from agent.config import Config

EXIT_NO_STORE = 1


def _open_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)


def store_summary(path: Path) -> dict[str, Any]:
    """Counts from the store file: pending, delivered, dead-lettered, last seq."""
    with _open_ro(path) as conn:
        pending, delivered, oldest = conn.execute(
            "SELECT SUM(delivered_at IS NULL), SUM(delivered_at IS NOT NULL),"
            " MIN(CASE WHEN delivered_at IS NULL THEN created_at END) FROM alerts"
        ).fetchone()
        (dead,) = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        # The persisted counter, not MAX(seq): delivered rows may have been pruned.
        row = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        last_seq = int(row[0]) if row else None
    return {
        "path": str(path),
        "pending": pending or 0,
        "delivered": delivered or 0,
        "dead_lettered": dead,
        "last_seq": last_seq,
        "oldest_pending_created_at": oldest,
    }


def _healthz(config: Config) -> dict[str, Any] | str:
    if config.health.port == 0:
        return "health.port is 0 (random): not reachable from here"
    url = f"http://{config.health.host}:{config.health.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return dict(json.load(resp))
    except urllib.error.HTTPError as exc:  # 503 = degraded, body still has the detail
        return dict(json.load(exc))
    except (OSError, ValueError) as exc:
        return f"agent not reachable at {url}: {exc}"


def status(config: Config, out: TextIO) -> int:
    """Print the store summary and the agent's health as JSON."""
    report: dict[str, Any] = {"gateway": config.gateway.id}
    if config.store.path.exists():
        report["store"] = store_summary(config.store.path)
    else:
        report["store"] = f"no store yet at {config.store.path}"
    report["agent"] = _healthz(config)
    print(json.dumps(report, indent=2), file=out)
    return 0 if config.store.path.exists() else EXIT_NO_STORE


def alerts(config: Config, out: TextIO, err: TextIO, limit: int = 20) -> int:
    """Print the newest alerts (JSON Lines, newest first) with their delivery time."""
    if not config.store.path.exists():
        print(f"no store yet at {config.store.path}", file=err)
        return EXIT_NO_STORE
    with _open_ro(config.store.path) as conn:
        rows = conn.execute(
            "SELECT body, delivered_at FROM alerts ORDER BY seq DESC LIMIT ?", (max(limit, 0),)
        ).fetchall()
    for body, delivered_at in rows:
        rec = json.loads(body)
        rec["_delivered_at"] = delivered_at
        print(json.dumps(rec, sort_keys=True), file=out)
    return 0
