"""`edge-agent requeue`: put dead letters back in their uplink's queue.

A dead letter is an alert (or summary) one uplink's backend refused; once the backend or
the record's consumer is fixed, an operator requeues it by id, by uplink, or all of them.
Each requeue is recorded in the store (who, when, the reason it had). With the agent
stopped the store is opened as the agent opens it; with the agent running (the store lock
is held) the change is one short transaction beside it, and its uplinks pick the items up
at their next read.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import re
import sqlite3
from collections.abc import Sequence
from typing import Any, TextIO

from agent.config import Config
from agent.store import (
    StoreError,
    StoreInUseError,
    check_path,
    outbox_for,
    requeue_in_place,
    store_lock,
)

EXIT_NOTHING = 1
EXIT_USAGE = 2
MAX_IDS = 1000
PRECHECK_BUSY_S = 1.0  # a store another process holds is opened (and waited for) below
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*-[0-9]{12}$")


async def _offline(
    config: Config, uplink: str | None, ids: Sequence[str] | None, by: str
) -> list[dict[str, Any]]:
    async with outbox_for(config) as outbox:
        return await outbox.requeue(uplink=uplink, item_ids=ids, by=by)


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container)
        return "cli"


def requeue(
    config: Config,
    out: TextIO,
    err: TextIO,
    *,
    ids: Sequence[str] | None,
    uplink: str | None,
    as_json: bool = False,
) -> int:
    """Requeue dead letters; print each (one line, or JSON Lines). Returns the exit code.

    Args:
        config: the configuration (store path, uplink names).
        out: where the requeued items go; err: where problems go.
        ids: only these alert (or summary) ids; None: every dead letter (of `uplink`).
        uplink: only this uplink's dead letters; None: every uplink's.
        as_json: JSON Lines instead of one human line per requeued item.
    """
    names = config.uplink_names()
    if uplink is not None and uplink not in names:
        print(f"unknown uplink {uplink!r}; configured uplinks: {', '.join(names)}", file=err)
        return EXIT_USAGE
    if ids is not None:
        bad = [i for i in ids if not _ID.match(i)]
        if bad or len(ids) > MAX_IDS:
            print(
                f"not an alert or summary id: {', '.join(bad[:5])}" if bad
                else f"at most {MAX_IDS} ids at once",
                file=err,
            )  # fmt: skip
            return EXIT_USAGE
    try:
        if not config.store.path.exists():
            print(f"no store yet at {config.store.path}", file=err)
            return EXIT_NOTHING
    except OSError as exc:  # the service's state folder, entered by another user
        print(f"nothing requeued: cannot read the store {config.store.path}: {exc}", file=err)
        return EXIT_NOTHING
    by = _who()
    try:
        # Before the lock: no lock file beside another application's file.
        with contextlib.suppress(sqlite3.Error, OSError):  # unreadable now: opening says why
            check_path(config.store.path, timeout=PRECHECK_BUSY_S)
        try:
            with store_lock(config.store.path):
                done = asyncio.run(_offline(config, uplink, ids, by))
        except StoreInUseError:
            done = requeue_in_place(config.store.path, uplink=uplink, item_ids=ids, by=by)
    except StoreError as exc:
        print(f"nothing requeued: {exc}", file=err)
        return EXIT_NOTHING
    for d in done:
        line = f"requeued {d['id']} ({d['class']}) for {d['uplink']}; it had: {d['reason']}"
        print(json.dumps(d, sort_keys=True) if as_json else line, file=out)
    if not done:
        print("no matching dead letter (see `edge-agent alerts --dead-letter`)", file=err)
        return EXIT_NOTHING
    return 0
