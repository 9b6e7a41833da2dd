"""One poller per Modbus device: fixed cadence, circuit breaker, value checks, status.

A poller asks its bus for every read (drivers.modbus._bus): a device's own TCP
connection, a gateway endpoint or a serial line shared with other devices. A dead device
costs its bus at most one timeout per back-off period once its breaker is open.

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
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from drivers.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceTimeout,
)
from drivers.modbus._bus import Bus
from drivers.modbus._frames import ExceptionAnswer, FrameError
from drivers.modbus._link import LinkDown, LinkTimeout
from drivers.modbus._plan import ReadPlan, plan_profile
from drivers.modbus._wheel import Wheel
from drivers.profiles import ALL_CHANNELS, ALL_ZERO, Profile, Register
from drivers.reading import Reading, Transport, utc_now

log = logging.getLogger("edge_agent.drivers.modbus")

PollerState = Literal["starting", "ok", "failing", "backoff"]
BUSY = 6  # Modbus "server device busy": the only answer worth an immediate retry
BUSY_RETRY_DELAY_S = 0.05


@dataclass(frozen=True, slots=True)
class PollerStatus:
    """What a health endpoint shows for one device (a snapshot; never mutated).

    Attributes:
        sensor_id: the sensor's id.
        address: ``host:port`` or serial port.
        device_id: Modbus unit id.
        state: ``starting`` (no poll yet), ``ok``, ``failing`` (fewer failures in a row than
            the breaker threshold) or ``backoff`` (breaker open, retrying later).
        last_ok_at: UTC time of the last good read.
        last_error: the last failure's message (kept after recovery).
        last_error_at: UTC time of the last failure.
        consecutive_failures: failures since the last good read.
        polls_total: polls attempted.
        errors_total: polls failed.
        exception_responses: Modbus exception answers received.
        missed_ticks: cadence ticks skipped because a poll ran past them.
        last_rtt_s: duration of the last good poll (queue wait included), seconds.
        backoff_s: the current back-off delay (0 when the breaker is closed).
        errors_by_kind: failed polls by kind (timeout, connection, exception_N, crc,
            short, wrong_device, byte_count, wrong_function, ...).
        bad_values: readings flagged, by reason (sentinel, out_of_range, not_finite,
            all_zero).
        bad_for_s: seconds the sensor has answered only flagged values (0: it has not).
        last_bad: the flags of the last flagged reading.
    """

    sensor_id: str
    address: str
    device_id: int
    state: PollerState = "starting"
    last_ok_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    consecutive_failures: int = 0
    polls_total: int = 0
    errors_total: int = 0
    exception_responses: int = 0
    missed_ticks: int = 0
    last_rtt_s: float | None = None
    backoff_s: float = 0.0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    bad_values: dict[str, int] = field(default_factory=dict)
    bad_for_s: float = 0.0
    last_bad: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Circuit-breaker delays: none below ``threshold`` failures in a row, then doubling
    from ``base_s`` up to ``max_s``, each drawn uniformly from [d/2, d] (equal jitter) so
    devices that failed together do not retry together. The first probes come soon (a
    device that blinked is read again within about ``base_s``); only a device that stays
    dead is probed as rarely as ``max_s``.
    """

    base_s: float
    max_s: float = 30.0
    threshold: int = 3

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after ``failures`` consecutive failures."""
        if failures < self.threshold:
            return 0.0
        exponent = min(failures - self.threshold, 30)  # bounded: 2**30 is plenty
        cap = max(min(self.max_s, self.base_s * 2.0**exponent), 0.0)
        return rng.uniform(cap / 2.0, cap)


def readings_from(
    sensor_id: str,
    channels: Sequence[str],
    values: Sequence[tuple[Register, float]],
    timestamp: datetime,
    *,
    flags: Sequence[tuple[Register, str]] = (),
    transport: Transport = "modbus",
) -> list[Reading]:
    """One Reading per channel: that channel's features plus the shared ones.

    A channel with a flagged value (its own or a shared one) is quality "bad", carries the
    flags, and leaves the flagged values out of its features.
    """
    out = []
    for channel in channels:
        mine = (channel, ALL_CHANNELS)
        bad = tuple(f"{reg.feature}:{reason}" for reg, reason in flags if reg.channel in mine)
        flagged = {id(reg) for reg, _ in flags}
        features = {
            reg.feature: value
            for reg, value in values
            if reg.feature is not None and reg.channel in mine and id(reg) not in flagged
        }
        out.append(
            Reading(
                sensor_id,
                channel,
                timestamp,
                features,
                transport=transport,
                quality="bad" if bad else "good",
                flags=bad,
            )
        )
    return out


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
        # Mutable counters; `status` hands out frozen snapshots.
        self.state: PollerState = "starting"
        self.consecutive_failures = 0
        self._polls = self._errors = self._exceptions = self._missed = 0
        self._last_ok_at: datetime | None = None
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._last_rtt: float | None = None
        self._backoff_s = 0.0
        self._failing_since: float | None = None
        self._by_kind: Counter[str] = Counter()
        self._bad: Counter[str] = Counter()
        self._bad_since: float | None = None
        self._last_bad: tuple[str, ...] = ()
        bus.devices += 1

    @property
    def failure_threshold(self) -> int:
        """Failures in a row that open the breaker."""
        return self._backoff.threshold

    @property
    def last_error(self) -> str | None:
        """The last failure's message (kept after recovery)."""
        return self._last_error

    @property
    def last_ok_at(self) -> datetime | None:
        """UTC time of the last good read."""
        return self._last_ok_at

    @property
    def last_bad(self) -> tuple[str, ...]:
        """The flags of the last flagged reading (``feature:reason``)."""
        return self._last_bad

    @property
    def bad_for_s(self) -> float:
        """Seconds this sensor has answered only flagged values (0 when it has not)."""
        return 0.0 if self._bad_since is None else time.monotonic() - self._bad_since

    @property
    def status(self) -> PollerStatus:
        """The current status snapshot (safe to keep; it never changes)."""
        return PollerStatus(
            self.sensor_id,
            self.bus.address,
            self.device_id,
            self.state,
            self._last_ok_at,
            self._last_error,
            self._last_error_at,
            self.consecutive_failures,
            self._polls,
            self._errors,
            self._exceptions,
            self._missed,
            self._last_rtt,
            self._backoff_s,
            dict(self._by_kind),
            dict(self._bad),
            round(self.bad_for_s, 3),
            self._last_bad,
        )

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
            self._by_kind[f"exception_{exc.code}"] += 1
            raise DeviceExceptionResponse(
                code=exc.code,
                function_code=function_code,
                sensor_id=self.sensor_id,
                address=self.bus.address,
                device_id=self.device_id,
            ) from None
        except LinkTimeout as exc:
            self._by_kind["timeout"] += 1
            raise self._error(DeviceTimeout, str(exc)) from None
        except LinkDown as exc:
            self._by_kind["connection"] += 1
            raise self._error(DeviceConnectionError, str(exc)) from None
        except FrameError as exc:
            self._by_kind[exc.reason] += 1
            raise self._error(DeviceProtocolError, str(exc)) from None

    async def poll_once(self) -> list[Reading]:
        """Read every block once and return one Reading per channel.

        Raises:
            DeviceError: the poll failed (timeout, exception answer, protocol, connection).
        """
        started = time.monotonic()
        self._polls += 1
        answers: list[list[int]] = []
        try:
            for block in self.plan.blocks:
                answers.append(await self._read(block.function_code, block.address, block.count))
        except DeviceError as exc:
            self._failed(exc, started)
            raise
        except Exception as exc:
            # A library surprise must not end this poller (and with it the agent).
            self._by_kind["unexpected"] += 1
            err = self._error(DeviceProtocolError, f"unexpected {type(exc).__name__}: {exc}")
            self._failed(err, started)
            raise err from exc
        now = utc_now()
        self._succeeded(time.monotonic() - started, now)
        return self._decode(answers, now)

    def _decode(self, answers: list[list[int]], now: datetime) -> list[Reading]:
        plan = self.plan
        values: list[float] = []
        flags: list[tuple[Register, str]] = []
        any_set = False
        for block, words in zip(plan.blocks, answers, strict=True):
            any_set = any_set or any(words)
            for reg, raw in block.raw_values(words):
                value, reason = reg.assess(raw)
                values.append(value)
                if reason is not None:
                    flags.append((reg, reason))
        if not any_set and self.profile.all_zero_fault:
            flags = [(reg, ALL_ZERO) for reg in plan.registers]
        if flags:
            readings = readings_from(
                self.sensor_id,
                plan.channels,
                list(zip(plan.registers, values, strict=True)),
                now,
                flags=flags,
                transport=self.transport,
            )
        else:  # every poll of a healthy sensor: what readings_from makes, compiled routes
            sid, transport = self.sensor_id, self.transport
            readings = [
                Reading(sid, channel, now, {f: values[i] for f, i in route}, transport)
                for channel, route in zip(plan.channels, plan.routes, strict=True)
            ]
        if flags or self._bad_since is not None:
            self._count_quality(flags)
        return readings

    def _count_quality(self, flags: list[tuple[Register, str]]) -> None:
        if not flags:
            if self._bad_since is not None:
                log.info("modbus sensor %s values plausible again", self.sensor_id)
            self._bad_since = None
            return
        reasons = {reason for _, reason in flags}
        for reason in reasons:
            self._bad[reason] += 1
        self._last_bad = tuple(sorted(f"{reg.feature}:{reason}" for reg, reason in flags))
        if self._bad_since is None:
            self._bad_since = time.monotonic()
            log.warning(
                "modbus sensor %s answers implausible values (%s); they are not analysed",
                self.sensor_id,
                ", ".join(self._last_bad),
                extra={"sensor_id": self.sensor_id, "address": self.bus.address},
            )

    def _failed(self, err: DeviceError, started: float) -> None:
        failures = self.consecutive_failures + 1
        self.consecutive_failures = failures
        self.state = "backoff" if failures >= self._backoff.threshold else "failing"
        self._errors += 1
        self._exceptions += isinstance(err, DeviceExceptionResponse)
        self._last_error, self._last_error_at = str(err), utc_now()
        if failures == 1:
            self._failing_since = started
            log.warning(
                "modbus sensor %s at %s device %d failing: %s",
                self.sensor_id,
                self.bus.address,
                self.device_id,
                err.message,
                extra={"sensor_id": self.sensor_id, "address": self.bus.address},
            )
        else:
            log.debug("modbus sensor %s still failing (%d): %s", self.sensor_id, failures, err)

    def _succeeded(self, rtt_s: float, now: datetime) -> None:
        if self.consecutive_failures:
            down = time.monotonic() - (self._failing_since or time.monotonic())
            log.info(
                "modbus sensor %s at %s device %d recovered after %d failed polls (%.1f s)",
                self.sensor_id,
                self.bus.address,
                self.device_id,
                self.consecutive_failures,
                down,
                extra={"sensor_id": self.sensor_id, "address": self.bus.address},
            )
        self.state, self.consecutive_failures = "ok", 0
        self._last_ok_at, self._last_rtt, self._backoff_s = now, rtt_s, 0.0

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

    async def run(self, *, start_delay_s: float | None = None) -> None:
        """Poll on a fixed monotonic cadence until stopped or cancelled.

        Polls never overlap; ticks a poll overran are skipped and counted in
        ``status.missed_ticks``. After the breaker's threshold of failures in a row the
        poller waits a jittered, capped, growing back-off before the next attempt, and
        retries forever.

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
            if delay > 0:
                if self._wheel is not None:
                    await self._wheel.sleep_until(next_at)
                else:
                    await asyncio.sleep(delay)
                self._check_stop(task)
            try:
                readings: list[Reading] | None = await self.poll_once()
            except DeviceError:
                readings = None  # recorded in the status and logged by poll_once
            self._check_stop(task)  # an answer that raced the stop is not delivered
            if readings:
                self._deliver(readings)
            now = time.monotonic()
            next_at += interval
            if now > next_at:
                missed = math.floor((now - next_at) / interval) + 1
                next_at += missed * interval
                self._missed += missed
            backoff = self._backoff.delay(self.consecutive_failures, self._rng)
            self._backoff_s = backoff
            if backoff > 0 and now + backoff > next_at:
                # Resume on the cadence grid at the first tick after the back-off.
                next_at += math.ceil((now + backoff - next_at) / interval) * interval
