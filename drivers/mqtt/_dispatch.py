"""A broker link's messages to its sensors (a BrokerLink's part): taken from the bounded
queue and decoded in slices that yield the event loop; what the queue refused counted.

A large JSON body is parsed in the link's own worker thread, one message at a time, in
short C calls (drivers.payloads._sliced_json): parsed inline, a 60 MiB waveform within
the cap stopped the event loop (every Modbus poll, the uplink, /healthz) for seconds. The
link waits for it, so its messages stay in order and those behind it wait in aiomqtt's
queue, whose bounds (queue_size, queue_max_bytes) drop and count a flood as before."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import aiomqtt

from drivers.mqtt._client import DROP_LOG_EVERY, QUEUE_FULL, BoundedClient
from drivers.mqtt._router import Router
from drivers.mqtt._settings import BrokerSettings
from drivers.payloads import Payload
from drivers.payloads._sliced_json import ParseAbandoned
from drivers.reading import utc_now

log = logging.getLogger("edge_agent.drivers.mqtt")

# Decoding yields the event loop at least this often, so a burst of large waveforms
# never delays the pollers' timers or the health endpoint by more than a few ms.
DRAIN_SLICE_S = 0.005
# After the queue runs dry, let messages gather this long before waking for the next: 200
# sensors at 1 Hz arrive one every 5 ms, and one wake-up per message (of this task and of
# the analysis) costs more CPU than decoding it. A reading is at most this much later.
GATHER_S = 0.02
# A JSON body from this size on is parsed in the worker thread (about 2 ms of json.loads
# here); smaller ones inline, cheaper than a thread hand-off.
OFFLOAD_BYTES = 128 * 1024


class Dispatching:
    """The link's decoding (the attributes are the link's own)."""

    settings: BrokerSettings
    router: Router
    messages_total: int
    queue_dropped: dict[str, int]
    _client: BoundedClient | None
    _stopped: bool
    _heard: Callable[[], None]
    _parser: ThreadPoolExecutor | None  # the worker thread, made at the first large body
    _abandon: threading.Event  # set: the worker gives up the body it parses
    _parse_failed_said: bool

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
            await self._handle(message)
            await self._drain(client)
            if self._stopped:
                return
            await asyncio.sleep(GATHER_S)

    async def _drain_meanwhile(self, client: BoundedClient, done: asyncio.Event) -> None:
        """Decode what comes while the session is being set up, until ``done`` (then it
        ends at its next look: a message taken is decoded, not lost to a cancel)."""
        while not self._stopped and not done.is_set():
            await self._drain(client)
            await asyncio.sleep(GATHER_S)

    async def _drain(self, client: BoundedClient) -> None:
        """Decode every queued message, yielding the loop every DRAIN_SLICE_S."""
        queue = client._queue
        slice_end = time.monotonic() + DRAIN_SLICE_S
        while not queue.empty() and not self._stopped:
            message = queue.get_nowait()
            client.taken(message)
            if await self._handle(message):
                slice_end = time.monotonic() + DRAIN_SLICE_S  # the loop ran meanwhile
            elif time.monotonic() >= slice_end:
                await asyncio.sleep(0)
                slice_end = time.monotonic() + DRAIN_SLICE_S

    async def _handle(self, message: aiomqtt.Message) -> bool:
        """Decode one message; True when its body was parsed off the loop (it yielded)."""
        if self._stopped:
            return False
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
        topic = message.topic.value
        received_at = utc_now()
        body: bytes | Payload = bytes(payload)
        offloaded = len(body) >= OFFLOAD_BYTES and self.router.wants_json(topic, sub_ids)
        if offloaded:
            body = await self._parsed(bytes(payload))
            if self._stopped:
                return True
        self.router.dispatch(
            topic,
            body,
            received_at,
            retained=retained,
            sub_ids=sub_ids,
            mid=mid,
            dup=bool(getattr(message, "dup", False)),
        )
        return offloaded

    async def _parsed(self, raw: bytes) -> Payload:
        """The body with its JSON parsed in the link's worker thread (the loop runs on)."""
        if self._parser is None:
            self._abandon = threading.Event()
            self._parser = ThreadPoolExecutor(
                1, thread_name_prefix=f"mqtt-json[{self.settings.id}]"
            )
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._parser, Payload.parsed_in_slices, raw, self._abandon
            )
        except ParseAbandoned:
            return Payload(raw)  # the link ended meanwhile: nobody decodes it (_handle)
        except Exception as exc:  # CancelledError is no Exception: a stop still ends it
            # Out of memory, a bug: raised here it ended the link, every sensor of the
            # broker silent for good. The body is decoded as before, on the loop, where the
            # sensor counts what fails.
            if not self._parse_failed_said:
                self._parse_failed_said = True
                log.warning(
                    "mqtt broker %s: parsing a large message in the worker thread failed "
                    "(%s: %s); such messages are parsed on the event loop instead (said once)",
                    self.settings.id,
                    type(exc).__name__,
                    exc,
                    exc_info=True,
                )
            return Payload(raw)

    def _close_parser(self) -> None:
        """The link ends: its worker gives up the body it may be parsing, at its next
        member, and ends (not awaited). Left to finish, a parse of seconds outlived the
        stop, and the interpreter's exit waits for the thread: past the stop budget."""
        parser, self._parser = self._parser, None
        if parser is not None:
            self._abandon.set()
            parser.shutdown(wait=False, cancel_futures=True)
