"""The outbox: alerts, summaries and monitor state, durable before they are acknowledged.

Every call goes to the writer thread (agent.store._writer); no sqlite call runs on the
event loop. Writes from concurrent callers share one transaction (group commit), and each
caller's await returns only after that transaction is on disk.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agent.analysis.reliability import FleetLife
from agent.config import Config
from agent.records import AlertDraft
from agent.store import _budget, _ops, _queries
from agent.store._evictlog import EvictionLog
from agent.store._files import IssuedMark, Quarantined
from agent.store._ops import StoredItem
from agent.store._order import register_in_order
from agent.store._queries import OutboxStats
from agent.store._routing import EPISODES
from agent.store._salvage import StoreFault
from agent.store._schema import open_db
from agent.store._writer import Writer, WriterCounters
from agent.store.errors import StoreClosedError, StoreError
from agent.summaries import SummaryDraft

log = logging.getLogger(__name__)

MAX_FAULTS_KEPT = 16


class Outbox:
    """SQLite outbox (WAL, synchronous=FULL) owned by one writer thread.

    Use as `async with Outbox(path, gateway_id="gw-01", max_bytes=..., uplinks=[...])`.
    Entering opens or creates the file (migrating an older schema, quarantining a corrupt
    file, registering the uplinks) and starts the thread; leaving runs what is queued and
    stops it.

    Args:
        path: the database file; its directory is created if missing.
        gateway_id: numbers alerts as `<gateway_id>-<seq>`; seq is per store, never reused.
        max_bytes: disk budget of live pages (see agent.store._budget for what goes first).
        uplinks: the configured uplink names; every stored item waits for each of them.
            None keeps the store's registration as it is (CLI tools that do not deliver).
        carries: uplink name -> what it is given, for an uplink that does not carry every
            item (FINDINGS or EPISODES: a CMMS); the others carry everything
            (agent.store._routing).
        queue_size: bound of queued requests; beyond it callers wait.
        first_seq: the first seq of a new store (None: the clock floor).
        on_fault: called on the event loop after the store file was recovered at run time.

    Attributes:
        quarantined: the corrupt file moved aside at open, if any.
        faults: the run-time recoveries since open (newest last, bounded).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        gateway_id: str,
        max_bytes: int,
        uplinks: Sequence[str] | None = None,
        carries: Mapping[str, str] | None = None,
        queue_size: int = 1024,
        first_seq: int | None = None,
        on_fault: Callable[[StoreFault], None] | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = Path(path)
        self.gateway_id = gateway_id
        self.max_bytes = int(max_bytes)
        self.uplinks = None if uplinks is None else tuple(uplinks)
        self.carries = dict(carries or {})
        self._queue_size = queue_size
        self._first_seq = first_seq  # None: the clock floor (ids never collide after a wipe)
        self._writer: Writer | None = None
        self._quarantined: Quarantined | None = None
        self._on_fault = on_fault
        self.faults: deque[StoreFault] = deque(maxlen=MAX_FAULTS_KEPT)
        self._wake: dict[str, asyncio.Event] = {}
        self._evictions: EvictionLog | None = None
        # Event-loop time past which closing stops waiting for the writer thread (the
        # agent's bounded stop sets it; None: wait until the thread is done).
        self.close_deadline: float | None = None

    @property
    def quarantined(self) -> Quarantined | None:
        return self._quarantined

    @property
    def counters(self) -> WriterCounters:
        """Group-commit counters (transactions, write requests, group sizes, recoveries)."""
        if self._writer is None:
            return WriterCounters()
        return self._writer.counters

    @property
    def writer_busy_s(self) -> float:
        """Liveness of the writer thread (see Writer.busy_for_s); 0.0 when not open."""
        return 0.0 if self._writer is None else self._writer.busy_for_s

    def wake_event(self, uplink: str) -> asyncio.Event:
        """Set whenever items were stored or requeued, so that uplink wakes up; the uplink
        clears it before it reads."""
        return self._wake.setdefault(uplink, asyncio.Event())

    def _wake_all(self) -> None:
        for name in self.uplinks or ():
            self.wake_event(name).set()

    def _open(self) -> sqlite3.Connection:
        conn, quarantined = open_db(
            self.path, self.gateway_id, self._first_seq, self.uplinks, self.carries
        )
        if quarantined is not None:
            self._quarantined = quarantined
        return conn

    def _fault(self, fault: StoreFault) -> None:
        self.faults.append(fault)
        self._wake_all()  # the fresh store holds every backlog: deliver on
        if self._on_fault is not None:
            self._on_fault(fault)

    async def __aenter__(self) -> Self:
        if self._writer is not None:
            raise StoreError(f"outbox {self.path} is already open", path=self.path)
        issued = IssuedMark(self.path)
        evictions = self._evictions = EvictionLog(lambda: self.max_bytes)

        def after_commit(conn: sqlite3.Connection) -> None:
            evictions.committed()  # first: what the budget evicted is now for good
            _budget.checkpoint_if_short(conn, self.path)
            issued.after_commit(conn)

        writer = Writer(
            self.path,
            self._open,
            # Read at each commit: a reload may change the budget.
            before_commit=lambda conn: _budget.enforce(conn, self.path, self.max_bytes, evictions),
            after_commit=after_commit,
            queue_size=self._queue_size,
            on_fault=self._fault,
        )
        await writer.start()
        self._writer = writer
        stats = await self.stats()
        log.info(
            "outbox %s open: %d pending, last seq %d, %d bytes",
            self.path,
            stats.pending,
            stats.last_seq,
            stats.db_bytes,
        )
        self._wake_all()  # a backlog from before the restart: wake the uplinks
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            timeout_s = None
            if self.close_deadline is not None:
                timeout_s = max(0.0, self.close_deadline - asyncio.get_running_loop().time())
            await writer.stop(timeout_s=timeout_s)
        if self._evictions is not None:  # the thread is gone: the rest of its evictions
            self._evictions.close()
            self._evictions = None

    async def _call(self, op: Any, *, write: bool, what: str) -> Any:
        if self._writer is None:
            raise StoreClosedError(f"outbox {self.path} is not open", path=self.path)
        return await self._writer.submit(op, write=write, what=what)

    async def append(
        self,
        drafts: Sequence[AlertDraft],
        state: Mapping[str, str] | None = None,
        lives: Sequence[tuple[str, FleetLife]] = (),
    ) -> list[dict[str, Any]]:
        """Store alerts and the monitor state that produced them, in one transaction.

        Args:
            drafts: alerts to number and store (may be empty: state only).
            state: monitor-state key/values to upsert in the same transaction, so a crash
                can neither repeat nor forget an alert.
            lives: completed lives (asset class, life) for the fleet history, stored with
                the maintenance record that reports them.

        Returns:
            The schema v1 records, after their transaction is on disk.

        Raises:
            StoreFullError: the disk is full; nothing was stored, the store stays usable.
            StoreError: any other storage failure; nothing was stored.
        """
        drafts = list(drafts)
        state = dict(state) if state else None
        lives = list(lives)
        if not drafts and not state and not lives:
            return []
        records: list[dict[str, Any]] = await self._call(
            lambda c: _ops.append(c, self.gateway_id, drafts, state, lives),
            write=True,
            what=f"appending {len(drafts)} alert(s)",
        )
        if records:
            self._wake_all()
        return records

    async def register_uplinks(
        self, names: Sequence[str], carries: Mapping[str, str]
    ) -> dict[str, int]:
        """Make the registered uplinks exactly `names` while open (a reload): an added one
        is given every item not yet delivered everywhere, a removed one holds nothing back
        any more; every other uplink's delivery rows stay as they are. Returns each removed
        uplink's count of items it had not received (kept under its name)."""
        names, carries = tuple(names), dict(carries)
        kept: dict[str, int] = await self._call(
            lambda c: register_in_order(c, names, carries), write=True, what="registering uplinks"
        )
        self.uplinks, self.carries = names, carries  # a recovered file registers these
        self._wake_all()
        return kept

    async def append_summaries(self, drafts: Sequence[SummaryDraft]) -> list[dict[str, Any]]:
        """Store feature summaries (a lower class than alerts); their records."""
        drafts = list(drafts)
        if not drafts:
            return []
        records: list[dict[str, Any]] = await self._call(
            lambda c: _ops.append_summaries(c, self.gateway_id, drafts),
            write=True,
            what=f"appending {len(drafts)} summaries",
        )
        self._wake_all()
        return records

    async def load_state(
        self, prefix: str | None = None, limit: int | None = None
    ) -> dict[str, str]:
        """All persisted monitor state, or only the keys under `prefix` (at most `limit`)."""
        result: dict[str, str] = await self._call(
            lambda c: _ops.load_state(c, prefix, limit), write=False, what="loading state"
        )
        return result

    async def drop_state(self, keys: Sequence[str]) -> None:
        """Delete state keys (an uplink's entries it no longer needs), on disk when this
        returns."""
        keys = list(keys)
        if keys:
            await self._call(lambda c: _ops.drop_state(c, keys), write=True, what="dropping state")

    async def fleet_lives(self) -> dict[str, list[FleetLife]]:
        """The fleet history: completed lives by asset class."""
        result: dict[str, list[FleetLife]] = await self._call(
            _ops.fleet_lives, write=False, what="loading the fleet history"
        )
        return result

    async def next_batch(
        self, uplink: str, limit: int, *, summaries_only: bool = False
    ) -> list[StoredItem]:
        """Up to `limit` items pending for the uplink (alerts first: tier 1, oldest;
        summaries_only: the summaries, even while alerts wait)."""
        result: list[StoredItem] = await self._call(
            lambda c: _ops.next_batch(c, uplink, limit, summaries_only=summaries_only),
            write=False,
            what="reading a batch",
        )
        return result

    async def mark_delivered(
        self, uplink: str, items: Iterable[StoredItem], *, note: str | None = None
    ) -> int:
        """Record that the uplink has these items (after a 2xx or PUBACK), or, with a
        note, that it settled them without sending (an item it does not carry, and why)."""
        items = list(items)
        result: int = await self._call(
            lambda c: _ops.mark_delivered(c, uplink, items, note),
            write=True,
            what=f"marking {len(items)} delivered to {uplink}",
        )
        return result

    async def dead_letter(self, uplink: str, items: Iterable[StoredItem], reason: str) -> list[str]:
        """Move items to the uplink's dead letters with a reason; returns their ids."""
        items = list(items)
        result: list[str] = await self._call(
            lambda c: _ops.dead_letter(c, uplink, items, reason),
            write=True,
            what=f"dead-lettering {len(items)} for {uplink}",
        )
        return result

    async def requeue(
        self,
        *,
        uplink: str | None = None,
        item_ids: Sequence[str] | None = None,
        by: str = "operator",
    ) -> list[dict[str, Any]]:
        """Put dead letters back in their uplinks' queues (recorded in the store)."""
        ids = None if item_ids is None else list(item_ids)
        result: list[dict[str, Any]] = await self._call(
            lambda c: _ops.requeue(c, uplink=uplink, item_ids=ids, by=by),
            write=True,
            what="requeueing dead letters",
        )
        if result:
            self._wake_all()
        return result

    async def note(self, key: str, text: str | None) -> None:
        """Leave a note for `edge-agent status` (None: drop it): something the agent cannot
        say through its health endpoint, such as why that endpoint is not served."""
        await self._call(lambda c: _ops.set_note(c, key, text), write=True, what=f"noting {key}")

    async def stats(self) -> OutboxStats:
        """Counts for status and health, in total and per uplink."""
        result: OutboxStats = await self._call(
            lambda c: _queries.stats(c, self.path), write=False, what="reading stats"
        )
        return result

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """Newest alerts first, with their delivery to each uplink."""
        result: list[dict[str, Any]] = await self._call(
            lambda c: _queries.recent(c, limit), write=False, what="reading recent alerts"
        )
        return result

    async def dead_letters(
        self, limit: int = 100, uplink: str | None = None
    ) -> list[dict[str, Any]]:
        """Dead letters, newest first, with their uplink and reason."""
        result: list[dict[str, Any]] = await self._call(
            lambda c: _queries.dead_letters(c, limit, uplink),
            write=False,
            what="reading dead letters",
        )
        return result

    async def quarantines(self) -> list[dict[str, Any]]:
        """Damaged or foreign files this store replaced, oldest first."""
        result: list[dict[str, Any]] = await self._call(
            _queries.quarantines, write=False, what="reading quarantines"
        )
        return result

    async def requeues(self, limit: int = 100) -> list[dict[str, Any]]:
        """Requeued dead letters, newest first."""
        result: list[dict[str, Any]] = await self._call(
            lambda c: _queries.requeues(c, limit), write=False, what="reading requeues"
        )
        return result


def outbox_for(config: Config, *, on_fault: Callable[[StoreFault], None] | None = None) -> Outbox:
    """The outbox a configuration describes, with its uplinks registered (one place for
    the agent and the CLI tools that write the store while the agent is stopped)."""
    names = config.uplink_names()
    return Outbox(
        config.store.path,
        gateway_id=config.gateway.id,
        max_bytes=config.store.max_bytes,
        uplinks=names,
        carries=uplink_carries(config),
        on_fault=on_fault,
    )


def uplink_carries(config: Config) -> dict[str, str]:
    """What each uplink that does not carry every item is given: a CMMS uplink, its
    findings, their clears and the repairs (it ends an asset's work order once all its
    channels cleared or the asset was repaired, and notes clears when its mapping says so)."""
    names = config.uplink_names()
    return {n: EPISODES for n, u in zip(names, config.uplinks, strict=True) if u.cmms}
