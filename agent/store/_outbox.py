"""The outbox: alerts and monitor state, durable before they are acknowledged.

Every call goes to the writer thread (agent.store._writer); no sqlite call runs on the
event loop. Writes from concurrent callers share one transaction (group commit), and each
caller's await returns only after that transaction is on disk.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agent.analysis.reliability import FleetLife
from agent.records import AlertDraft
from agent.store import _budget, _ops
from agent.store._ops import OutboxStats, StoredAlert
from agent.store._schema import Quarantined, open_db
from agent.store._writer import Writer, WriterCounters
from agent.store.errors import StoreClosedError, StoreError

log = logging.getLogger(__name__)


class Outbox:
    """SQLite outbox of alerts (WAL, synchronous=FULL) owned by one writer thread.

    Use as `async with Outbox(path, gateway_id="gw-01", max_bytes=...) as outbox:`.
    Entering opens or creates the file (quarantining a corrupt one) and starts the thread;
    leaving runs what is queued and stops it.

    Args:
        path: the database file; its directory is created if missing.
        gateway_id: numbers alerts as `<gateway_id>-<seq>`; seq is per store, never reused.
        max_bytes: disk budget of live pages (see agent.store._budget for what goes first).
        queue_size: bound of queued requests; beyond it callers wait.

    Attributes:
        changed: set whenever alerts were appended, so an uplink can wake up; the waiter
            clears it.
        quarantined: the corrupt file moved aside at open, if any.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        gateway_id: str,
        max_bytes: int,
        queue_size: int = 1024,
        first_seq: int | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = Path(path)
        self.gateway_id = gateway_id
        self.max_bytes = int(max_bytes)
        self._queue_size = queue_size
        self._first_seq = first_seq  # None: the clock floor (ids never collide after a wipe)
        self._writer: Writer | None = None
        self._quarantined: Quarantined | None = None
        self.changed = asyncio.Event()

    @property
    def quarantined(self) -> Quarantined | None:
        return self._quarantined

    @property
    def counters(self) -> WriterCounters:
        """Group-commit counters (transactions, write requests, group sizes)."""
        if self._writer is None:
            return WriterCounters()
        return self._writer.counters

    @property
    def writer_busy_s(self) -> float:
        """Liveness of the writer thread (see Writer.busy_for_s); 0.0 when not open."""
        return 0.0 if self._writer is None else self._writer.busy_for_s

    def _open(self) -> sqlite3.Connection:
        conn, self._quarantined = open_db(self.path, self.gateway_id, self._first_seq)
        return conn

    async def __aenter__(self) -> Self:
        if self._writer is not None:
            raise StoreError(f"outbox {self.path} is already open", path=self.path)
        writer = Writer(
            self.path,
            self._open,
            before_commit=functools.partial(_budget.enforce, max_bytes=self.max_bytes),
            queue_size=self._queue_size,
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
        if stats.pending:
            self.changed.set()  # a backlog from before the restart: wake the uplink
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.stop()

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
            self.changed.set()
        return records

    async def load_state(self) -> dict[str, str]:
        """All persisted monitor state."""
        result: dict[str, str] = await self._call(
            _ops.load_state, write=False, what="loading state"
        )
        return result

    async def fleet_lives(self) -> dict[str, list[FleetLife]]:
        """The fleet history: completed lives by asset class."""
        result: dict[str, list[FleetLife]] = await self._call(
            _ops.fleet_lives, write=False, what="loading the fleet history"
        )
        return result

    async def next_batch(self, limit: int) -> list[StoredAlert]:
        """Up to `limit` undelivered alerts: tier 1 first, then oldest first."""
        result: list[StoredAlert] = await self._call(
            lambda c: _ops.next_batch(c, limit), write=False, what="reading a batch"
        )
        return result

    async def mark_delivered(self, seqs: Iterable[int]) -> int:
        """Mark alerts delivered (after a 2xx); returns how many changed."""
        seqs = list(seqs)
        result: int = await self._call(
            lambda c: _ops.mark_delivered(c, seqs),
            write=True,
            what=f"marking {len(seqs)} delivered",
        )
        return result

    async def dead_letter(self, seqs: Iterable[int], reason: str) -> list[str]:
        """Move undelivered alerts to the dead-letter table with a reason; returns ids."""
        seqs = list(seqs)
        result: list[str] = await self._call(
            lambda c: _ops.dead_letter(c, seqs, reason),
            write=True,
            what=f"dead-lettering {len(seqs)}",
        )
        return result

    async def stats(self) -> OutboxStats:
        """Counts for status and health."""
        result: OutboxStats = await self._call(
            lambda c: _ops.stats(c, self.path), write=False, what="reading stats"
        )
        return result

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """Newest alerts first, with delivered/dead-letter flags and times."""
        result: list[dict[str, Any]] = await self._call(
            lambda c: _ops.recent(c, limit), write=False, what="reading recent alerts"
        )
        return result

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Dead-lettered alerts, newest first, with their reasons."""
        result: list[dict[str, Any]] = await self._call(
            lambda c: _ops.dead_letters(c, limit), write=False, what="reading dead letters"
        )
        return result

    async def quarantines(self) -> list[dict[str, Any]]:
        """Corrupt files this store replaced, oldest first."""
        result: list[dict[str, Any]] = await self._call(
            _ops.quarantines, write=False, what="reading quarantines"
        )
        return result
