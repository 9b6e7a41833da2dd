"""One poller per Modbus device: fixed cadence, time budget, circuit breaker, status.

The runtime creates one ``ModbusTcpPoller`` per configured sensor and runs ``run()`` as
its own task; each poller owns its own TCP connection, so a dead or slow device can only
cost its own time budget, never another device's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from drivers.errors import (
    DeviceError,
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceTimeout,
)
from drivers.modbus._client import ModbusTcpLink
from drivers.modbus._plan import ReadBlock, ReadPlan, plan_profile
from drivers.profiles import ALL_CHANNELS, Profile, Register, load_profile
from drivers.reading import Reading, utc_now

log = logging.getLogger("edge_agent.drivers.modbus")

PollerState = Literal["starting", "ok", "failing", "backoff"]
BUSY = 6  # Modbus "server device busy": the only answer worth an immediate retry
BUSY_RETRY_DELAY_S = 0.05


@dataclass(frozen=True, slots=True)
class PollerStatus:
    """What a health endpoint shows for one device (a snapshot; never mutated).

    Attributes:
        sensor_id: the sensor's id.
        address: ``host:port``.
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
        last_rtt_s: duration of the last good poll (connect excluded), seconds.
        backoff_s: the current back-off delay (0 when the breaker is closed).
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


@dataclass(frozen=True, slots=True)
class Backoff:
    """Circuit-breaker delays: none below ``threshold`` failures in a row, then doubling
    from ``base_s`` up to ``max_s``, each drawn uniformly from [d/2, d] (equal jitter) so
    devices that failed together do not retry together.
    """

    base_s: float
    max_s: float = 30.0
    threshold: int = 3

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after ``failures`` consecutive failures."""
        if failures < self.threshold:
            return 0.0
        exponent = min(failures - self.threshold, 30)  # bounded: 2**30 is plenty
        cap = min(self.max_s, self.base_s * 2.0**exponent)
        return rng.uniform(cap / 2.0, cap)


def readings_from(
    sensor_id: str,
    channels: Sequence[str],
    values: Sequence[tuple[Register, float]],
    timestamp: datetime,
) -> list[Reading]:
    """One Reading per channel: that channel's features plus the shared ones."""
    out = []
    for channel in channels:
        features = {
            reg.feature: value
            for reg, value in values
            if reg.feature is not None and reg.channel in (channel, ALL_CHANNELS)
        }
        out.append(Reading(sensor_id, channel, timestamp, features, transport="modbus"))
    return out


class ModbusTcpPoller:
    """Polls one Modbus TCP device on a fixed cadence and hands Readings to ``sink``.

    Args:
        sensor_id: the sensor's configured id.
        host: device or gateway host.
        port: TCP port.
        device_id: Modbus unit id.
        profile: register profile (name or loaded Profile).
        channels: channels to read (default: all of the profile's).
        timeout_s: per-request answer timeout (and connect timeout).
        poll_interval_s: cadence.
        sink: called with each Reading (synchronously, on the event loop; keep it short).
        backoff_max_s: cap of the circuit breaker's back-off.
        failure_threshold: failures in a row that open the breaker.
        rng: random source for jitter (tests pass a seeded one).
    """

    def __init__(
        self,
        sensor_id: str,
        *,
        host: str,
        port: int = 502,
        device_id: int = 1,
        profile: str | Profile = "banner-qm30vt2",
        channels: Sequence[str] | None = None,
        timeout_s: float = 0.5,
        poll_interval_s: float = 1.0,
        sink: Callable[[Reading], None],
        backoff_max_s: float = 30.0,
        failure_threshold: int = 3,
        rng: random.Random | None = None,
    ) -> None:
        if timeout_s <= 0 or poll_interval_s <= 0:
            raise ValueError("timeout_s and poll_interval_s must be positive")
        self.sensor_id = sensor_id
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        self.plan: ReadPlan = plan_profile(self.profile, channels)
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self._sink = sink
        self._link = ModbusTcpLink(
            sensor_id, host=host, port=port, device_id=device_id, timeout_s=timeout_s
        )
        self._backoff = Backoff(poll_interval_s, backoff_max_s, failure_threshold)
        self._rng = rng or random.Random()
        # Connect plus one answer per block, each bounded by timeout_s: the whole poll's
        # budget, so a device cannot hold its task longer than this, whatever pymodbus does.
        self.budget_s = timeout_s * (len(self.plan.blocks) + 1) + 0.05
        self._status = PollerStatus(sensor_id, self._link.address, device_id)
        self._failing_since: float | None = None
        self._sink_errors = 0

    @property
    def status(self) -> PollerStatus:
        """The current status snapshot (safe to keep; it never changes)."""
        return self._status

    async def poll_once(self) -> list[Reading]:
        """Read every block once and return one Reading per channel.

        Raises:
            DeviceError: the poll failed (timeout, exception answer, protocol, connection).
        """
        started = time.monotonic()
        self._status = replace(self._status, polls_total=self._status.polls_total + 1)
        try:
            async with asyncio.timeout(self.budget_s):
                if not self._link.connected:
                    await self._link.connect()
                sent = time.monotonic()
                timestamp = utc_now()  # the moment the values were asked for
                values: list[tuple[Register, float]] = []
                for block in self.plan.blocks:
                    values.extend(block.values(await self._read_block(block)))
        except DeviceError as exc:
            self._failed(exc, started)
            raise
        except Exception as exc:
            # A timeout is the poll budget running out; anything else is a library surprise,
            # which must not end this poller (and with it the agent): one more failed poll.
            err = (
                self._error(
                    DeviceTimeout, f"no answer within the {self.budget_s:.2f} s poll budget"
                )
                if isinstance(exc, TimeoutError)
                else self._error(DeviceProtocolError, f"unexpected {type(exc).__name__}: {exc}")
            )
            self._failed(err, started)
            raise err from exc
        self._succeeded(time.monotonic() - sent)
        return readings_from(self.sensor_id, self.plan.channels, values, timestamp)

    def _error(self, cls: type[DeviceError], message: str) -> DeviceError:
        return cls(
            message,
            sensor_id=self.sensor_id,
            address=self._link.address,
            device_id=self._status.device_id,
        )

    async def _read_block(self, block: ReadBlock) -> list[int]:
        fc = self.plan.function_code
        try:
            return await self._link.read(fc, block.address, block.count)
        except DeviceExceptionResponse as exc:
            if exc.code != BUSY:
                raise
            await asyncio.sleep(BUSY_RETRY_DELAY_S)  # once; the poll budget bounds it too
            return await self._link.read(fc, block.address, block.count)

    def _failed(self, err: DeviceError, started: float) -> None:
        if not isinstance(err, DeviceExceptionResponse):
            # A timed-out or garbled exchange may still deliver late bytes: drop the
            # connection so they can never be read as the answer to a later request.
            self._link.close()
        st = self._status
        failures = st.consecutive_failures + 1
        state: PollerState = "backoff" if failures >= self._backoff.threshold else "failing"
        self._status = replace(
            st,
            state=state,
            last_error=str(err),
            last_error_at=utc_now(),
            consecutive_failures=failures,
            errors_total=st.errors_total + 1,
            exception_responses=st.exception_responses + isinstance(err, DeviceExceptionResponse),
        )
        if failures == 1:
            self._failing_since = started
            log.warning(
                "modbus sensor %s at %s device %d failing: %s",
                self.sensor_id,
                self._link.address,
                st.device_id,
                err.message,
                extra={"sensor_id": self.sensor_id, "address": self._link.address},
            )
        else:
            log.debug("modbus sensor %s still failing (%d): %s", self.sensor_id, failures, err)

    def _succeeded(self, rtt_s: float) -> None:
        st = self._status
        if st.consecutive_failures:
            down = time.monotonic() - (self._failing_since or time.monotonic())
            log.info(
                "modbus sensor %s at %s device %d recovered after %d failed polls (%.1f s)",
                self.sensor_id,
                self._link.address,
                st.device_id,
                st.consecutive_failures,
                down,
                extra={"sensor_id": self.sensor_id, "address": self._link.address},
            )
        self._status = replace(
            st,
            state="ok",
            last_ok_at=utc_now(),
            consecutive_failures=0,
            last_rtt_s=rtt_s,
            backoff_s=0.0,
        )

    def _deliver(self, readings: list[Reading]) -> None:
        for reading in readings:
            try:
                self._sink(reading)
            except Exception:
                # The sink is the caller's code; its bug must not stop the polling.
                self._sink_errors += 1
                if self._sink_errors == 1:
                    log.exception("modbus sensor %s: reading sink failed", self.sensor_id)

    async def run(self, *, start_delay_s: float | None = None) -> None:
        """Poll forever on a fixed monotonic cadence until cancelled.

        Polls never overlap; ticks a poll overran are skipped and counted in
        ``status.missed_ticks``. After ``failure_threshold`` failures in a row the poller
        waits a jittered, capped, growing back-off before the next attempt, and retries
        forever.

        Args:
            start_delay_s: delay before the first poll; default a random fraction of the
                interval (at most 1 s), so many pollers do not all fire at once.
        """
        interval = self.poll_interval_s
        if start_delay_s is None:
            start_delay_s = self._rng.uniform(0.0, min(interval, 1.0))
        next_at = time.monotonic() + start_delay_s
        try:
            while True:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                # A failure is already recorded in status and logged by poll_once.
                with contextlib.suppress(DeviceError):
                    self._deliver(await self.poll_once())
                now = time.monotonic()
                next_at += interval
                if now > next_at:
                    missed = math.floor((now - next_at) / interval) + 1
                    next_at += missed * interval
                    self._status = replace(
                        self._status, missed_ticks=self._status.missed_ticks + missed
                    )
                backoff = self._backoff.delay(self._status.consecutive_failures, self._rng)
                self._status = replace(self._status, backoff_s=backoff)
                if backoff > 0 and now + backoff > next_at:
                    # Resume on the cadence grid at the first tick after the back-off.
                    next_at += math.ceil((now + backoff - next_at) / interval) * interval
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connection (the next poll reconnects)."""
        self._link.close()
