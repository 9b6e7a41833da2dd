"""`edge-agent maintenance`: record a repair so the portfolio can close detect -> repair.

With the agent running, the event goes through its control socket (agent.control; the
running monitor resets the asset's baselines and trends at once). With the agent stopped,
the event is written straight into the store and the next start loads the reset state.
The store lock tells the two cases apart, so the store never has two writers. Either way
the record names who asked (`evidence.requested_by`: uid, user, pid, and how).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, TextIO

from agent.analysis.basis import source_digests
from agent.analysis.monitor import Monitor, Update
from agent.config import Config
from agent.control import ControlError, Handler, Peer, Refused, call
from agent.identity import mismatch
from agent.pending import PendingWrites
from agent.store import (
    StoreError,
    StoreInUseError,
    StoreSquattedError,
    check_path,
    outbox_for,
    refuse_squatted,
    store_lock,
)
from drivers.payloads import DecoderLibrary
from drivers.profiles import ProfileLibrary
from drivers.reading import utc_now

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_USAGE = 2
MAX_NOTE_CHARS = 1000
PRECHECK_BUSY_S = 1.0  # a store another process holds is opened (and waited for) below
OP = "maintenance"
REPLACED = (None, "failed", "healthy")

Requester = dict[str, Any]


@dataclass(frozen=True, slots=True)
class MaintenanceRequest:
    """What an operator asks for; the control socket carries it as its fields."""

    asset: str
    note: str = ""
    # The part was replaced: "failed" (a run to failure, or replaced for its degradation) or
    # "healthy" (replaced while sound); its completed life joins the fleet history of the
    # asset's reliability class (agent.analysis.lifetime). None: no replacement.
    replaced: str | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> MaintenanceRequest:
        """Validate a request that came over the control socket.

        Raises:
            Refused: a field is missing or has the wrong type.
        """
        asset, note = args.get("asset"), args.get("note", "")
        replaced = args.get("replaced")
        if not isinstance(asset, str) or not isinstance(note, str):
            raise Refused('expected {"asset": "<id>", "note": "<text>"}')
        if replaced not in REPLACED:
            raise Refused("replaced must be null, 'failed' or 'healthy'")
        if len(note) > MAX_NOTE_CHARS:  # refused, not cut: the sender would not know
            raise Refused(too_long(note))
        return cls(asset, note, replaced)


def too_long(note: str) -> str:
    return (
        f"the note has {len(note)} characters, at most {MAX_NOTE_CHARS} are allowed; "
        "shorten it (the work order can hold the rest)"
    )


def stamp_requester(update: Update, requester: Requester) -> Update:
    """The update with `requested_by` in each record's evidence."""
    drafts = [replace(d, evidence={**d.evidence, "requested_by": requester}) for d in update.drafts]
    return replace(update, drafts=drafts)


Maintain = Callable[[MaintenanceRequest, Requester], Awaitable[list[dict[str, Any]]]]


def control_handler(maintain: Maintain) -> Handler:
    """The control-socket operation that records maintenance on the running agent."""

    async def handle(args: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        request = MaintenanceRequest.from_args(args)
        requester = await asyncio.to_thread(peer.describe, "control socket")  # NSS may block
        try:
            records = await maintain(request, requester)
        except KeyError:
            raise Refused(f"unknown asset {request.asset!r}") from None
        except StoreError as exc:
            raise Refused(str(exc)) from None
        return {"records": records}

    return handle


async def record_running(
    monitor: Monitor,
    pending: PendingWrites,
    request: MaintenanceRequest,
    requested_by: Requester,
) -> list[dict[str, Any]]:
    """Record a repair in the running agent: reset the asset's baselines and trends, store
    the event.

    It goes through the same ordered queue as every alert, so no older held update can
    overwrite the reset. The record names who asked (`evidence.requested_by`). A
    replacement (request.replaced) stores the part's completed life in the fleet history
    of its class, in the same transaction.

    Raises:
        KeyError: unknown asset.
        StoreError: the store is unwritable now (the event is then held and stored once it
            can be).
    """
    update = monitor.maintenance(request.asset, utc_now(), request.note, replaced=request.replaced)
    records = await pending.write(stamp_requester(update, requested_by), now=True)
    if records is None:
        raise StoreError("the store is unwritable now; the event is held and retried")
    log.info(
        "maintenance on %s recorded as %s, requested by %s",
        request.asset,
        records[0]["alert_id"],
        requested_by,
    )
    return records


async def _offline(config: Config, request: MaintenanceRequest) -> list[dict[str, Any]]:
    digests: dict[str, str] = {}  # the models it saves keep their basis whole
    with contextlib.suppress(OSError, ValueError):  # unreadable now: saved without them
        library = await asyncio.to_thread(ProfileLibrary.load, config.profiles_dir)
        decoders = await asyncio.to_thread(DecoderLibrary.load, config.decoders_dir)
        digests = source_digests(config, library, decoders)
    async with outbox_for(config) as outbox:
        state, fleet = await outbox.load_state(), await outbox.fleet_lives()
        monitor = Monitor(config, state=state, fleet=fleet, digests=digests)
        update = monitor.maintenance(
            request.asset, utc_now(), request.note, replaced=request.replaced
        )
        update = stamp_requester(update, Peer.this_process().describe("store (agent stopped)"))
        return await outbox.append(update.drafts, update.state, update.lives)


class _Unreached(RuntimeError):
    """No agent could be asked (no socket, a stale one, one this user may not use)."""

    def __init__(self, why: ControlError) -> None:
        super().__init__(f"cannot reach the running agent: {why}")
        self.why, self.no_agent = str(why), why.no_agent


def _online(config: Config, request: MaintenanceRequest) -> list[dict[str, Any]]:
    path = config.control.socket
    try:
        answer = call(path, OP, asdict(request))
    except ControlError as exc:
        raise _Unreached(exc) from None
    wrong = mismatch(config, answer.get("agent"))
    if wrong is not None:
        raise RuntimeError(f"the process on {path} is not this configuration's agent: {wrong}")
    if not answer["ok"]:
        raise RuntimeError(f"the agent refused: {answer.get('error')}")
    return list(answer["result"]["records"])


def _record(config: Config, request: MaintenanceRequest) -> tuple[list[dict[str, Any]], str]:
    """The records and how they were made: into the store while no agent runs (its lock
    is free), else by the running agent.

    Raises:
        RuntimeError, StoreError, OSError: not recorded (the message says why).
    """
    try:
        # Another user's file in /tmp before SQLite opens anything: run as root, SQLite
        # makes a -wal there the store owner's, and reads its frames into the store.
        refuse_squatted(config.store.path)
    except StoreSquattedError:
        pass  # not opened here: store_lock says so below, and the running agent is asked
    else:
        # Before the lock: no lock file beside another application's file.
        with contextlib.suppress(sqlite3.Error, OSError):  # unreadable now: opening says
            check_path(config.store.path, timeout=PRECHECK_BUSY_S)
    denied: StoreError | None = None
    squatted: StoreSquattedError | None = None
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(store_lock(config.store.path))
        except StoreInUseError:
            pass  # the agent runs
        except StoreSquattedError as exc:
            # Another user's store file in a folder every user can write (/tmp): not ours
            # to write, but the running agent's, whose files they are, if it answers (root
            # or an operator beside an agent run as its own user). None: refused as such.
            squatted = exc
        except StoreError as exc:
            # Not ours to lock (the service's own folder, as the install notes make it):
            # only the running agent can record it. An operator in control.group was told
            # to move store.path instead, and nothing was recorded.
            if exc.code not in ("EACCES", "EPERM"):
                raise
            denied = exc
        else:
            return asyncio.run(_offline(config, request)), "into the store"
    try:
        return _online(config, request), "by the running agent"
    except _Unreached as exc:
        if squatted is not None:
            raise squatted from None
        if denied is None:
            raise
        # Whether an agent runs is unknown here (its lock could not be tried): say neither,
        # and not the lock's advice to move store.path, which is the service's to follow.
        folder, why = config.store.path.parent, os.strerror(getattr(errno, denied.code or "EACCES"))
        then = (
            ": start the agent (systemctl start edge-agent) and retry, or run this as root"
            if exc.no_agent
            else ""  # the agent's socket refused this user: its message says who may use it
        )
        raise RuntimeError(
            f"cannot reach a running agent: {exc.why}; nor may this user write the store "
            f"itself ({folder}: {why}){then}"
        ) from None


def record_maintenance(
    config: Config, request: MaintenanceRequest, out: TextIO, err: TextIO, *, as_json: bool
) -> int:
    """Record the event; print what was done (one line, or the records as JSON Lines).

    Returns:
        The exit code: 0 recorded, 1 not recorded, 2 unknown asset or a note too long.
    """
    known = [a.id for a in config.assets]
    if request.asset not in known:
        print(f"unknown asset {request.asset!r}; configured assets: {', '.join(known)}", file=err)
        return EXIT_USAGE
    if len(request.note) > MAX_NOTE_CHARS:  # the same limit with the agent running or not
        print(f"maintenance not recorded: --note: {too_long(request.note)}", file=err)
        return EXIT_USAGE
    try:
        records, how = _record(config, request)
    except (RuntimeError, StoreError, OSError) as exc:
        print(f"maintenance not recorded: {exc}", file=err)
        return EXIT_FAILED
    if as_json:
        for rec in records:
            print(json.dumps(rec, sort_keys=True), file=out)
    else:
        ids = ", ".join(r["alert_id"] for r in records)
        print(
            f"maintenance on {request.asset} recorded {how} as {ids}: its baselines and "
            "trends restart, its open alerts are closed",
            file=out,
        )
    return 0
