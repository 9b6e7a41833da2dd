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
A batch that timed out is halved too (a link too slow to carry a full batch within
timeout_s, GPRS or a congested hop, would otherwise time out on every attempt and deliver
nothing ever again); like a too-large one, it doubles back with each success, but never
to within a quarter of a size that was too large, or that timed out right after a smaller
batch was delivered (the ceiling), else the size swings between one that fits and double
it and every other batch times out (a WARNING and a wasted timeout_s each). Timeouts with
nothing delivered before them (a backend that hangs, a link that black-holes packets)
say nothing about sizes and set no ceiling, so batches grow back to full size after such
an outage. The ceiling doubles every CEILING_DOUBLING_S without a new one, so a link
that got faster (or a body limit that was raised) gets its full batches back.
Over HTTP a summaries batch under way gives way to an alert stored meanwhile (cancelled,
sent again after it), MAX_GIVE_WAYS times in a row at most: the next one is sent to its
end, so a steady stream of alerts cannot starve a slow summaries endpoint.
Refused items: a too-large batch is halved (one item too large on its own, or an MQTT
message over the broker's maximum packet size, is dead-lettered); a refused batch is
resent one item at a time so one bad record cannot take good ones with it; a refused
single item is dead-lettered for this uplink with the reason (an operator can requeue it:
`edge-agent requeue`). But a refusal that could be the endpoint's rather than the item's
(any answer an endpoint refusing everything gives every item: a proxy's 400 page, http://
sent to a TLS port, a WAF's 406, a CDN's error page) dead-letters nothing by itself: an
item so refused is dead-lettered only when refused again after an item behind it (on this
uplink) was delivered, i.e. the endpoint takes items, so the refusal is the item's own,
and refused once more when resent alone at once (two refusals in a row: an endpoint that
flips between refusing and taking per request, a flaky proxy, met the held item on each
refusal and the canary on each success, and dead-lettered good items).
The refused first item is held pending and an item behind it is sent at once (the canary,
CANARY_MAX_DEPTH items back at most, further back each round it is refused too, so a run
of bad items blocks none behind it for long; never a record of an alert episode, same
kind, asset, sensor and channel, an item ahead of it belongs to: the held raise's clear
delivered first reached the backend and CMMS before the raise, so the first item of
another episode is taken, CANARY_SEARCH looked at); a refused canary ends the round with a
backoff (an ERROR once, the uplink failing in /healthz and status), after which the held
item is tried first again, so fixing the URL delivers the backlog once and in order.
While everything is refused nothing is dead-lettered, however long it lasts and however
often the agent restarts (the rule needs no count that a restart would reset). With no
item behind the held one (a quiet plant), or only records of its episodes, there is no
canary: the held item is retried after each backoff, failing, until it is delivered or
an item of another episode arrives behind it;
the pending summaries (which otherwise wait behind any alert) are sent meanwhile.
This is for refusals of a batch narrowed down to one item (http) and a CMMS's refusals
other than a 422 (a proxy's page names no work order); a refusal that is certainly one
item's own (too large, an MQTT PUBACK, a CMMS 422, a record no work order can be built
from) is dead-lettered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.records import format_ts
from agent.store import Outbox, StoredItem, StoreError
from agent.uplink._backoff import retry_delay
from agent.uplink._transport import SendResult, Transport
from agent.uplink.errors import UplinkRejected, UplinkUnavailable

log = logging.getLogger(__name__)

NEW_ALERT_RETRY_AFTER_S = 1.0  # during a backoff, a new alert retries after at least this
# A refused canary is tried this many items behind the held one at most (doubling from 1).
CANARY_MAX_DEPTH = 64
# From there, this many items are looked at for one of no episode ahead of it.
CANARY_SEARCH = 64
_EPISODIC = frozenset({"severity", "trend", "sensor_fault"})
CEILING_DOUBLING_S = 120.0  # a batch size that timed out (or was too large) may be tried again
CEILING_MARGIN = 0.75  # batches grow back to at most this share of that size
# Summaries batches cut short for an alert in a row; the next one is sent to its end.
MAX_GIVE_WAYS = 3


@dataclass(slots=True)
class UplinkStatus:
    """What health and status report; updated in place by the delivery loop.

    Plain JSON values only, so `dataclasses.asdict(status)` goes straight into /healthz.

    Attributes:
        name: the uplink's name; kind: http, mqtt or cmms; target: where, without secrets.
        state: idle, sending, backoff (waiting), probing (waiting, watching for the far
            end's return).
        last_success_at: UTC time of the last acknowledged batch, ISO-8601 with ms and Z.
        next_retry_in_s: while waiting, seconds to the next attempt (refreshed at least
            every second); None when not waiting.
        probes_total: cheap reachability checks made while the far end was down.
        resumed_by_probe_total: waits a probe cut short because the far end was back.
        skipped_total: items settled without sending, as this uplink does not carry them
            (cmms: clears, maintenance and sensor faults open no work order).
        too_large_total: items dead-lettered because they are larger than the far end takes
            (HTTP 413 for one item; MQTT: over the broker's maximum packet size).
        consecutive_failures, last_error: the alerts' side (a send of alerts, the store,
            the loop itself): consecutive_failures 0 means alerts flow. A summary delivered
            resets neither, a summary's failure sets neither.
        summaries_consecutive_failures, summaries_last_error: the feature summaries' own
            (their endpoint may be another: summaries_url), reset by a summary delivered.
    """

    name: str
    kind: str
    target: str
    state: str = "idle"
    delivered_total: int = 0
    summaries_delivered_total: int = 0
    attempts_total: int = 0
    failures_total: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_success_at: str | None = None
    next_retry_in_s: float | None = None
    dead_lettered_total: int = 0
    too_large_total: int = 0
    skipped_total: int = 0
    probes_total: int = 0
    resumed_by_probe_total: int = 0
    summaries_consecutive_failures: int = 0
    summaries_last_error: str | None = None


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
        self._batch = batch_size
        self._cap = max_backoff_s
        self._probe_s = probe_interval_s
        self._base = min(base_backoff_s, max_backoff_s)
        self._idle = idle_recheck_s
        self._rng = rng or random.Random()
        self._limit = batch_size
        self._ceiling: int | None = None  # the last batch size that timed out or was too large
        self._ceiling_at = 0.0  # ... at this monotonic time
        self._fitted = 0  # items the last attempt delivered (0: it failed)
        self._one_by_one = 0  # isolate a refused batch: send this many items singly
        self._in_error = False
        self._streak = 0  # failures in a row, alerts' and summaries' alike: the backoff
        self._probe_trusted = True
        self._after_probe = False  # the send under way follows a probe that said "up"
        self._woken_early = False  # a new item cut a wait short since the last success
        self._refusals = 0  # refusals that may be the endpoint's since a delivery
        self._held: str | None = None  # the first pending item, so refused: kept pending
        self._canary_due = False  # the held item was just refused: an item behind it next
        self._depth = 1  # how far behind the held item the canary is taken
        self._ahead: frozenset[str] = frozenset()  # ahead of the canary under way
        self._proven: frozenset[str] = frozenset()  # ahead of a delivered canary: a
        # refusal of one of these is its own (the endpoint takes items) ...
        self._rechecked: frozenset[str] = frozenset()  # ... once refused twice in a row
        self._gave_way = 0  # summaries sends cancelled for an alert since one ended
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
                    await self._failed(f"unexpected: {exc!r}")

    async def step(self) -> None:
        """One unit of work: send a batch (and wait out a failure), or idle."""
        wake = self.outbox.wake_event(self.name)
        wake.clear()  # before reading, so an append after it wakes us
        size = 1 if self._one_by_one else self._limit
        canary, self._canary_due = self._canary_due, False
        try:
            items = await self.outbox.next_batch(
                self.name, max(size, self._depth + CANARY_SEARCH) if canary else size
            )
        except StoreError as exc:
            await self._failed(f"outbox: {exc}")
            return
        self._ahead = frozenset()
        if canary and items and items[0].item_id == self._held:
            k = _canary_at(items, self._depth)
            if k is None:  # a quiet plant: no alert behind the held one to try (or only
                # records of its episodes, which must not overtake it)
                # The summaries wait behind alerts: they go meanwhile, or one malformed
                # alert held every summary back until the next alert (days on a calm
                # plant). They prove nothing (they may go to another endpoint).
                try:
                    items = await self.outbox.next_batch(self.name, size, summaries_only=True)
                except StoreError as exc:
                    await self._failed(f"outbox: {exc}")
                    return
                if not items:
                    await self._failed(self._held_error(quiet=True))
                    return
            else:
                self._ahead = frozenset(it.item_id for it in items[:k])
                items = items[k : k + 1]
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
            if self._may_give_way(items):
                sent = await self._send_giving_way(items)
                if sent is None:  # an alert came: it goes first, the summaries after it
                    return
                result = sent
            else:
                result = await self.transport.send(items)
            problem = await self._settle(result)
        finally:
            self._between.set()
        summaries = items[0].class_name != "alert"
        if problem is not None:
            await self._failed(problem)
            return
        if result.delivered:
            self._succeeded(result.delivered)
            if self._ahead:  # a canary delivered: the items ahead of it refused as their own
                self._proven = self._ahead
        err = result.error
        if isinstance(err, UplinkUnavailable):
            if err.timed_out and len(result.failed) > 1:
                # A size signal only if a smaller batch just went through.
                size = len(result.failed)
                self._halve(size, "timed out", ceiling=0 < self._fitted < size)
            if after_probe and err.down:
                self._probe_trusted = False  # the probe says up, sends fail: do not hammer
            await self._failed(str(err), err.retry_after_s, down=err.down, summaries=summaries)
        elif isinstance(err, UplinkRejected):
            await self._rejected(result.failed, err)

    def _may_give_way(self, items: list[StoredItem]) -> bool:
        """Whether this send is of summaries that give way to an alert. Not past
        MAX_GIVE_WAYS in a row: a summaries endpoint that answers, only more slowly than
        alerts come (a slow link, a busy backend), had every send cancelled and got the
        same batch again and again while no summary was ever delivered."""
        if items[0].class_name == "alert" or not getattr(self.transport, "summaries_yield", False):
            return False
        if self._gave_way < MAX_GIVE_WAYS:
            return True
        self._gave_way = 0  # this one is sent to its end (an answer or timeout_s)
        return False

    async def _send_giving_way(self, items: list[StoredItem]) -> SendResult | None:
        """Send a batch of summaries, cancelled when an alert is stored meanwhile (None).

        Summaries may go to their own endpoint (summaries_url): one that hangs (a firewall
        dropping its packets) held each new alert back for up to timeout_s. A cancelled
        batch stays pending and is sent again after the alert (the far end dedupes on ids).
        """
        send = asyncio.ensure_future(self.transport.send(items))
        wake = self.outbox.wake_event(self.name)
        try:
            while not send.done():
                waiter = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait([send, waiter], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if send.done() or not wake.is_set():
                    continue
                wake.clear()  # a summary appended wakes us too: only an alert counts
                if await self._alert_waits():
                    send.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await send
                    if send.cancelled():
                        log.debug("uplink[%s]: summaries give way to an alert", self.name)
                        self._gave_way += 1
                        return None
        finally:
            if not send.done():  # this loop is cancelled (a stop): so is the send
                send.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await send
        self._gave_way = 0
        return send.result()

    async def _alert_waits(self) -> bool:
        try:
            first = await self.outbox.next_batch(self.name, 1)
        except StoreError:
            return False  # the summaries' send goes on; the next step reads again
        return bool(first) and first[0].class_name == "alert"

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
        if self._recheck(items, exc):
            self._note(exc.reason, summaries=summaries)
            return
        if self._hold_back(items, exc):
            self._note(exc.reason, summaries=summaries)
            if not self._canary_due:  # a canary refused too: the round ends, a backoff
                await self._failed(self._held_error(reason=exc.reason), summaries=summaries)
            return
        if self._one_by_one:
            self._one_by_one -= 1
        try:
            moved = await self.outbox.dead_letter(self.name, items, exc.reason)
        except StoreError as store_exc:
            await self._failed(f"outbox: dead-lettering: {store_exc}")
            return
        self.status.dead_lettered_total += len(moved)
        if exc.too_large:
            self.status.too_large_total += len(moved)
        self._note(exc.reason, summaries=summaries)

    def _note(self, error: str, *, summaries: bool) -> None:
        """The last error, on the alerts' side or the summaries' (see UplinkStatus)."""
        if summaries:
            self.status.summaries_last_error = error
        else:
            self.status.last_error = error

    def _recheck(self, items: list[StoredItem], exc: UplinkRejected) -> bool:
        """Whether to send these items once more at once, alone, before taking a refusal
        after their canary was delivered as their own: an endpoint that flips between
        refusing and taking per request (a flaky proxy) met the held item on each refusal
        and the canary on each success, and dead-lettered good items."""
        ids = frozenset(it.item_id for it in items)
        if exc.too_large or exc.alike is None or not ids <= self._proven:
            return False
        if ids <= self._rechecked:
            return False  # refused twice in a row: its own
        self._rechecked = ids
        self._one_by_one = max(self._one_by_one, 1)
        log.info(
            "uplink[%s]: %s refused again after an item behind it was delivered (%s); "
            "sent once more before it is taken as its own",
            self.name, ", ".join(sorted(ids)), exc.reason,
        )  # fmt: skip
        return True

    def _hold_back(self, items: list[StoredItem], exc: UplinkRejected) -> bool:
        """Whether to keep these refused items pending instead of dead-lettering them now
        (see the module docstring): yes unless the refusal is certainly theirs, or they
        are refused again after an item behind them was delivered."""
        ids = frozenset(it.item_id for it in items)
        if exc.too_large or exc.alike is None or ids <= self._proven:
            self._proven -= ids
            self._rechecked -= ids
            if self._held in ids:
                self._held, self._depth = None, 1
            return False
        self._refusals += len(items)
        if self._ahead:  # the canary: the next one is taken further back
            self._depth = min(len(self._ahead) * 2, CANARY_MAX_DEPTH)
        else:  # the first pending item: held, and one behind it tried at once
            self._held, self._canary_due = items[0].item_id, True
        return True

    def _held_error(self, *, reason: str | None = None, quiet: bool = False) -> str:
        """Why the backlog is held back (the ERROR, /healthz's last_error)."""
        if quiet:
            return (
                f"{self.status.last_error or 'refused'}: the first pending item is held, "
                "refused with no item behind it to show whether the endpoint takes any "
                "(a quiet plant, or only records of its alert episode, which must not reach "
                "the backend before it): retried after each backoff, dead-lettered only once an "
                "item behind it is delivered"
            )
        return (
            f"{reason}: {self._refusals} refusal(s) in a row, none delivered between, "
            "the items behind the first one refused too: the endpoint (a proxy, a URL) "
            "may refuse everything, so the backlog stays pending, tried again after each "
            "backoff (an item is dead-lettered only once one behind it is delivered)"
        )

    def _halve(self, size: int, why: str, *, ceiling: bool = True) -> None:
        """Send smaller batches (each success doubles them back, below the ceiling, which
        `size` becomes unless told otherwise)."""
        self._limit = max(1, size // 2)
        if ceiling:
            self._ceiling, self._ceiling_at = size, time.monotonic()
        log.warning(
            "uplink[%s]: batch of %d %s, now %d (growing back to at most %d)",
            self.name, size, why, self._limit, self._grow_cap(),
        )  # fmt: skip

    def _grow_cap(self) -> int:
        """The largest batch to grow back to: batch_size, or below a size that failed."""
        if self._ceiling is None:
            return self._batch
        age = time.monotonic() - self._ceiling_at
        ceiling = self._ceiling * 2.0 ** min(age / CEILING_DOUBLING_S, 32.0)
        if ceiling * CEILING_MARGIN >= self._batch:
            self._ceiling = None  # decayed away: the link has had time to get better
            return self._batch
        return max(1, int(ceiling * CEILING_MARGIN))

    def _succeeded(self, items: list[StoredItem]) -> None:
        st = self.status
        self._fitted = len(items)
        alerts = sum(1 for it in items if it.class_name == "alert")
        st.delivered_total += alerts
        st.summaries_delivered_total += len(items) - alerts
        st.last_success_at = format_ts(datetime.now(UTC))
        self._probe_trusted = True
        self._woken_early = False
        self._refusals, self._held, self._depth = 0, None, 1
        self._proven -= {it.item_id for it in items}
        self._rechecked -= {it.item_id for it in items}
        streak, self._streak = self._streak, 0
        if self._one_by_one:
            self._one_by_one -= 1
        if self._limit < (cap := self._grow_cap()):
            self._limit = min(cap, self._limit * 2)
        if self._in_error:
            log.warning(
                "uplink[%s] recovered after %d failure(s): delivered %d item(s)",
                self.name,
                streak,
                len(items),
            )
            self._in_error = False
        if alerts:
            st.consecutive_failures = 0
        if alerts < len(items):
            st.summaries_consecutive_failures = 0

    async def _failed(
        self,
        error: str,
        retry_after_s: float | None = None,
        *,
        down: bool = False,
        summaries: bool = False,
    ) -> None:
        st = self.status
        self._fitted = 0
        # A delivered canary proves the endpoint took items then, not after a failure (an
        # outage, a proxy refusing everything again): a refusal after it may be the
        # endpoint's again, so the items ahead of the canary are held again, not dead.
        self._proven = self._rechecked = frozenset()
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
        probing = down and retry_after_s is None and self._probe_trusted
        try:
            await self._wait(delay, probing=probing, honour=retry_after_s is not None)
        finally:
            st.next_retry_in_s = None

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


def _canary_at(items: list[StoredItem], depth: int) -> int | None:
    """Where in `items` (the held one first) the canary is: the first item from `depth` on
    (or the last) of no alert episode an item ahead of it belongs to; None if there is none.

    A delivered canary goes before the items ahead of it: one of the same episode (the
    held raise's clear or escalation) reached the backend before its raise, and the
    backend and the CMMS build a case from raise -> escalate -> clear in that order. A
    clear carries no raise's id, so any record of the same kind, asset, sensor and channel
    (a later raise too: a clear ahead of it would close it) must keep its place."""
    if len(items) < 2:
        return None
    start = min(depth, len(items) - 1)
    ahead: set[tuple[str, ...]] = set()
    for item in items[:start]:
        ahead |= _episodes(item)
    for k in range(start, len(items)):
        keys = _episodes(items[k])
        if not keys & ahead:
            return k
        ahead |= keys
    return None


def _episodes(item: StoredItem) -> set[tuple[str, ...]]:
    """The alert episodes (kind, asset, sensor, channel) a record belongs to: its own, or
    those a maintenance record closes (agent.store._episodes); none for a summary or a
    one-off event. An unreadable record counts as in none (it was stored as JSON)."""
    if item.class_name != "alert":
        return set()
    try:
        rec = json.loads(item.json)
        kind, asset = rec["kind"], rec["asset"]["id"]
        if kind == "maintenance":
            closed = (rec.get("evidence") or {}).get("closed_alerts") or ()
            return {
                (str(c.get("kind")), asset, str(c.get("sensor")), str(c.get("channel")))
                for c in closed
                if isinstance(c, dict)
            }
        if kind in _EPISODIC:
            return {(kind, asset, rec["sensor"]["id"], rec["sensor"]["channel"])}
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return set()
