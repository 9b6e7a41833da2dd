"""A broker link's messages to its sensors (a BrokerLink's part): taken from the bounded
queue and decoded in slices that yield the event loop; what the queue refused counted."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

import aiomqtt

from drivers.mqtt._client import DROP_LOG_EVERY, QUEUE_FULL, BoundedClient
from drivers.mqtt._router import Router
from drivers.mqtt._settings import BrokerSettings
from drivers.reading import utc_now

log = logging.getLogger("edge_agent.drivers.mqtt")

# Decoding yields the event loop at least this often, so a burst of large waveforms
# never delays the pollers' timers or the health endpoint by more than a few ms.
DRAIN_SLICE_S = 0.005
# After the queue runs dry, let messages gather this long before waking for the next: 200
# sensors at 1 Hz arrive one every 5 ms, and one wake-up per message (of this task and of
# the analysis) costs more CPU than decoding it. A reading is at most this much later.
GATHER_S = 0.02


class Dispatching:
    """The link's decoding (the attributes are the link's own)."""

    settings: BrokerSettings
    router: Router
    messages_total: int
    queue_dropped: dict[str, int]
    _client: BoundedClient | None
    _stopped: bool
    _heard: Callable[[], None]

    def _busiest(self) -> str | None:
        """The topic that sent us the most messages since the last look (the broker's drop
        warning): one sensor at 5000 messages/s fills the broker's per-client queue, and
        the broker then drops the other sensors' messages as much as its own."""
        client = self._client
        if client is None:
            return None
        counts, client.by_topic = client.by_topic, Counter()
        total = counts.total()
        if total <= 0:
            return None
        top, n = counts.most_common(1)[0]
        return (
            f"of the {total} messages we got since the last such warning, {n} "
            f"({100 * n // total} %) were on {top[:120]}"
        )

    def _drop(self, topic: str, reason: str, size: int) -> None:
        self.messages_total += 1
        if reason in self.queue_dropped:
            n = self.queue_dropped[reason] = self.queue_dropped[reason] + 1
            if n == 1 or n % DROP_LOG_EVERY == 0:  # rate-limited: first, then every 10000
                s = self.settings
                bound = (
                    f"{s.queue_size} messages"
                    if reason == QUEUE_FULL
                    else f"{s.queue_max_bytes} bytes of payload"
                )
                log.warning(
                    "mqtt broker %s: decode queue full (%s): %d messages dropped so far "
                    "(counted in edge_mqtt_queue_dropped{reason=%s})",
                    s.id,
                    bound,
                    n,
                    reason,
                )
            return
        self.router.reject(topic, reason, f"{size} bytes > {self.settings.max_payload_bytes}")

    async def _consume(self, client: BoundedClient) -> None:
        async for message in client.messages:
            client.taken(message)
            self._handle(message)
            await self._drain(client)
            if self._stopped:
                return
            await asyncio.sleep(GATHER_S)

    async def _drain_meanwhile(self, client: BoundedClient) -> None:
        """Decode what comes while the session is being set up, until cancelled."""
        while not self._stopped:
            await self._drain(client)
            await asyncio.sleep(GATHER_S)

    async def _drain(self, client: BoundedClient) -> None:
        """Decode every queued message, yielding the loop every DRAIN_SLICE_S."""
        queue = client._queue
        slice_end = time.monotonic() + DRAIN_SLICE_S
        while not queue.empty() and not self._stopped:
            message = queue.get_nowait()
            client.taken(message)
            self._handle(message)
            if time.monotonic() >= slice_end:
                await asyncio.sleep(0)
                slice_end = time.monotonic() + DRAIN_SLICE_S

    def _handle(self, message: aiomqtt.Message) -> None:
        if self._stopped:
            return
        self.messages_total += 1
        payload = message.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        retained = bool(message.retain)  # replayed by the broker, not published just now
        if not retained:
            self._heard()  # a publisher is back (drivers.mqtt._uptime)
        sub_ids = getattr(message.properties, "SubscriptionIdentifier", None)
        if sub_ids is not None and not isinstance(sub_ids, list):
            sub_ids = [sub_ids]
        # A QoS 1 message's packet id names it while in flight, so a copy the broker sends
        # again (DUP) can be told from a new message (MqttSensor).
        mid = message.mid if message.qos > 0 else None
        self.router.dispatch(
            message.topic.value,
            bytes(payload),
            utc_now(),
            retained=retained,
            sub_ids=sub_ids,
            mid=mid,
            dup=bool(getattr(message, "dup", False)),
        )
