"""Updates on their way to the store: in order, bounded, retried while the store fails.

An update is what one reading (or one sensor-state change, or one maintenance event)
produced: alert drafts plus the state that produced them, stored in one transaction. While
the store cannot be written (disk full) updates are held here, oldest first, up to a limit;
beyond it the oldest is dropped, counted and logged. Every writer goes through one lock, so
updates reach the store in the order they were made. One task (`UpdateWriter`) writes
them, so the analysis never waits for a disk flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from agent.analysis.monitor import Update
from agent.store import Outbox, StoreError

log = logging.getLogger(__name__)

LIMIT = 10_000  # updates held in memory while the store is unwritable
BATCH_UPDATES = 1000  # updates written in one transaction at most
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
STORE_RETRY_POLL_S = 0.5  # how often the writer looks again while the store fails
# Updates without an alert (model and lifecycle state) wait up to this long for others to
# share their transaction: thousands of channels' periodic saves then cost a few commits a
# second instead of one each. An update with an alert is written at once, with them.
STATE_BATCH_S = 0.25

Records = list[dict[str, Any]]


class Counters(Protocol):
    alerts_total: int
    alerts_lost_total: int
    store_errors_total: int


class PendingWrites:
    """The ordered, bounded queue of updates in front of the outbox.

    Args:
        outbox: the open store.
        counters: where alerts stored, lost and store errors are counted.
        on_records: called with the records of every committed update.
        limit: updates held at most while the store fails.
    """

    def __init__(
        self,
        outbox: Outbox,
        counters: Counters,
        *,
        on_records: Callable[[Records], None] | None = None,
        limit: int = LIMIT,
    ) -> None:
        self._outbox = outbox
        self._counters = counters
        self._on_records = on_records
        self._limit = limit
        self._held: deque[Update] = deque()
        self._retry_at = 0.0
        self._backoff_s = RETRY_MIN_S
        self._held_since: float | None = None  # monotonic time the queue last became non-empty
        self.failing = False  # the last store write failed (until one succeeds)
        self._failing_since = 0.0  # monotonic time of the episode's first failure
        self.lock = asyncio.Lock()  # hold it to stop writers between two store writes
        # Records of updates another writer's flush stored while their own writer waited
        # for the lock, by id(update); only writers that wait register, and they pop.
        self._written: dict[int, Records | None] = {}
        self._writing: list[Update] = []  # popped for the store write under way

    @property
    def unsaved_alerts(self) -> int:
        """Alerts held, and in the store write under way (not yet committed)."""
        return sum(len(u.drafts) for u in (*self._held, *self._writing))

    def __len__(self) -> int:
        return len(self._held)

    @property
    def held_for_s(self) -> float:
        """How long updates have been waiting without the queue emptying (0: none wait)."""
        since = self._held_since
        return 0.0 if since is None else time.monotonic() - since

    def _recovered(self) -> None:
        self.failing = False
        log.warning(
            "store writes resumed after %.0f s of failures; the held updates are written",
            time.monotonic() - self._failing_since,
        )

    def lost(self, alerts: int) -> None:
        """Count alerts that will never be written (the agent stops without them)."""
        self._counters.alerts_lost_total += alerts

    def hold(self, update: Update) -> None:
        """Queue an update (no I/O): from here on it is written, or counted as lost."""
        if not (update.drafts or update.state):
            return
        if len(self._held) >= self._limit:
            lost = self._held.popleft()
            self._counters.alerts_lost_total += len(lost.drafts)
            log.error("store unwritable and %d updates held: dropping the oldest (%d alerts)",
                      self._limit, len(lost.drafts))  # fmt: skip
        if not self._held:
            self._held_since = time.monotonic()
        self._held.append(update)

    async def write(self, update: Update, *, now: bool = False) -> Records | None:
        """Queue an update and write what is due; this update's records, if it was written.

        Args:
            update: drafts and state to store together.
            now: ignore the retry backoff (a person is waiting for the answer).
        """
        self.hold(update)
        key = id(update)
        self._written[key] = None
        try:
            async with self.lock:
                if now:
                    self._retry_at = 0.0
                await self.flush()
                return self._written[key]
        finally:
            del self._written[key]

    async def flush(self, *, final: bool = False) -> list[tuple[Update, Records]]:
        """Write held updates in order (call with `lock` held); stops at a store error.

        Consecutive updates go to the store together, up to BATCH_UPDATES in one
        transaction (one fsync): thousands of channels saving their model state in the same
        second cost a few commits, not thousands.

        Args:
            final: shutting down: try now whatever the backoff, count what stays unwritten.
        """
        written: list[tuple[Update, Records]] = []
        if not final and time.monotonic() < self._retry_at:
            return written
        while self._held:
            n = min(len(self._held), BATCH_UPDATES)
            batch = [self._held.popleft() for _ in range(n)]  # popped first: committed once
            self._writing = batch  # stays if cancelled: committed or not, nobody knows
            done, error, unwritten = await self._append(batch)
            self._writing = []
            for update, records in done:
                self._counters.alerts_total += len(records)
                for r in records:
                    log.info("alert %s %s %s %s/%s", r["alert_id"], r["kind"], r["state"],
                             r["asset"]["id"], r["sensor"]["channel"])  # fmt: skip
                if records and self._on_records is not None:
                    self._on_records(records)
                if id(update) in self._written:
                    self._written[id(update)] = records
            written += done
            if error is not None:
                # Only what was not committed goes back, in order: a committed update held
                # again would be stored twice under new alert ids.
                self._held.extendleft(reversed(unwritten))
                self._failed(error, final=final)
                return written
            self._backoff_s = RETRY_MIN_S
            if self.failing:
                self._recovered()
        self._held_since = None
        return written

    async def _append(
        self, batch: list[Update]
    ) -> tuple[list[tuple[Update, Records]], StoreError | None, list[Update]]:
        """Store a batch in one transaction; one by one if a draft cannot be stored.

        Returns:
            The updates committed with their records, the store error that stopped the
            writing (if any), and the updates of the batch that were not committed.
        """
        drafts = [d for u in batch for d in u.drafts]
        lives = [life for u in batch for life in u.lives]
        state: dict[str, str] = {}
        for u in batch:
            state.update(u.state)  # later wins, as one by one would
        try:
            records = await self._outbox.append(drafts, state, lives)
        except StoreError as exc:
            return [], exc, batch
        except (ValueError, TypeError) as exc:
            if len(batch) > 1:
                out: list[tuple[Update, Records]] = []
                for i, u in enumerate(batch):
                    done, error, _ = await self._append([u])
                    out += done
                    if error is not None:
                        return out, error, batch[i:]
                return out, None, []
            # A draft the store cannot serialise (a bug upstream): drop it loudly rather
            # than stop every other alert behind it.
            self._counters.alerts_lost_total += len(drafts)
            log.exception("dropping an unstorable update (%d alerts): %s", len(drafts), exc)
            return [], None, []
        out, i = [], 0
        for u in batch:
            out.append((u, records[i : i + len(u.drafts)]))
            i += len(u.drafts)
        return out, None, []

    def _failed(self, exc: StoreError, *, final: bool) -> None:
        first = not self.failing
        if first:
            self._failing_since = time.monotonic()
        self.failing = True
        self._counters.store_errors_total += 1
        self._retry_at = time.monotonic() + self._backoff_s * random.uniform(0.5, 1.0)
        self._backoff_s = min(self._backoff_s * 2, RETRY_MAX_S)
        # Once per episode: a store that stays unwritable (a full disk) fails every retry,
        # and a line each (with a count that changes, so never collapsed as a repeat)
        # would grow the journal of a gateway all the while; /healthz shows the count.
        log.log(
            logging.ERROR if first else logging.DEBUG,
            "store write failed (%s); %d updates held in memory, retrying with back-off "
            "(said once until a write succeeds)",
            exc,
            len(self._held),
        )
        if final:
            lost = sum(len(u.drafts) for u in self._held)
            self._counters.alerts_lost_total += lost
            log.critical("shutting down with %d unsaved alerts", lost)


class UpdateWriter:
    """The store-writer task: what the analysis and the sensor watch produced, in batches,
    in order.

    Producers only hold their updates (`persist`, no I/O) and wake this task; a store that
    fails is retried with back-off (PendingWrites).

    Args:
        pending: the ordered queue in front of the outbox.

    Attributes:
        closed: the final flush has begun (shutdown): nothing held from here is written.
        gave_up: the final flush gave up on the store (a slow or hung disk); with
            `lost_alerts`, how many alerts may be lost (the stop's exit status says so).
    """

    def __init__(self, pending: PendingWrites) -> None:
        self.pending = pending
        self.closed = False
        self.gave_up = False
        self.lost_alerts = 0
        self._wake = asyncio.Event()
        self._alert_held = asyncio.Event()  # an update with drafts waits: write now

    def persist(self, update: Update) -> None:
        """Hold an update for the writer (no I/O here): from now on it is written, or
        counted as lost."""
        self.pending.hold(update)
        if update.drafts or update.lives:
            self._alert_held.set()
        self._wake.set()

    async def run(self) -> None:
        """Write until cancelled: at once after an alert, else after STATE_BATCH_S."""
        while True:
            await self._wake.wait()
            if not self._alert_held.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STATE_BATCH_S):
                        await self._alert_held.wait()
            self._wake.clear()
            self._alert_held.clear()
            async with self.pending.lock:
                await self.pending.flush()
            if len(self.pending):  # the store failed or more arrived: look again soon
                await asyncio.sleep(STORE_RETRY_POLL_S if not self._wake.is_set() else 0)
                self._wake.set()

    async def close(
        self, producers: Iterable[asyncio.Task[None]], *, timeout_s: float | None = None
    ) -> None:
        """Shutdown: end the tasks that make updates (this writer's among them), then write
        what they made, a last time.

        Args:
            timeout_s: give up on the store after this long (a slow or hung disk: systemd
                kills an agent that does not stop in time); what it had not committed is
                counted as lost, and said so.
        """
        tasks = list(producers)
        try:
            async with asyncio.timeout(timeout_s):
                # With the lock held no writer can be inside a store write when it is
                # cancelled; whatever was made is already held in `pending`.
                async with self.pending.lock:
                    self.closed = True
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    await self.pending.flush(final=True)
        except TimeoutError:
            self._give_up(tasks, timeout_s)

    def _give_up(self, producers: list[asyncio.Task[None]], timeout_s: float | None) -> None:
        """The store did not finish in time: count and say what may be lost."""
        self.closed = True
        for t in producers:  # when the lock was never had, they still run
            t.cancel()
        unsaved = self.pending.unsaved_alerts
        self.pending.lost(unsaved)
        self.gave_up, self.lost_alerts = True, unsaved
        log.critical(
            "stopping: the store did not finish writing in the %.0f s the stop had left "
            "for it (a slow or hung disk); exiting without it so systemd need not kill the "
            "agent. Up to %d "
            "alert(s) may be lost (any the disk commits after all are sent after the "
            "restart)",
            timeout_s,
            unsaved,
        )

    async def flush_after_crash(self) -> None:
        """A task crashed before the shutdown's last flush: write what is held, once."""
        if len(self.pending) and not self.closed:
            async with self.pending.lock:
                await self.pending.flush(final=True)
