"""Records too large for the MQTT broker: found and dead-lettered, never resent forever.

A broker disconnects a client that sends a packet over its limit; resending that record
forever would silence the uplink, so it must not block the ones behind it:
- a packet over the Maximum Packet Size the broker announced in CONNACK is never sent:
  dead-lettered at once, "MQTT packet too large: ...";
- a broker that enforces a limit it does not announce drops the connection right after the
  publish, without a PUBACK, and takes a new one at once. The first unacknowledged item
  larger than any the broker acknowledged is then sent last (nothing after it); when that
  happens right after it DROPS_TO_REFUSE times in a row, it is dead-lettered the same way.
  An outage never counts: a drop counts only when the broker takes us back at once and
  still has our session (it was neither down nor restarted; so this needs a session
  expiry above 0). Anything else clears the count: a drop after which it refuses or has
  lost the session, a failed connect, a success, a timeout, a DISCONNECT naming a
  session-wide reason (server shutting down, session taken over, quota, not authorized).

MQTT 5 does not allow 0x95 in a PUBACK, yet mosquitto sends it (message_size_limit): paho
takes it for a protocol error and closes the connection, a drop the rule above handles.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
from paho.mqtt.properties import Properties

from agent.store import StoredItem
from agent.uplink.errors import UplinkRejected

log = logging.getLogger(__name__)

PACKET_TOO_LARGE = 0x95
DROPS_TO_REFUSE = 3  # drops right after one record, in a row, that make it "too large"
TOO_LARGE = "MQTT packet too large"  # how its dead letters' reasons start


class Dropped(aiomqtt.MqttError):
    """The connection ended before the PUBACK.

    Attributes:
        reason: why, as paho reports it (None: unknown).
        by_broker: the reason is the broker's DISCONNECT; False when the connection was
            lost without one (closed, reset, keepalive timeout) or paho closed it (a
            protocol error: paho takes mosquitto's PUBACK 0x95, "packet too large", which
            MQTT 5 does not allow in a PUBACK, for one).
    """

    def __init__(self, reason: Any = None, *, by_broker: bool = False) -> None:
        code = getattr(reason, "value", reason)
        said = f"{code:#04x} {reason}" if isinstance(code, int) else "closed"
        super().__init__(
            f"connection ended before the PUBACK ({'DISCONNECT ' if by_broker else ''}{said})"
        )
        self.reason = reason
        self.by_broker = by_broker

    @property
    def maybe_too_large(self) -> bool:
        """It may be the publish's doing: the broker said "packet too large", or the
        connection ended without a word from it."""
        return not self.by_broker or getattr(self.reason, "value", None) == PACKET_TOO_LARGE


class PacketLimits:
    """One uplink's view of its broker's packet size limit, announced or inferred.

    Args:
        uplink: the uplink's name (errors, logs).
        target: the broker, without secrets (errors).
    """

    def __init__(self, *, uplink: str, target: str) -> None:
        self.uplink = uplink
        self.target = target
        self.largest_acked = 0  # bytes: the largest packet this broker acknowledged
        self._suspect: str | None = None  # an item the connection dropped right after
        self._drops = 0  # ... so many times in a row
        self._sizes: dict[str, int] = {}  # packet bytes of the batch being sent, by item id

    def plan(
        self,
        items: list[StoredItem],
        topic: Callable[[StoredItem], str],
        properties: Properties,
        max_packet_size: int | None,
    ) -> tuple[list[StoredItem], list[tuple[StoredItem, UplinkRejected]]]:
        """The items to publish now, in order, and those refused unsent, each with why.

        An item over the broker's announced Maximum Packet Size (None: any) is refused;
        while an item is suspected of a limit the broker does not announce, it goes last
        (the items behind it wait, in order).
        """
        self._sizes = {it.item_id: publish_size(topic(it), it.json, properties) for it in items}
        limit = max_packet_size
        oversize = [it for it in items if limit is not None and self.size(it) > limit]
        sending = [it for it in items if it not in oversize]
        ids = [it.item_id for it in sending]
        if self._suspect in ids:  # nothing after it: a drop right after it is its doing
            sending = sending[: ids.index(self._suspect) + 1]
        refused = [(it, self._too_large(
            f"{TOO_LARGE}: {self.size(it)} bytes, over the broker's maximum packet size "
            f"{limit} (announced in CONNACK); not sent"
        )) for it in oversize]  # fmt: skip
        return sending, refused

    def size(self, item: StoredItem) -> int:
        """The item's PUBLISH packet, in bytes (an item of the batch last planned)."""
        return self._sizes[item.item_id]

    def acked(self, item: StoredItem) -> None:
        """The broker acknowledged it: a packet this large gets through."""
        self.largest_acked = max(self.largest_acked, self.size(item))

    def outage(self) -> None:
        """No connection at all: no record's fault, the count starts over."""
        self._suspect, self._drops = None, 0

    async def refused_by_drops(
        self,
        drops: list[tuple[StoredItem, Dropped]],
        back_at_once: Callable[[], Awaitable[bool]],
    ) -> tuple[StoredItem, UplinkRejected] | None:
        """Count a drop right after one item: the first publish left without a PUBACK that
        may be the cause (a drop that may mean "too large", after a packet larger than any
        this broker acknowledged), when `back_at_once()` says the broker takes us back at
        once with our session (no outage, no restart). The item the drops make too large,
        with its refusal (DROPS_TO_REFUSE in a row, then the count ends); None otherwise."""
        culprit = next(
            ((it, drop) for it, drop in drops
             if drop.maybe_too_large and self.size(it) > self.largest_acked),
            None,
        )  # fmt: skip
        if culprit is None or not await back_at_once():
            # No drop, a session-wide one, not a matter of size, or the broker is down.
            self.outage()
            return None
        suspect, drop = culprit
        self._drops = self._drops + 1 if suspect.item_id == self._suspect else 1
        self._suspect = suspect.item_id
        log.warning(
            "uplink[%s]: the connection ended right after %s (%d bytes, no PUBACK) and the "
            "broker took us back at once, session kept, %d of %d times in a row",
            self.uplink, suspect.item_id, self.size(suspect), self._drops, DROPS_TO_REFUSE,
        )  # fmt: skip
        if self._drops < DROPS_TO_REFUSE:
            return None
        self.outage()
        return suspect, self._too_large(
            f"{TOO_LARGE}: {self.size(suspect)} bytes; the connection ended right after it "
            f"{DROPS_TO_REFUSE} times in a row without a PUBACK (last: {drop.reason}), the "
            "broker taking us back at once each time (a limit it does not announce; the "
            f"largest it acknowledged: {self.largest_acked} bytes)"
        )

    def _too_large(self, reason: str) -> UplinkRejected:
        return UplinkRejected(
            f"publish to {self.target}: {reason}",
            uplink=self.uplink, status=PACKET_TOO_LARGE, reason=reason, too_large=True,
            per_item=True,
        )  # fmt: skip


def publish_size(topic: str, payload: str, properties: Properties) -> int:
    """Bytes of the whole MQTT 5 PUBLISH packet at QoS 1, as Maximum Packet Size counts
    them: fixed header, topic, packet id, properties, payload."""
    remaining = 2 + len(topic.encode()) + 2 + len(properties.pack()) + len(payload.encode())
    length_bytes = (
        1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2**21 else 4
    )
    return 1 + length_bytes + remaining
