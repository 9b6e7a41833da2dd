"""`edge-agent requeue`: put dead letters back in their uplink's queue.

A dead letter is an alert (or summary) one uplink's backend refused; once the backend or
the record's consumer is fixed, an operator requeues it by id, by uplink, or all of them.
Each requeue is recorded in the store (who, when, the reason it had). With the agent
stopped the store is opened as the agent opens it; with the agent running (the store lock
is held) the change is made beside it in short transactions (REQUEUE_CHUNK rows each, the
agent's writer gets in between), each printed once committed, and its uplinks pick the
items up at their next read. Interrupted, what was printed is requeued and the rest are
still dead letters: a rerun requeues them.
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
    become_store_owner,
    check_path,
    outbox_for,
    refuse_squatted,
    requeue_chunks,
    store_lock,
)

EXIT_NOTHING = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3  # some were requeued (listed) before an error stopped it: rerun for the rest
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), after what was listed
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
            # A WAL left there without its database (moved away) holds alerts: say so.
            check_path(config.store.path)
            print(f"no store yet at {config.store.path}", file=err)
            return EXIT_NOTHING
    except OSError as exc:  # the service's state folder, entered by another user
        print(f"nothing requeued: cannot read the store {config.store.path}: {exc}", file=err)
        return EXIT_NOTHING
    except StoreError as exc:
        print(f"nothing requeued: {exc}", file=err)
        return EXIT_NOTHING
    by = _who()
    count = 0

    def show(done: list[dict[str, Any]]) -> None:
        nonlocal count
        count += len(done)  # committed: so many requeued, even if Ctrl-C cuts the list
        for d in done:
            line = f"requeued {d['id']} ({d['class']}) for {d['uplink']}; it had: {d['reason']}"
            print(json.dumps(d, sort_keys=True) if as_json else line, file=out)

    try:
        # Root on a store in /tmp writes as its owner (the agent), leaving it no file of
        # root's it cannot replace; `by` still names who ran it.
        if (uid := become_store_owner(config.store.path)) is not None:
            print(f"as root: requeuing as the store's owner (uid {uid})", file=err)
        # Another user's file in /tmp before SQLite opens anything: run as root, SQLite
        # makes a -wal there the store owner's, and reads its frames into the store.
        refuse_squatted(config.store.path)
        # Before the lock: no lock file beside another application's file.
        with contextlib.suppress(sqlite3.Error, OSError):  # unreadable now: opening says why
            check_path(config.store.path, timeout=PRECHECK_BUSY_S)
        try:
            with store_lock(config.store.path):
                show(asyncio.run(_offline(config, uplink, ids, by)))
        except StoreInUseError:
            for chunk in requeue_chunks(config.store.path, uplink=uplink, item_ids=ids, by=by):
                show(chunk)
    except StoreError as exc:
        print(f"{count or 'nothing'} requeued: {exc}", file=err)
        return EXIT_PARTIAL if count else EXIT_NOTHING
    except KeyboardInterrupt:
        print(
            f"interrupted: {count} requeued, the rest are still dead "
            "letters; run the same command again to requeue them",
            file=err,
        )
        return EXIT_INTERRUPTED
    if not count:
        print("no matching dead letter (see `edge-agent alerts --dead-letter`)", file=err)
        return EXIT_NOTHING
    return 0
