"""Messages the broker itself dropped, from its own $SYS counter.

A subscriber that drains slower than sensors publish (or a sensor flooding the broker)
fills the broker's per-client window and queue (mosquitto: max_inflight_messages,
max_queued_messages, max_queued_bytes); the broker then drops messages, and nothing
reaches us to count. mosquitto publishes the total it dropped, over all its clients, on
``$SYS/broker/publish/messages/dropped`` (retained, QoS 0, every ``sys_interval`` s while
it changes): its increase while we are connected is the best the broker tells (it has no
per-client counter). A broker without that topic (sys_interval 0, EMQX, HiveMQ, an ACL
that refuses $SYS) leaves the count unknown (None), never an error.

The counter is not a reading: the link hands its messages here before its decode queue,
so they are neither routed to sensors nor dropped by a full queue (when they matter most).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("edge_agent.drivers.mqtt")

DEFAULT_TOPIC = "$SYS/broker/publish/messages/dropped"  # mosquitto's
MAX_VALUE_BYTES = 24  # a decimal counter up to 2**64 is 20 digits; anything longer is not one
MAX_VALUE = 2**63
# A new warning once drops resume after this long without any: one per episode, not one
# per $SYS update (every 10 s by default) while a flood lasts.
EPISODE_QUIET_S = 600.0

OFF = "off"  # not configured
WAITING = "waiting"  # subscribed; no value yet (a broker without the topic stays here)
WATCHING = "watching"  # a value is known: increases are counted
REFUSED = "refused"  # the broker refused the subscription (or dropped us for it)


def parse_counter(payload: object) -> int | None:
    """A non-negative decimal counter from a $SYS payload, or None (bounded: short
    payloads only, ASCII digits only, below 2**63)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "replace")
    if not isinstance(payload, bytes | bytearray) or len(payload) > MAX_VALUE_BYTES:
        return None
    text = bytes(payload).strip()
    if not text or not text.isdigit():  # bytes.isdigit: ASCII 0-9 only
        return None
    value = int(text)
    return value if value < MAX_VALUE else None


class BrokerDrops:
    """The broker's dropped-messages counter seen from one link.

    Args:
        broker: the broker id (for logs).
        address: the broker's address (for logs).
        topic: the $SYS topic to watch (None: off).
        busiest: names the sensor that sent us the most messages lately (a sensor
            flooding the broker is the likeliest cause of its drops), or None.
    """

    def __init__(
        self,
        broker: str,
        address: str,
        topic: str | None,
        busiest: Callable[[], str | None] | None = None,
    ) -> None:
        self.broker = broker
        self._busiest = busiest
        self.address = address
        self.topic = topic
        self.state = OFF if topic is None else WAITING
        self.dropped_total: int | None = None  # None: unknown
        self.bad_values = 0
        self._last: int | None = None  # the broker's counter as last seen this connection
        self._last_increase: float | None = None  # monotonic
        self._logged_refused = False
        self._lost = 0  # connections lost in a row while subscribing to the counter
        self._logged_bad = False

    @property
    def wanted(self) -> bool:
        """Subscribe at this connection (not off, not refused before)."""
        return self.topic is not None and self.state != REFUSED

    def connected(self) -> None:
        """A new connection: the next value is a new baseline (drops while we were away,
        or before a broker restart, are not ours to count)."""
        self._last = None
        if self.state == WATCHING:
            self.state = WAITING

    def granted(self) -> None:
        self._lost = 0

    def lost(self, reason: str) -> None:
        """The connection ended while subscribing: a broker that disconnects a client for
        a $SYS subscription it forbids would otherwise cost the sensors every connection;
        twice in a row, the counter is not asked for again on this link."""
        self._lost += 1
        if self._lost >= 2:
            self.refused(f"connection lost at its subscription twice: {reason}")

    def refused(self, reason: str) -> None:
        """The broker will not let us see the counter: say so once, then go on without."""
        self.state = REFUSED
        if not self._logged_refused:
            self._logged_refused = True
            log.info(
                "mqtt broker %s at %s: no subscription to %s (%s): messages the broker "
                "drops stay unknown (a locked-down broker or one without mosquitto's $SYS "
                "tree; set sys_dropped_topic: null to not ask)",
                self.broker,
                self.address,
                self.topic,
                reason,
            )

    def observe(self, payload: object) -> None:
        """A message on the watched topic (paho's callback: cheap, never raises)."""
        value = parse_counter(payload)
        if value is None:
            self.bad_values += 1
            if not self._logged_bad:
                self._logged_bad = True
                log.warning(
                    "mqtt broker %s: %s carried %r, not a counter; ignored (logged once)",
                    self.broker,
                    self.topic,
                    payload[:40] if isinstance(payload, bytes | bytearray | str) else type(payload),
                )
            return
        last, self._last = self._last, value
        self.state = WATCHING
        if self.dropped_total is None:
            self.dropped_total = 0
        if last is None or value <= last:
            return  # a baseline, or a counter that went back (reset): nothing to count
        increase = value - last
        self.dropped_total += increase
        now = time.monotonic()
        new_episode = self._last_increase is None or now - self._last_increase > EPISODE_QUIET_S
        self._last_increase = now
        if new_episode:
            busiest = self._busiest() if self._busiest is not None else None
            log.warning(
                "mqtt broker %s at %s dropped %d messages (its %s rose from %d to %d): "
                "broker-wide, possibly ours: our client drains too slowly "
                "(edge_mqtt_queue_depth) or a sensor floods the broker, past its per-client "
                "limits (mosquitto: max_inflight_messages, max_queued_messages)%s; counted "
                "in edge_mqtt_broker_dropped, warned again after %.0f s without drops",
                self.broker,
                self.address,
                increase,
                self.topic,
                last,
                value,
                f"; {busiest}" if busiest else "",
                EPISODE_QUIET_S,
            )

    def status(self) -> dict[str, Any]:
        return {
            "broker_dropped_total": self.dropped_total,
            "broker_drops": self.state,
            "broker_drops_topic": self.topic,
        }
