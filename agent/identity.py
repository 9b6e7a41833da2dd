"""Which agent is this: gateway id and store identity, so a client can tell it reached ours.

A port or socket path can be held by another process (another agent, another user's
program). The agent reports its identity with every answer; operator commands compare it
with their own configuration and refuse to trust an answer from anyone else.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.store import READ_BUSY_S, ro_uri


def open_store_ro(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """The store, read-only (WAL lets it be read while the agent writes); `timeout`: the
    longest wait for a lock another process holds."""
    return sqlite3.connect(ro_uri(path), uri=True, timeout=timeout)


def store_created_at(path: Path, timeout: float = 5.0) -> str:
    """The store's creation stamp (set once, when the file is created).

    Raises:
        OSError, sqlite3.Error: the file cannot be read (or is locked beyond `timeout`).
    """
    with contextlib.closing(open_store_ro(path, timeout)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()
    if row is None:
        raise sqlite3.DatabaseError(f"{path} has no creation stamp: not an edge-agent store")
    return str(row[0])


def agent_identity(
    config: Config, created_at: str | None, config_path: Path | None = None
) -> dict[str, Any]:
    """What the running agent reports about itself (with the configuration file it reloads,
    when it has one)."""
    return {
        "gateway": config.gateway.id,
        "store": os.path.abspath(config.store.path),
        "store_created_at": created_at,
        "config": None if config_path is None else os.path.realpath(config_path),
    }


def mismatch(config: Config, reported: object) -> str | None:
    """Why `reported` is not this configuration's agent, or None when it is.

    The store's creation stamp is compared when this process can read the store (an
    operator without read access to the state directory is checked on gateway and path).
    """
    if not isinstance(reported, Mapping):
        return "the answer carries no agent identity: it is not an edge-agent"
    gateway, store = reported.get("gateway"), reported.get("store")
    if gateway != config.gateway.id:
        return f"it is the agent of gateway {gateway!r}, not {config.gateway.id!r}"
    ours = os.path.abspath(config.store.path)
    if store != ours:
        return f"it runs on store {store}, not {ours}"
    try:
        # An operator's command: a store held by another process must not stall it.
        created = store_created_at(config.store.path, READ_BUSY_S)
    except (OSError, sqlite3.Error):
        return None  # unreadable here: gateway and path matched
    if reported.get("store_created_at") != created:
        return (
            f"its store was created at {reported.get('store_created_at')}, but {ours} was "
            f"created at {created}: another file at the same path"
        )
    return None
