"""A poller's bookkeeping: its counters, its state, the one line logged when it starts
failing (or answering implausible values) and the one when it recovers, and the frozen
status snapshot a health endpoint shows. A device failing with its whole endpoint logs
nothing of its own: its endpoint's two lines say it (drivers.modbus._peers)."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from drivers.errors import DeviceConnectionError, DeviceError, DeviceExceptionResponse
from drivers.modbus._bus import Bus
from drivers.modbus._peers import Outage, Peers
from drivers.profiles import Register
from drivers.reading import utc_now

__all__ = ["PollLedger", "PollerState", "PollerStatus"]

# A TCP-to-RTU gateway's own answers for a device behind it: 10 gateway path unavailable,
# 11 gateway target device failed to respond. The gateway answers; its serial side not.
GATEWAY_CODES = frozenset({10, 11})

log = logging.getLogger("edge_agent.drivers.modbus")

# A sensor that fails (or answers garbage) for one poll now and then would log two lines
# per blip forever; after one reported episode, the next brief ones within this window
# are only counted, and named in the next line that is logged.
EPISODE_LOG_QUIET_S = 300.0

PollerState = Literal["starting", "ok", "failing", "backoff"]


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
            short, wrong_device, transaction (TCP: answers came under another transaction id),
            byte_count, wrong_function, noise (RTU: the line never
            fell quiet after the failed read), ...).
        bad_values: readings flagged, by reason (sentinel, out_of_range, not_finite,
            all_zero, saturated).
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


class PollLedger:
    """The mutable counters of one poller; ``snapshot`` hands out frozen copies.

    Args:
        sensor_id: the sensor's id (for log lines and the status).
        bus: the device's bus (its address names the device in log lines).
        device_id: Modbus unit id.
        threshold: failures in a row that open the breaker (state ``backoff``).
    """

    def __init__(self, sensor_id: str, bus: Bus, device_id: int, threshold: int) -> None:
        self.sensor_id, self.bus, self.device_id = sensor_id, bus, device_id
        self.threshold = threshold
        self.state: PollerState = "starting"
        self.consecutive_failures = 0
        self.polls = self.errors = self.exceptions = self.missed = 0
        self.last_ok_at: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.last_rtt: float | None = None
        self.backoff_s = 0.0
        self.by_kind: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()
        self.bad_since: float | None = None
        self.last_bad: tuple[str, ...] = ()
        self._failing_since: float | None = None
        self._prev_failed_at = 0.0  # when its previous failed poll started
        # Its host's refused_at when the current poll started (see failed).
        self._refused_seen = -math.inf
        self._prev_refused = False  # its previous failed poll's connect was refused
        self._fail_log = EpisodeLog()
        self._bad_log = EpisodeLog()
        self._bad_polls = 0  # flagged polls in a row
        # Judged with the other devices behind its endpoint (drivers.modbus._peers): a
        # failure episode is logged as its own only once it is known to fail alone.
        self._alone = True  # this failure episode is this device's own
        self.joined: Outage | None = None  # the endpoint outage it fails in

    @property
    def bad_for_s(self) -> float:
        """Seconds this sensor has answered only flagged values (0 when it has not)."""
        return 0.0 if self.bad_since is None else time.monotonic() - self.bad_since

    @property
    def with_endpoint(self) -> bool:
        """Whether this device fails with its whole endpoint, or may (no other device
        behind it has answered since): its failure is the endpoint's, not its own."""
        return self.consecutive_failures > 0 and (not self._alone or self.joined is not None)

    @property
    def undecided_for_s(self) -> float:
        """Seconds this device has failed without it being known whether alone or with its
        endpoint (0: it is known, or it does not fail). A device polled every 600 s beside
        it may answer only in 10 minutes: its fault must not wait for that (see
        agent.sensor_faults)."""
        if self.consecutive_failures == 0 or self._alone or self.joined is not None:
            return 0.0
        return time.monotonic() - (self._failing_since or time.monotonic())

    def snapshot(self) -> PollerStatus:
        """The current status (safe to keep; it never changes)."""
        return PollerStatus(
            self.sensor_id,
            self.bus.address,
            self.device_id,
            self.state,
            self.last_ok_at,
            self.last_error,
            self.last_error_at,
            self.consecutive_failures,
            self.polls,
            self.errors,
            self.exceptions,
            self.missed,
            self.last_rtt,
            self.backoff_s,
            dict(self.by_kind),
            dict(self.bad),
            round(self.bad_for_s, 3),
            self.last_bad,
        )

    def count_quality(self, flags: list[tuple[Register, str]], frozen: Sequence[str] = ()) -> None:
        """Record one poll's value flags, and its stuck ones as ``feature:stuck``
        (drivers.stuck); none: the values are plausible again."""
        if not flags and not frozen:
            if self.bad_since is not None and self._bad_log.logged:
                log.info("modbus sensor %s values plausible again", self.sensor_id)
            self.bad_since, self._bad_polls = None, 0
            return
        named = {f"{reg.feature}:{reason}" for reg, reason in flags} | set(frozen)
        for reason in {f.rpartition(":")[2] for f in named}:
            self.bad[reason] += 1
        self.last_bad = tuple(sorted(named))
        self._bad_polls += 1
        if self.bad_since is None:
            self.bad_since = time.monotonic()
        if self._bad_log.report(self._bad_polls, self.threshold):
            log.warning(
                "modbus sensor %s answers implausible values (%s); they are not analysed%s",
                self.sensor_id,
                ", ".join(self.last_bad),
                self._bad_log.hushed_note(),
                extra={"sensor_id": self.sensor_id, "address": self.bus.address},
            )

    def begin(self) -> None:
        """A poll starts: what its host has shown of itself until now is kept (failed)."""
        peers = self.bus.peers
        host = None if peers is None else peers.host_group
        self._refused_seen = -math.inf if host is None else host.refused_at

    def failed(self, err: DeviceError, started: float) -> None:
        """Record a failed poll that started at monotonic ``started``."""
        if self.joined is not None and self.joined.ended_at is not None:
            # Its endpoint's outage ended (another device answered): the failures it had
            # in it were the endpoint's. Counted as its own they opened its breaker at
            # once, and a host coming back (a burst of reconnects, some timing out once)
            # raised a sensor fault per late device right after the host's cleared.
            self.joined, self.consecutive_failures = None, 0
        failures = self.consecutive_failures + 1
        self.consecutive_failures = failures
        self.state = "backoff" if failures >= self.threshold else "failing"
        self.errors += 1
        self.exceptions += isinstance(err, DeviceExceptionResponse)
        self.last_error, self.last_error_at = str(err), utc_now()
        if failures == 1:
            self._failing_since = started
        # The host heard since the previous failed poll was sent (its late answer, a new
        # connection): it is reachable, this device fails alone (_peers, host level).
        heard = here = self.bus.heard_at >= (self._prev_failed_at if failures > 1 else started)
        peers = self.bus.peers
        host = None if peers is None else peers.host_group
        refused = self.bus.refused_at >= started
        if host is not None and refused:
            host.refused_at = max(host.refused_at, started)  # the host answered: a reset
        elif (
            host is not None
            and failures > 1
            and not self._prev_refused
            and self._refused_seen > self._prev_failed_at
        ):
            # Failed twice, not refused, although its host refused another port between
            # the two polls' starts: the host is on the network, this port is filtered or
            # hung; it fails alone. (A port refused beside it was one host fault, 'no
            # device behind it answers'.) Not a refusal after this poll started (a host
            # booting refuses while a connect sent before still times out), nor refusals
            # alone (every port refused is its Modbus service down: one host fault).
            heard = True
        self._prev_failed_at, self._prev_refused = started, refused
        if peers is not None and self.joined is None:
            peers = peers.judge  # its endpoint, its host, or the gateway's TCP network
        elif peers is not None:
            # The group whose outage it fails in (the endpoint's when none goes on).
            peers = next((g for g in peers.groups if self.joined is g.outage), peers)
        if peers is not None:
            # Also an outage it joined when its endpoint had more devices (a reload removed
            # some since): told whether it still goes on, or this one fails alone now.
            # A port's own life only on its level: its host answering on another port
            # does not make a silent port's devices fail alone.
            self._judged(err, failures, peers, heard if peers.level == "host" else here, started)
            return
        self._alone = True  # too few devices behind its endpoint (left) to judge together
        if self._fail_log.report(failures, self.threshold):
            self._log_failing(err)
        else:
            log.debug("modbus sensor %s still failing (%d): %s", self.sensor_id, failures, err)

    def _judged(
        self, err: DeviceError, failures: int, peers: Peers, heard: bool, started: float
    ) -> None:
        """A failure of a device whose endpoint has peers: its own line only once it
        fails alone; within an outage of the endpoint only counted there."""
        if failures == 1:
            self._alone, self._fail_log.logged = False, False
        if heard and peers.hears and self.joined is peers.outage:
            self.joined = None  # its host showed life: no host outage (peers.failed ends it)
        if self.joined is not None:
            if self.joined is peers.outage:
                if (gateway := _gateway_answers(err)) is not None:
                    peers.outage.gateway_answers = gateway
                peers.still_silent(started)  # folded into the network's: its own now?
                return  # the endpoint's outage goes on: its lines say it
            self.joined, self._alone = None, True  # the endpoint answers, this one not
            self._report_alone(err, " (still failing since its endpoint answered again)")
        elif self._alone:
            if self._fail_log.report(failures, self.threshold):
                self._log_failing(err)
        else:
            since = self._failing_since or time.monotonic()
            outage = peers.failed(
                self.sensor_id,
                failures,
                since,
                err.message,
                lambda: self._report_alone(err),
                gateway_answers=_gateway_answers(err),
                heard=heard,
            )
            if outage is not None:
                self.joined = outage

    def _report_alone(self, err: DeviceError, note: str = "") -> None:
        """It is now known that this device fails alone: its line, as it would have been
        logged at its first failure (or at the breaker's threshold, when hushed)."""
        self._alone = True
        logged = self._fail_log.report(1, self.threshold)
        if not logged and self.consecutive_failures >= self.threshold:
            logged = self._fail_log.report(self.threshold, self.threshold)
        if logged:
            self._log_failing(err, note)

    def _log_failing(self, err: DeviceError, note: str = "") -> None:
        log.warning(
            "modbus sensor %s at %s device %d failing%s: %s%s",
            self.sensor_id,
            self.bus.address,
            self.device_id,
            note,
            err.message,
            self._fail_log.hushed_note(),
            extra={"sensor_id": self.sensor_id, "address": self.bus.address},
        )

    def succeeded(self, rtt_s: float, now: datetime) -> None:
        """Record a good poll of ``rtt_s`` seconds, read at UTC ``now``."""
        if self.bus.peers is not None:
            for peers in self.bus.peers.groups:
                peers.answered(self.sensor_id)
        if self.joined is not None:
            # Its endpoint's outage: the line that ended it names the devices.
            self.joined, self._fail_log.logged = None, False
        if self.consecutive_failures and self._fail_log.logged:
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
        self.last_ok_at, self.last_rtt, self.backoff_s = now, rtt_s, 0.0


class EpisodeLog:
    """Whether an episode (failing polls, or implausible values, in a row) is logged.

    The first episode is; within EPISODE_LOG_QUIET_S of the last logged one, a brief one
    is only counted, and logged after all if it lasts ``threshold`` polls (the breaker
    opens, a fault alert is near). ``logged`` says whether its end deserves a line too.
    """

    __slots__ = ("_quiet_until", "hushed", "logged")

    def __init__(self) -> None:
        self.hushed = 0  # episodes not logged since the last line
        self.logged = False
        self._quiet_until = -1.0

    def report(self, in_a_row: int, threshold: int) -> bool:
        """Whether to log this poll of an episode that has lasted ``in_a_row`` polls."""
        now = time.monotonic()
        if in_a_row == 1:
            self.logged = now >= self._quiet_until
            if not self.logged:
                self.hushed += 1
                return False
        elif self.logged or in_a_row != threshold:
            return False
        else:
            self.hushed -= 1  # counted when it began; logged now
            self.logged = True
        self._quiet_until = now + EPISODE_LOG_QUIET_S
        return True

    def hushed_note(self) -> str:
        """What the line adds about episodes not logged, and resets their count."""
        n, self.hushed = self.hushed, 0
        if not n:
            return ""
        return f" ({n} brief episodes since the last report were counted, not logged)"


def _gateway_answers(err: DeviceError) -> bool | None:
    """True: a gateway's own answer for a device behind it (the gateway is reachable);
    False: the connection failed (it is not); None: it tells nothing (a timeout)."""
    if isinstance(err, DeviceExceptionResponse):
        return True if err.code in GATEWAY_CODES else None
    return False if isinstance(err, DeviceConnectionError) else None
