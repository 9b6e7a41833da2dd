"""One MQTT sensor: decodes the messages routed to it, counts what it drops, knows its age.

Whatever arrives, ``handle`` never raises: a message is decoded into Readings for the
sink, or dropped and counted by reason (logged once per reason, then at most every
LOG_EVERY_S). Implausible values (sentinels, out of range, NaN) travel as flagged
readings, which the monitor never analyses, and count in ``bad_values`` as for Modbus.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from drivers.errors import PayloadError
from drivers.payloads import Decoded, Decoder, Payload, to_readings
from drivers.reading import Reading, utc_now
from drivers.stuck import StuckRule, StuckWatch

log = logging.getLogger("edge_agent.drivers.mqtt")

SensorState = Literal["starting", "ok", "stale"]
LOG_EVERY_S = 600.0  # a reason logged for a sensor is logged again at most this often
UNEXPECTED = "decoder_error"  # a decoder bug: counted, logged, never fatal
# A reading not newer than the last one analysed for its channel: a step back in time would
# corrupt the trend (over an hour back it discards the history), a replay counts twice.
DUPLICATE = "duplicate"  # the same time and bytes again (a QoS 1 redelivery)
OUT_OF_ORDER = "out_of_order"
# A message without its own time has only its packet id and bytes: one the broker flags DUP
# (sent again after its PUBACK was lost with the connection) whose id and bytes match one
# of the last RECENT_MIDS analysed is that message again. Only the broker's in-flight
# messages are sent again (mosquitto's max_inflight_messages: 20 by default).
RECENT_MIDS = 64
# A retained message is the broker's copy of one published earlier, replayed at every
# subscription (in 3.1.1 before the queued messages of a persistent session): its reading
# was live when published, and is not analysed again as if new.
RETAINED = "retained"
# Readings kept but whose time says something about the sensor (counted, logged once per
# LOG_EVERY_S): measured longer than stale_after_s before they arrived, beyond the sensor's
# usual lag (a buffered backlog flushed after a reconnect, a clock stepped back): history,
# not a sign of life.
LATE = "late"
_TICK = timedelta(microseconds=1)  # the least step forward in time of a reading
# Stamped ahead of this gateway by more than CLOCK_AHEAD_S (and less than the decoders'
# FUTURE_LIMIT, beyond which the message is dropped): a sensor clock running ahead. Kept
# with its own time, it would make every correctly stamped reading after it "out of order"
# (dropped) until real time caught up with it; it is analysed at its arrival time instead.
CLOCK_AHEAD = "clock_ahead"
CLOCK_AHEAD_S = 2.0  # NTP-set clocks agree far better; a reading is never measured later


class MqttSensor:
    """A sensor fed by MQTT messages (see the module docstring).

    Args:
        sensor_id: the sensor's configured id.
        decoder: the payload decoder.
        channels: the channels to deliver (others in the message are ignored).
        stale_after_s: seconds without a usable message after which the state is "stale".
        sink: called with each Reading (on the event loop; keep it short).
        broker: the broker id, for status and logs.
        topic: the subscription's topic filter.
        key: the key that routes shared-subscription messages here (None: all of them).
        stuck: when a repeated value is frozen (drivers.stuck); None: not judged.
    """

    def __init__(
        self,
        sensor_id: str,
        *,
        decoder: Decoder,
        channels: Sequence[str],
        stale_after_s: float,
        sink: Callable[[Reading], None],
        broker: str,
        topic: str,
        key: str | None = None,
        stuck: StuckRule | None = None,
    ) -> None:
        self.sensor_id = sensor_id
        self.decoder = decoder
        self.channels = tuple(channels)
        self.stale_after_s = stale_after_s
        self.broker = broker
        self.topic = topic
        self.key = key
        self._sink = sink
        self.stuck = StuckWatch(stuck) if stuck is not None else None
        self._started = time.monotonic()
        self._last_msg: float | None = None
        # The sensor's usual lag, arrival minus measurement (see _alive): 0 until learned.
        self._lag_floor, self._lag_at = 0.0, self._started
        self._last_ok_at: datetime | None = None
        self._last_error: str | None = None
        self.messages_total = 0
        self.dropped: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()
        self._bad_since: float | None = None
        self._last_bad: tuple[str, ...] = ()
        self._logged: dict[str, float] = {}
        self._sink_errors = 0
        self._latest: dict[str, tuple[datetime, int]] = {}  # channel -> (time, hash of bytes)
        self._recent: deque[tuple[int, int]] = deque(maxlen=RECENT_MIDS)  # (mid, digest)
        self.timing: Counter[str] = Counter()  # LATE...: readings kept, their time noted

    # -- what the health endpoint and the sensor-fault tracker read ----------------------
    @property
    def state(self) -> SensorState:
        """starting (nothing yet, not for long), ok, or stale (silent too long)."""
        now = time.monotonic()
        if self._last_msg is None:
            return "stale" if now - self._started >= self.stale_after_s else "starting"
        return "stale" if now - self._last_msg >= self.stale_after_s else "ok"

    @property
    def silent_for_s(self) -> float:
        """Seconds since the newest measurement a usable message carried (or since start):
        a reading measured an hour ago, arriving now, leaves the sensor an hour silent."""
        return time.monotonic() - (self._last_msg or self._started)

    @property
    def last_ok_at(self) -> datetime | None:
        return self._last_ok_at

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def consecutive_failures(self) -> int:
        return 0  # a subscription has no polls to fail; silence is "stale"

    @property
    def bad_for_s(self) -> float:
        return 0.0 if self._bad_since is None else time.monotonic() - self._bad_since

    @property
    def last_bad(self) -> tuple[str, ...]:
        return self._last_bad

    @property
    def values_undecided(self) -> bool:
        """Its values have not moved since the sensor began: not yet known to be live."""
        return self.stuck is not None and self.stuck.undecided

    def status(self) -> dict[str, Any]:
        """A snapshot for /healthz (the same keys as a Modbus poller's, plus MQTT ones)."""
        last = self._last_ok_at
        return {
            "id": self.sensor_id,
            "transport": "mqtt",
            "bus": self.broker,
            "topic": self.topic,
            "state": self.state,
            "last_ok_age_s": (utc_now() - last).total_seconds() if last else None,
            "last_message_age_s": round(self.silent_for_s, 3) if self._last_msg else None,
            "stale_after_s": self.stale_after_s,
            "consecutive_failures": 0,
            "messages_total": self.messages_total,
            "dropped": dict(self.dropped),
            "bad_values": dict(self.bad),
            "timing": dict(self.timing),
            "bad_for_s": round(self.bad_for_s, 3),
            "last_bad": list(self._last_bad),
            "stuck": list(self.stuck.stuck_now) if self.stuck is not None else [],
            "stuck_episodes": self.stuck.episodes if self.stuck is not None else 0,
            "last_error": self._last_error,
        }

    # -- the message path -------------------------------------------------------------
    def handle(
        self,
        payload: Payload,
        received_at: datetime,
        *,
        retained: bool = False,
        mid: int | None = None,
        dup: bool = False,
    ) -> None:
        """Decode one message and hand its readings to the sink, or count why not.

        ``retained``: the broker replays a stored message (see RETAINED): counted, dropped.
        ``mid``: a QoS 1 message's packet id; ``dup``: the broker flagged it as sent again
        (see RECENT_MIDS).
        """
        self.messages_total += 1
        if retained:
            self.drop(RETAINED, "the broker's stored copy of an earlier message")
            return
        if dup and mid is not None and (mid, hash(payload.raw)) in self._recent:
            self.drop(DUPLICATE, f"message {mid} sent again by the broker (DUP)")
            return
        try:
            decoded = self.decoder.decode(payload, received_at)
        except PayloadError as exc:
            self.drop(exc.reason, exc.detail)
            return
        except Exception as exc:  # a decoder bug must not end the link
            self.drop(UNEXPECTED, f"{type(exc).__name__}: {exc}")
            return
        if decoded.timestamp is not None:
            self._clock_ahead(decoded, received_at)
        # Durations run on the monotonic clock (the decode queue's wait, ms, is left out).
        readings = to_readings(
            self.sensor_id, self.channels, decoded, received_at, received_mono_s=time.monotonic()
        )
        if not readings:
            self.drop("no_channel", f"none of the channels {', '.join(self.channels)}")
            return
        if decoded.timestamp is not None:
            readings = self._newer(readings, hash(payload.raw))
            if not readings:
                return
        self._alive(readings[0].timestamp, received_at)
        if mid is not None:
            self._recent.append((mid, hash(payload.raw)))
        if self.stuck is not None:
            readings, _ = self.stuck.check(readings)
        self._quality([f for r in readings for f in r.flags])
        for reading in readings:
            try:
                self._sink(reading)
            except Exception:  # the sink is the caller's code
                self._sink_errors += 1
                if self._sink_errors == 1:
                    log.exception("mqtt sensor %s: reading sink failed", self.sensor_id)

    def _clock_ahead(self, decoded: Decoded, received_at: datetime) -> None:
        """A reading stamped ahead of its arrival (see CLOCK_AHEAD) takes the arrival time."""
        assert decoded.timestamp is not None
        ahead = (decoded.timestamp - received_at).total_seconds()
        if ahead <= CLOCK_AHEAD_S:
            return
        self.timing[CLOCK_AHEAD] += 1
        stamp = decoded.timestamp.isoformat()
        # Just after the newest reading analysed, if that is later than the arrival (an
        # earlier reading only just under the threshold kept its stamp): re-stamped to its
        # arrival, this one would be dropped as out of order. Never later than its own stamp.
        newest = max((t for t, _ in self._latest.values()), default=received_at)
        decoded.timestamp = min(decoded.timestamp, max(received_at, newest + _TICK))
        self._log_timing(
            CLOCK_AHEAD,
            f"a reading stamped {stamp}, {ahead:.0f} s ahead of this gateway (the sensor's "
            "clock runs ahead): analysed at its arrival time",
        )

    def _alive(self, measured: datetime, received_at: datetime) -> None:
        """Staleness follows the newest measurement, not the arrival: a backlog of
        hours-old readings (analysed as the history it is) must not make a dead sensor
        look alive.

        A clock that is steadily behind is learned, not held against the sensor: its lag
        floor (the least lag seen) may rise by at most the time passed between messages,
        capped at stale_after_s per message. A live sensor whose clock lags L looks stale
        only until the floor has caught up (about L after start), while a backlog flushed
        within seconds stands out by its whole age.
        """
        lag = max(0.0, (received_at - measured).total_seconds())
        now = time.monotonic()
        rise = min(now - self._lag_at, self.stale_after_s)
        self._lag_floor = min(lag, self._lag_floor + rise)
        self._lag_at = now
        age = lag - self._lag_floor
        seen = now - age
        if self._last_msg is None or seen > self._last_msg:
            self._last_msg = seen
            self._last_ok_at = measured
        if age < self.stale_after_s:
            return
        self.timing[LATE] += 1
        detail = (
            f"readings arrive {lag:.0f} s after they were measured (a buffered backlog, or "
            "the sensor's clock stepped back): kept as history, not taken as a sign of life"
        )
        if self.state == "stale":
            self._last_error = f"{LATE}: {detail}"
        self._log_timing(LATE, detail)

    def _log_timing(self, kind: str, detail: str) -> None:
        """Log a timing note once, then at most every LOG_EVERY_S."""
        now = time.monotonic()
        if now - self._logged.get(kind, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged[kind] = now
            log.warning(
                "mqtt sensor %s (%s): %s; %d such readings so far, counted in edge_mqtt_timing",
                self.sensor_id, kind, detail, self.timing[kind],
                extra={"sensor_id": self.sensor_id},
            )  # fmt: skip

    def carry_from(self, old: MqttSensor) -> None:
        """Take over what a reload's predecessor analysed last: a QoS 1 message the broker
        delivers again to the new link must not count twice."""
        self._latest.update(old._latest)
        self._recent.extend(old._recent)
        self._lag_floor, self._lag_at = old._lag_floor, old._lag_at

    def _newer(self, readings: list[Reading], digest: int) -> list[Reading]:
        """The readings newer than the last analysed on their channel (the rest counted)."""
        fresh = []
        for r in readings:
            last = self._latest.get(r.channel)
            if (
                last is None
                or r.timestamp > last[0]
                or (r.timestamp == last[0] and digest != last[1])
            ):
                fresh.append(r)
        if not fresh:
            at, latest = readings[0].timestamp, self._latest[readings[0].channel][0]
            if at == latest:
                self.drop(DUPLICATE, f"already analysed the reading of {at.isoformat()}")
            else:
                self.drop(OUT_OF_ORDER, f"{at.isoformat()} is before {latest.isoformat()}")
            return fresh
        for r in fresh:
            self._latest[r.channel] = (r.timestamp, digest)
        return fresh

    def drop(self, reason: str, detail: str) -> None:
        """Count a dropped message; log the reason once, then at most every LOG_EVERY_S."""
        self.dropped[reason] += 1
        self._last_error = f"{reason}: {detail}"
        now = time.monotonic()
        if now - self._logged.get(reason, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged[reason] = now
            log.warning(
                "mqtt sensor %s: message dropped (%s: %s); %d dropped for this reason so far, "
                "counted in edge_mqtt_dropped",
                self.sensor_id,
                reason,
                detail[:200],
                self.dropped[reason],
                extra={"sensor_id": self.sensor_id},
            )

    def refused(self, error: str | None) -> None:
        """The broker refused the subscription: the reason this sensor is silent (None:
        granted since)."""
        self._last_error = error

    def _quality(self, flags: list[str]) -> None:
        if not flags:
            if self._bad_since is not None:
                log.debug("mqtt sensor %s values plausible again", self.sensor_id)
            self._bad_since = None
            return
        for reason in {f.rpartition(":")[2] for f in flags}:
            self.bad[reason] += 1
        self._last_bad = tuple(sorted(set(flags)))
        if self._bad_since is None:
            self._bad_since = time.monotonic()
        tag = "values:" + ",".join(self._last_bad)
        now = time.monotonic()
        if now - self._logged.get(tag, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged[tag] = now
            log.warning(
                "mqtt sensor %s sends implausible values (%s); they are not analysed",
                self.sensor_id,
                ", ".join(self._last_bad),
                extra={"sensor_id": self.sensor_id},
            )
