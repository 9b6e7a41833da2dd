"""One uplink's delivery loop, whatever the transport: its queue, retries and dead letters.

Delivery is at-least-once: an item is marked delivered to this uplink only after the
transport reports it acknowledged (a 2xx, a successful PUBACK); a batch whose answer is
lost is sent again with the same bytes (the JSON text frozen in the outbox) and the far end
deduplicates on the id. During an outage the backlog stays on disk; only the batch in
flight is in memory. Each uplink has its own loop, so one that is down holds back no other.

After a failure:
- a Retry-After (429/503) is honoured in full;
- the far end down (no connection, timeout, 5xx without Retry-After): the loop waits its
  backoff (full jitter up to max_backoff_s) but probes cheaply every probe_interval_s and
  resumes as soon as the far end answers. If a send fails right after a probe said "up",
  the probe cannot see this failure, so it stops cutting waits short until a success;
- the far end answered and refused (credentials, a wrong URL, a redirect): backoff only;
- a new item cuts a wait short after 1 s, once per failure episode (until a success),
  except an explicit Retry-After: alerts and summaries keep arriving during a long outage
  (a summary every few seconds from a few hundred sensors), and a try after each one
  would turn the backoff into a POST a second at a backend that is down or refusing.
Batch sizes: agent.uplink._batchsize (halved on a timeout or a too-large refusal).
Summaries give way to alerts over HTTP: agent.uplink._giveway.
Refused items: a refused batch is resent one item at a time; a refused item is
dead-lettered, or held with the backlog, by the canary rule (agent.uplink._canary).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import UTC, datetime

from agent.records import format_ts
from agent.store import Outbox, StoredItem, StoreError
from agent.uplink._backoff import retry_delay
from agent.uplink._batchsize import BatchSize
from agent.uplink._canary import ASIDE_S, CANARY_SEARCH, ENDPOINT_MEMORY_S, Canary, canary_at
from agent.uplink._giveway import GiveWay
from agent.uplink._status import UplinkStatus
from agent.uplink._transport import SendResult, Transport
from agent.uplink.errors import UplinkRejected, UplinkUnavailable

log = logging.getLogger(__name__)

NEW_ALERT_RETRY_AFTER_S = 1.0  # during a backoff, a new alert retries after at least this


class Delivery:
    """Delivers the outbox's backlog for one uplink through one transport, until cancelled.

    Args:
        name: the uplink's name (its rows in the store, metrics, logs).
        transport: how items reach the far end.
        outbox: the open outbox.
        batch_size: items per send at most.
        max_backoff_s: the longest wait between attempts.
        probe_interval_s: how often to probe while the far end is down.
        base_backoff_s: first backoff ceiling; doubles per consecutive failure.
        idle_recheck_s: with nothing pending, recheck this often even without a wake-up
            (a dead letter requeued by another process).
        rng: random source for the jitter (tests pass a seeded one).
    """

    def __init__(
        self,
        name: str,
        transport: Transport,
        outbox: Outbox,
        *,
        batch_size: int,
        max_backoff_s: float,
        probe_interval_s: float = 1.0,
        base_backoff_s: float = 0.5,
        idle_recheck_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.transport = transport
        self.outbox = outbox
        self.status = UplinkStatus(name, transport.kind, transport.target)
        self._cap = max_backoff_s
        self._probe_s = probe_interval_s
        self._base = min(base_backoff_s, max_backoff_s)
        self._idle = idle_recheck_s
        self._rng = rng or random.Random()
        self._size = BatchSize(batch_size)
        self._one_by_one = 0  # isolate a refused batch: send this many items singly
        self._in_error = False
        self._streak = 0  # failures in a row, alerts' and summaries' alike: the backoff
        # An alert failed to go (not only the store or the loop) since alerts last flowed:
        # then only an alert delivered ends the alerts' failure streak.
        self._alert_failed = False
        self._probe_trusted = True
        self._after_probe = False  # the send under way follows a probe that said "up"
        self._woken_early = False  # a new item cut a wait short since the last success
        # While an alert is held on a quiet plant, its backoff is spent sending summaries
        # until this (monotonic) time; then it is tried again. None: no such backoff.
        self._quiet_until: float | None = None
        self._canary = Canary()
        self._give_way = GiveWay(name, transport, outbox)
        self._stopping = False
        self._between = asyncio.Event()  # set while no send is under way
        self._between.set()

    async def run(self) -> None:
        """Deliver until stopped or cancelled (a cancellation is never swallowed)."""
        async with self.transport:
            while not self._stopping:
                # Python 3.11's asyncio.wait_for (the idle wait, aiomqtt's acks) can return
                # instead of raising when a cancel lands as it completes: honour it here.
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise asyncio.CancelledError
                try:
                    await self.step()
                except Exception as exc:
                    # A library surprise must not stop delivery for good: count it as a
                    # failed attempt and back off (the traceback once per failure episode).
                    if not self._in_error:
                        log.exception("uplink[%s]: unexpected error", self.name)
                    await self._failed(f"unexpected: {exc!r}", of_items=False)

    async def step(self) -> None:
        """One unit of work: send a batch (and wait out a failure), or idle."""
        wake = self.outbox.wake_event(self.name)
        wake.clear()  # before reading, so an append after it wakes us
        size = 1 if self._one_by_one else self._size.limit
        c = self._canary
        canary, c.due = c.due, False
        wide = canary or c.aside is not None
        try:
            items = await self.outbox.next_batch(
                self.name, max(size, c.depth + CANARY_SEARCH) if wide else size
            )
        except StoreError as exc:
            await self._failed(f"outbox: {exc}", of_items=False)
            return
        if (rest := c.behind(items)) is not None:
            items = rest  # an item set aside: those behind it go in full batches
        c.ahead = frozenset()
        quiet = False  # summaries sent while an alert is held with no canary behind it
        if canary and items and items[0].item_id == c.held:
            k = canary_at(items, c.depth)
            if k is None:  # a quiet plant: no alert behind the held one to try (or only
                # records of its episodes, which must not overtake it)
                # The summaries wait behind alerts: they go meanwhile, or one malformed
                # alert held every summary back until the next alert (days on a calm
                # plant). They prove nothing (they may go to another endpoint).
                try:
                    items = await self.outbox.next_batch(self.name, size, summaries_only=True)
                except StoreError as exc:
                    await self._failed(f"outbox: {exc}", of_items=False)
                    return
                if self._quiet_until is not None and not items:
                    # The backoff began with summaries to send: the rest of it waited out.
                    until, self._quiet_until = self._quiet_until, None
                    try:
                        await self._wait(until - time.monotonic(), probing=False, honour=False)
                    finally:
                        self.status.next_retry_in_s = None
                    return
                if not items:
                    await self._failed(self._held_error(quiet=True))
                    return
                if self._quiet_until is None:
                    # The held alert's failure: its backoff is spent sending summaries,
                    # not waited for their whole backlog (10 s for 200, max_backoff_s 0.3).
                    delay = self._count_failure(self._held_error(quiet=True))
                    self._quiet_until = time.monotonic() + delay
                quiet = True
            else:
                c.ahead = frozenset(it.item_id for it in items[:k])
                items = items[k : k + 1]
        if not quiet:
            self._quiet_until = None  # the held alert (or a canary) goes: that backoff is over
        items = items[:size]
        if not items:
            self.status.state = "idle"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._idle)
            return
        self.status.state = "sending"
        self.status.attempts_total += 1
        after_probe, self._after_probe = self._after_probe, False
        self._between.clear()
        try:
            if self._give_way.may(items):
                sent = await self._give_way.send(items)
                if sent is None:  # an alert came: it goes first, the summaries after it
                    log.debug("uplink[%s]: summaries give way to an alert", self.name)
                    return
                result = sent
            else:
                result = await self.transport.send(items)
            problem = await self._settle(result)
        finally:
            self._between.set()
        summaries = items[0].class_name != "alert"
        if problem is not None:
            await self._failed(problem, of_items=False)
            return
        if result.delivered:
            self._succeeded(result.delivered)
            if c.ahead:  # a canary delivered: the items ahead of it refused as their own
                c.proven = c.ahead
            # The held alert is tried again after the backoff, not after each summaries
            # batch: the next step sends more summaries (or a canary) until the backoff
            # is over (or the summaries are, then the rest of it is waited out).
            if quiet and self._quiet_until is not None:
                if time.monotonic() < self._quiet_until:
                    c.due = True
                else:
                    self._quiet_until = None
        err = result.error
        if isinstance(err, UplinkUnavailable):
            if err.timed_out and len(result.failed) > 1:
                # A size signal only if a smaller batch just went through.
                size = len(result.failed)
                self._halve(size, "timed out", ceiling=0 < self._size.fitted < size)
            if after_probe and err.down:
                self._probe_trusted = False  # the probe says up, sends fail: do not hammer
            await self._failed(str(err), err.retry_after_s, down=err.down, summaries=summaries)
        elif isinstance(err, UplinkRejected):
            await self._rejected(result.failed, err)

    async def _settle(self, result: SendResult) -> str | None:
        """Record what the far end has, and what this uplink does not carry (with why);
        the problem when the store failed (then they are sent again, the far end dedupes)."""
        by_why: dict[str, list[StoredItem]] = {}
        for item, why in result.skipped:
            by_why.setdefault(why, []).append(item)
        try:
            for why, items in by_why.items():
                await self.outbox.mark_delivered(self.name, items, note=why)
        except StoreError as exc:
            return f"outbox: marking skipped: {exc}"
        self.status.skipped_total += len(result.skipped)
        if result.delivered:
            try:
                await self.outbox.mark_delivered(self.name, result.delivered)
            except StoreError as exc:
                return f"outbox: marking delivered: {exc}"
        return None

    async def stop(self, task: asyncio.Task[None], *, timeout_s: float) -> None:
        """End this loop (a reload) without cutting a send short: a batch under way is
        finished and recorded, within timeout_s (past that it is cancelled: at-least-once,
        it is sent again later and the far end dedupes); then `task` (running `run`) ends.
        """
        self._stopping = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._between.wait()
        task.cancel()
        await asyncio.wait([task], timeout=timeout_s)

    async def _rejected(self, items: list[StoredItem], exc: UplinkRejected) -> None:
        if exc.too_large and len(items) > 1 and not exc.per_item:
            self._halve(len(items), "too large")
            return
        if len(items) > 1 and not exc.per_item:
            # Find the culprits: resend these items one by one (same order, still pending).
            self._one_by_one = len(items)
            log.warning(
                "uplink[%s]: batch of %d refused (%s); resending one by one",
                self.name,
                len(items),
                exc.reason,
            )
            return
        summaries = items[0].class_name != "alert"
        if self._canary.recheck(items, exc):
            self._one_by_one = max(self._one_by_one, 1)
            log.info(
                "uplink[%s]: %s refused again after an item behind it was delivered (%s); "
                "sent once more before it is taken as its own",
                self.name, ", ".join(sorted(it.item_id for it in items)), exc.reason,
            )  # fmt: skip
            self._note(exc.reason, summaries=summaries)
            return
        aside = self._canary.aside
        if self._canary.hold_back(items, exc):
            self._note(exc.reason, summaries=summaries)
            if self._canary.aside is not None and self._canary.aside != aside:
                self._one_by_one = 0  # its culprit found: the rest go in batches again
                log.warning(
                    "uplink[%s]: %s refused again (%s) though an item behind it went "
                    "through; this endpoint gave that answer to items it took later, so it "
                    "stays pending: set aside for %.0f s while the items behind it go (it "
                    "is dead-lettered once that answer is %.0f min past)",
                    self.name, self._canary.aside, exc.reason, ASIDE_S,
                    ENDPOINT_MEMORY_S / 60,
                )  # fmt: skip
            if not self._canary.due:  # a canary refused too: the round ends, a backoff
                await self._failed(self._held_error(reason=exc.reason), summaries=summaries)
            return
        if self._one_by_one:
            self._one_by_one -= 1
        try:
            moved = await self.outbox.dead_letter(self.name, items, exc.reason)
        except StoreError as store_exc:
            await self._failed(f"outbox: dead-lettering: {store_exc}", of_items=False)
            return
        self.status.dead_lettered_total += len(moved)
        if not summaries:
            # The alert that failed to go is settled (counted, an operator can requeue
            # it): the next delivery, a summary too, ends the alerts' failure streak, or
            # /healthz stayed degraded on a calm plant until an alert was delivered.
            self._alert_failed = False
        if exc.too_large:
            self.status.too_large_total += len(moved)
        self._note(exc.reason, summaries=summaries)

    def _note(self, error: str, *, summaries: bool) -> None:
        """The last error, on the alerts' side or the summaries' (see UplinkStatus)."""
        if summaries:
            self.status.summaries_last_error = error
        else:
            self.status.last_error = error

    def _held_error(self, *, reason: str | None = None, quiet: bool = False) -> str:
        """Why the backlog is held back (the ERROR, /healthz's last_error)."""
        return self._canary.held_error(self.status.last_error, reason=reason, quiet=quiet)

    def _halve(self, size: int, why: str, *, ceiling: bool = True) -> None:
        """Send smaller batches (agent.uplink._batchsize), and say so."""
        self._size.halve(size, ceiling=ceiling)
        log.warning(
            "uplink[%s]: batch of %d %s, now %d (growing back to at most %d)",
            self.name, size, why, self._size.limit, self._size.grow_cap(),
        )  # fmt: skip

    def _succeeded(self, items: list[StoredItem]) -> None:
        st = self.status
        alerts = sum(1 for it in items if it.class_name == "alert")
        st.delivered_total += alerts
        st.summaries_delivered_total += len(items) - alerts
        st.last_success_at = format_ts(datetime.now(UTC))
        self._probe_trusted = True
        self._canary.delivered(items)
        # Summaries delivered while an alert is held (a quiet plant) end no backoff of the
        # alerts': each reset it, so the refused alert was POSTed again several times per
        # summary (30 times in 6 s with max_backoff_s 5) instead of backing off.
        alerts_flow = alerts > 0 or not self._alert_failed
        streak = self._streak
        if alerts_flow:
            self._streak = 0
            self._woken_early = False
        if self._one_by_one:
            self._one_by_one -= 1
        self._size.delivered(len(items))
        if self._in_error and alerts_flow:
            log.warning(
                "uplink[%s] recovered after %d failure(s): delivered %d item(s)",
                self.name,
                streak,
                len(items),
            )
            self._in_error = False
        if alerts_flow:
            # A store's or the loop's failure is over once anything is delivered: on a
            # calm plant (no alert for days) it read as failing all that time.
            st.consecutive_failures = 0
            self._alert_failed = False
        if alerts < len(items):
            st.summaries_consecutive_failures = 0

    async def _failed(
        self,
        error: str,
        retry_after_s: float | None = None,
        *,
        down: bool = False,
        summaries: bool = False,
        of_items: bool = True,
    ) -> None:
        """Count a failure (the summaries' or the alerts'; not of_items: the store's or
        the loop's, on the alerts' side) and wait out its backoff."""
        delay = self._count_failure(error, retry_after_s, summaries=summaries, of_items=of_items)
        probing = down and retry_after_s is None and self._probe_trusted
        try:
            await self._wait(delay, probing=probing, honour=retry_after_s is not None)
        finally:
            self.status.next_retry_in_s = None

    def _count_failure(
        self,
        error: str,
        retry_after_s: float | None = None,
        *,
        summaries: bool = False,
        of_items: bool = True,
    ) -> float:
        """Count a failure (see `_failed`) and say so; its backoff's length."""
        st = self.status
        self._quiet_until = None
        if of_items and not summaries:
            self._alert_failed = True
        self._size.fitted = 0
        self._canary.failed()
        st.failures_total += 1
        self._streak += 1
        # Apart, so that status tells whether the ALERTS flow (see UplinkStatus).
        if summaries:
            st.summaries_consecutive_failures += 1
        else:
            st.consecutive_failures += 1
        self._note(error, summaries=summaries)
        delay = retry_delay(
            self._streak, retry_after_s, base_s=self._base, cap_s=self._cap,
            rng=self._rng,
        )  # fmt: skip
        if not self._in_error:
            log.error(
                "uplink[%s] failing: %s; its backlog stays in the outbox, retrying",
                self.name,
                error,
            )
            self._in_error = True
        else:
            log.debug(
                "uplink[%s] still failing (%d): %s; next try in %.2fs",
                self.name,
                self._streak,
                error,
                delay,
            )
        return delay

    async def _wait(self, delay: float, *, probing: bool, honour: bool) -> None:
        """Wait out a backoff; a probe seeing the far end back, or the episode's first new item,
        ends it."""
        st = self.status
        st.state = "probing" if probing else "backoff"
        wake = self.outbox.wake_event(self.name)
        start = time.monotonic()
        due = start + delay
        next_probe = start + self._probe_s * self._rng.uniform(0.5, 1.0)
        while (left := due - (now := time.monotonic())) > 0:
            st.next_retry_in_s = round(left, 3)
            # A new item is worth one try before the backoff ends; once per failure
            # episode, as items keep coming during an outage. An explicit Retry-After is
            # honoured fully.
            if (
                not honour
                and not self._woken_early
                and wake.is_set()
                and now - start >= NEW_ALERT_RETRY_AFTER_S
            ):
                self._woken_early = True
                return
            if probing and now >= next_probe:
                st.probes_total += 1
                if await self.transport.probe():
                    st.resumed_by_probe_total += 1
                    self._after_probe = True
                    return
                now = time.monotonic()
                next_probe = now + self._probe_s * self._rng.uniform(0.5, 1.0)
            nap = min(due - now, NEW_ALERT_RETRY_AFTER_S)
            if probing:
                nap = min(nap, max(0.0, next_probe - now))
            await asyncio.sleep(max(nap, 0.01))
