"""A store watched for faults, and what an operator or a disk does to its file meanwhile."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from agent.store import Outbox, StoreFault

UP = "up"


def watched_outbox(path: Path, faults: list[StoreFault]) -> Outbox:
    """A store on uplink UP whose faults (replaced, corrupt, ...) land in `faults`."""
    return Outbox(
        path,
        gateway_id="gw-01",
        max_bytes=1 << 30,
        first_seq=1,
        uplinks=(UP,),
        on_fault=faults.append,
    )


def damage_header(db: Path) -> None:
    """Zeroes the SQLite header in place (same inode): the file is no longer a database."""
    with db.open("r+b") as f:
        f.write(b"\0" * 100)


def backup_of(db: Path) -> Path:
    """An operator's copy of the store, by SQLite's own online backup."""
    copy = db.with_name("backup.db")
    src, dst = sqlite3.connect(db), sqlite3.connect(copy)
    with contextlib.closing(src), contextlib.closing(dst):
        src.backup(dst)
    return copy
