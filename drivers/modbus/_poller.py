"""One poller per Modbus device: fixed cadence, circuit breaker, value checks, status.

A poller asks its bus for every read (drivers.modbus._bus): a device's own TCP
connection, a gateway endpoint or a serial line shared with other devices. A dead device
costs its bus at most one timeout per back-off period once its breaker is open; on a bus
shared with other devices that period starts long enough for its failed polls to hold the
line at most SHARED_LINE_SHARE of the time (up to the breaker's max_s), so a silent unit
behind a gateway does not cost its neighbours ticks with quick probes.

Shutdown is certain: the run loop re-checks its stop flag and the task's pending
cancellation after every await, so a cancellation that a library swallowed (pymodbus's
``wait_for`` on Python 3.11 did) still ends the loop, and an answer that races the stop
is never delivered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from drivers.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceTimeout,
)
from drivers.modbus._backoff import Backoff
from drivers.modbus._bus import Bus
from drivers.modbus._frames import ExceptionAnswer, FrameError
from drivers.modbus._link import LinkDown, LinkTimeout
from drivers.modbus._peers import Peers
from drivers.modbus._plan import ReadPlan, plan_profile
from drivers.modbus._readings import assemble
from drivers.modbus._status import PollerState, PollerStatus, PollLedger
from drivers.modbus._wheel import Wheel
from drivers.profiles import Profile
from drivers.reading import Reading, Transport, utc_now
from drivers.stuck import StuckRule, StuckWatch

__all__ = ["BUSY", "ModbusPoller"]

log = logging.getLogger("edge_agent.drivers.modbus")

BUSY = 6  # Modbus "server device busy": the only answer worth an immediate retry
BUSY_RETRY_DELAY_S = 0.05
# On a shared bus a failed poll holds the line (timeout, then the gateway's settle) while
# the other devices wait and miss ticks: once its breaker is open, a device's failed
# polls may take at most this share of the line (its probes are spaced at least their
# duration / SHARED_LINE_SHARE apart, within the breaker's max_s).
SHARED_LINE_SHARE = 0.05


class ModbusPoller:
    """Polls one Modbus device through its bus on a fixed cadence; Readings to ``sink``.

    Args:
        sensor_id: the sensor's configured id.
        bus: the bus the device is on (its own connection, a gateway, a serial line).
        device_id: Modbus unit id.
        profile: the loaded register profile.
        channels: channels to read (default: all of the profile's).
        timeout_s: per-request answer timeout.
        poll_interval_s: cadence.
        sink: called with each Reading (synchronously, on the event loop; keep it short).
        backoff: the circuit breaker (default: from the poll interval, cap 30 s, 3 failures).
        transport: the transport name the readings carry.
        rng: random source for jitter (tests pass a seeded one; pollers may share one).
        plan: the compiled reads of ``profile`` for ``channels`` (default: compiled here;
            pollers of the same profile and channels may share one).
        wheel: wakes the poller at each tick, shared by many pollers (one event-loop timer
            per slot; a tick is then up to its grain late); None: a timer per tick.
        stuck: when a repeated value is frozen (drivers.stuck); None: not judged.
    """

    def __init__(
        self,
        sensor_id: str,
        *,
        bus: Bus,
        device_id: int,
        profile: Profile,
        channels: Sequence[str] | None = None,
        timeout_s: float = 0.5,
        poll_interval_s: float = 1.0,
        sink: Callable[[Reading], None],
        backoff: Backoff | None = None,
        transport: Transport = "modbus",
        rng: random.Random | None = None,
        plan: ReadPlan | None = None,
        wheel: Wheel | None = None,
        stuck: StuckRule | None = None,
    ) -> None:
        if timeout_s <= 0 or poll_interval_s <= 0:
            raise ValueError("timeout_s and poll_interval_s must be positive")
        self.sensor_id = sensor_id
        self.bus = bus
        self.device_id = device_id
        self.profile = profile
        self.plan: ReadPlan = plan or plan_profile(profile, channels)
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self.transport: Transport = transport
        self._sink = sink
        self._backoff = backoff or Backoff(min(poll_interval_s, 1.0))
        self._rng = rng or random.Random()
        self._wheel = wheel
        self._stopped = False
        self._sink_errors = 0
        self.ledger = PollLedger(sensor_id, bus, device_id, self._backoff.threshold)
        self.stuck = StuckWatch(stuck) if stuck is not None else None
        bus.devices += 1
        if bus.peers is not None:
            for peers in bus.peers.groups:
                peers.join(sensor_id, poll_interval_s + timeout_s, self.ledger)

    @property
    def with_endpoint(self) -> bool:
        """Whether it fails with its whole endpoint, or may (see PollLedger)."""
        return self.ledger.with_endpoint

    @property
    def undecided_for_s(self) -> float:
        """Seconds it has failed without it being known whether alone (see PollLedger)."""
        return self.ledger.undecided_for_s

    @property
    def failure_threshold(self) -> int:
        """Failures in a row that open the breaker."""
        return self._backoff.threshold

    @property
    def state(self) -> PollerState:
        """``starting``, ``ok``, ``failing`` or ``backoff`` (see PollerStatus)."""
        return self.ledger.state

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last good read."""
        return self.ledger.consecutive_failures

    @property
    def last_error(self) -> str | None:
        """The last failure's message (kept after recovery)."""
        return self.ledger.last_error

    @property
    def last_ok_at(self) -> datetime | None:
        """UTC time of the last good read."""
        return self.ledger.last_ok_at

    @property
    def last_bad(self) -> tuple[str, ...]:
        """The flags of the last flagged reading (``feature:reason``)."""
        return self.ledger.last_bad

    @property
    def bad_for_s(self) -> float:
        """Seconds this sensor has answered only flagged values (0 when it has not)."""
        return self.ledger.bad_for_s

    @property
    def values_undecided(self) -> bool:
        """Its values have not moved since the poller began: not yet known to be live."""
        return self.stuck is not None and self.stuck.undecided

    @property
    def status(self) -> PollerStatus:
        """The current status snapshot (safe to keep; it never changes)."""
        return self.ledger.snapshot()

    def _error(self, cls: type[DeviceError], message: str) -> DeviceError:
        return cls(
            message, sensor_id=self.sensor_id, address=self.bus.address, device_id=self.device_id
        )

    async def _read(self, function_code: int, address: int, count: int) -> list[int]:
        """One read through the bus, with the device error family outside."""
        try:
            try:
                return await self.bus.read(
                    self.device_id, function_code, address, count, self.timeout_s
                )
            except ExceptionAnswer as exc:
                if exc.code != BUSY:
                    raise
                await asyncio.sleep(BUSY_RETRY_DELAY_S)  # once
                return await self.bus.read(
                    self.device_id, function_code, address, count, self.timeout_s
                )
        except ExceptionAnswer as exc:
            self.ledger.by_kind[f"exception_{exc.code}"] += 1
            raise DeviceExceptionResponse(
                code=exc.code,
                function_code=function_code,
                sensor_id=self.sensor_id,
                address=self.bus.address,
                device_id=self.device_id,
            ) from None
        except LinkTimeout as exc:
            self.ledger.by_kind["timeout"] += 1
            raise self._error(DeviceTimeout, str(exc)) from None
        except LinkDown as exc:
            self.ledger.by_kind["connection"] += 1
            raise self._error(DeviceConnectionError, str(exc)) from None
        except FrameError as exc:
            self.ledger.by_kind[exc.reason] += 1
            raise self._error(DeviceProtocolError, str(exc)) from None

    async def poll_once(self) -> list[Reading]:
        """Read every block once and return one Reading per channel.

        Raises:
            DeviceError: the poll failed (timeout, exception answer, protocol, connection).
        """
        started = time.monotonic()
        self.ledger.polls += 1
        self.ledger.begin()
        answers: list[list[int]] = []
        try:
            for block in self.plan.blocks:
                answers.append(await self._read(block.function_code, block.address, block.count))
        except DeviceError as exc:
            self.ledger.failed(exc, started)
            raise
        except Exception as exc:
            # A library surprise must not end this poller (and with it the agent).
            self.ledger.by_kind["unexpected"] += 1
            err = self._error(DeviceProtocolError, f"unexpected {type(exc).__name__}: {exc}")
            self.ledger.failed(err, started)
            raise err from exc
        now, mono = utc_now(), time.monotonic()
        self.ledger.succeeded(mono - started, now)
        readings, flags = assemble(
            self.plan,
            answers,
            now,
            mono_s=mono,
            sensor_id=self.sensor_id,
            transport=self.transport,
            all_zero_fault=self.profile.all_zero_fault,
        )
        frozen: list[str] = []
        if self.stuck is not None:
            readings, frozen = self.stuck.check(readings)
        if flags or frozen or self.ledger.bad_since is not None:
            self.ledger.count_quality(flags, frozen)
        return readings

    def _deliver(self, readings: list[Reading]) -> None:
        for reading in readings:
            try:
                self._sink(reading)
            except Exception:
                # The sink is the caller's code; its bug must not stop the polling.
                self._sink_errors += 1
                if self._sink_errors == 1:
                    log.exception("modbus sensor %s: reading sink failed", self.sensor_id)

    def stop(self) -> None:
        """Ask the run loop to end at its next step; nothing is delivered after this."""
        self._stopped = True

    def _check_stop(self, task: asyncio.Task[None] | None) -> None:
        """End the loop if asked to, even when a library swallowed the CancelledError.

        ``task`` is the run loop's own task (looked up once, not on every poll).
        """
        if self._stopped or (task is not None and task.cancelling()):
            raise asyncio.CancelledError

    async def _back_off(self, until: float, interval: float, peers: Peers) -> float:
        """Sleep a back-off until ``until``, cut short when the outage of the endpoint it
        failed with ends (another device answered: this one is most likely back too);
        returns the tick to poll at (woken: the next tick on the cadence grid)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Also woken when the TCP network's outage ends: a host judged by its own endpoint
        # slept through the network's return, then looked silent after it (its host fault
        # raised and cleared, or 30 s of back-off not polled).
        net = peers.network if peers.network is not peers else None
        if not peers.wake_on_end(fut):
            fut.set_result(None)  # not failing with its endpoint: its own back-off
            if self._wheel is not None:
                await self._wheel.sleep_until(until)
            else:
                await asyncio.sleep(until - time.monotonic())
            return until
        handle = None
        if self._wheel is not None:
            self._wheel.add(fut, until)
        else:
            handle = asyncio.get_running_loop().call_at(until, _resolve, fut)
        if net is not None:
            net.wake_on_end(fut)
        try:
            await fut
        finally:
            peers.forget(fut)
            if net is not None:
                net.forget(fut)
            if handle is not None:
                handle.cancel()
        now = time.monotonic()
        if now >= until:
            return until
        self.ledger.backoff_s = 0.0
        return until - math.floor((until - now) / interval) * interval

    async def run(self, *, start_delay_s: float | None = None) -> None:
        """Poll on a fixed monotonic cadence until stopped or cancelled.

        Polls never overlap; ticks a poll overran are skipped and counted in
        ``status.missed_ticks``. After the breaker's threshold of failures in a row the
        poller waits a jittered, capped, growing back-off before the next attempt, and
        retries forever; on a shared bus that back-off is at least the failed poll's
        duration / SHARED_LINE_SHARE (within the cap). The first good answer restores the
        cadence.

        Args:
            start_delay_s: delay before the first poll; default a random fraction of the
                interval (at most 1 s), so many pollers do not all fire at once.
        """
        interval = self.poll_interval_s
        if start_delay_s is None:
            start_delay_s = self._rng.uniform(0.0, min(interval, 1.0))
        next_at = time.monotonic() + start_delay_s
        task = asyncio.current_task()
        while True:
            self._check_stop(task)
            delay = next_at - time.monotonic()
            judge = None if self.bus.peers is None else self.bus.peers.judge
            if delay > interval and judge is not None:
                next_at = await self._back_off(next_at, interval, judge)
                self._check_stop(task)
            elif delay > 0:
                if self._wheel is not None:
                    await self._wheel.sleep_until(next_at)
                else:
                    await asyncio.sleep(delay)
                self._check_stop(task)
            # The device's hold-off on its line (its late answer may still come) is waited
            # out first: the line is others' meanwhile, so it is not the failed poll's line
            # time that spaces its probes (it spaced a dead device's up to 4 times wider).
            await self.bus.hold_off(self.device_id)
            self._check_stop(task)
            started = time.monotonic()
            try:
                readings: list[Reading] | None = await self.poll_once()
            except DeviceError:
                readings = None  # recorded in the status and logged by poll_once
            failed = readings is None
            self._check_stop(task)  # an answer that raced the stop is not delivered
            if readings:
                self._deliver(readings)
            now = time.monotonic()
            next_at += interval
            if now > next_at:
                missed = math.floor((now - next_at) / interval) + 1
                next_at += missed * interval
                self.ledger.missed += missed
            floor = 0.0
            if failed and self.bus.devices > 1:
                # Queue wait included: a congested line is one more reason to probe less.
                floor = (now - started) / SHARED_LINE_SHARE
            backoff = self._backoff.delay(self.consecutive_failures, self._rng, floor_s=floor)
            self.ledger.backoff_s = backoff
            if backoff > 0 and now + backoff > next_at:
                # Resume on the cadence grid at the first tick after the back-off.
                next_at += math.ceil((now + backoff - next_at) / interval) * interval


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
