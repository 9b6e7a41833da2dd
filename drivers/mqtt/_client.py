"""aiomqtt's client with the link's bounds applied in paho's message callback.

The broker's $SYS counter of dropped messages (drivers.mqtt._broker_drops) is taken out
first: it is no reading. Every other inbound message is measured before aiomqtt queues
it: larger than the size cap, the queue without a place, or the queue's payload bytes
past their bound, and it is dropped (the link counts it) instead of queued. Runs on the
event loop's thread (aiomqtt 2.x reads paho's socket from loop callbacks), so the byte
count needs no lock.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiomqtt

from drivers.mqtt._handshake import HandshakeAware
from drivers.mqtt._oversize import install
from drivers.payloads import TOO_LARGE

QUEUE_FULL = "queue_full"  # the decode queue had no place left
QUEUE_BYTES = "queue_bytes"  # the message would take the queue past queue_max_bytes
QUEUE_REASONS = (QUEUE_FULL, QUEUE_BYTES)
DROP_LOG_EVERY = 10_000  # a queue drop is logged the first time, then every this many
# Messages received are counted by topic (to name a flooding one): at most this many
# topics, the rest under OTHER_TOPICS (a wildcard may match any number of them).
MAX_TOPICS_COUNTED = 5000
OTHER_TOPICS = "(other topics)"


def _payload_size(payload: object) -> int:
    """The bytes a queued message holds (paho gives bytes; the same measure in and out)."""
    return len(payload) if isinstance(payload, bytes | bytearray | str) else 0


class BoundedClient(HandshakeAware):
    """aiomqtt's client with the size cap, queue-full and queue-bytes drops counted in
    paho's callback (aiomqtt only logs a full queue and has no bound in bytes)."""

    def __init__(
        self,
        *args: Any,
        on_drop: Callable[[str, str, int], None],
        cap: int,
        max_bytes: int,
        sys_topic: str | None = None,
        on_sys: Callable[[object], None] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        self._on_drop = on_drop
        self._sys_topic = sys_topic
        self._on_sys = on_sys
        self._cap = cap
        self._max_bytes = max_bytes
        self.queued_bytes = 0  # payload bytes in self._queue now
        self.queued_bytes_peak = 0
        self.by_topic: Counter[str] = Counter()  # messages received, since the link reset it
        self._loop_thread = threading.get_ident()  # aiomqtt binds the running loop here
        # A message far over the cap is read past, never assembled (drivers.mqtt._oversize);
        # not when paho's internals differ from those the guard reads: why, else None.
        self.unguarded = install(self._client, cap, self._oversized)

    def _oversized(self, topic: str, size: int) -> None:
        self._count(topic)
        self._on_drop(topic, TOO_LARGE, size)

    def _count(self, topic: str) -> None:
        if topic not in self.by_topic and len(self.by_topic) >= MAX_TOPICS_COUNTED:
            topic = OTHER_TOPICS
        self.by_topic[topic] += 1

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        # paho leaves Nagle on: after the PUBACK of a retained copy the broker sends with
        # each SUBACK, the next SUBSCRIBE waited for the broker's delayed ACK (22 ms a
        # topic: 2000 sensors' topics took 43 s at every reconnect, nothing decoded
        # meanwhile). Our packets are whole when written: nothing to gain from holding them.
        with contextlib.suppress(OSError, AttributeError):  # not a TCP socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super()._on_socket_open(client, userdata, sock)

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        # Each QoS 1 message's PUBACK: aiomqtt schedules add_writer thread-safely (a self-pipe
        # write and two extra loop turns), then removes it; at 200 messages/s that is a
        # tenth of the link's CPU. On the loop's own thread, write at once instead (the
        # socket is almost always writable) and wait for writability only if data is left.
        if threading.get_ident() == self._loop_thread:
            with contextlib.suppress(Exception):  # a broken socket shows on the next read
                client.loop_write()
            if not getattr(client, "_registered_write", True):
                return  # all written: paho unregistered the write already
        super()._on_socket_register_write(client, userdata, sock)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if self._on_sys is not None and message.topic == self._sys_topic:
            # The broker's own counter: not a reading, and never lost to a full queue.
            self._on_sys(message.payload)
            return
        self._count(message.topic)
        size = _payload_size(message.payload)
        if size > self._cap:
            self._on_drop(message.topic, TOO_LARGE, size)
        elif self._queue.full():
            self._on_drop(message.topic, QUEUE_FULL, size)
        elif self.queued_bytes + size > self._max_bytes:
            self._on_drop(message.topic, QUEUE_BYTES, size)
        else:
            self.queued_bytes += size
            self.queued_bytes_peak = max(self.queued_bytes_peak, self.queued_bytes)
            # aiomqtt's Message drops paho's DUP flag: a QoS 1 message sent again (its PUBACK
            # was lost with the connection) must be told from a new one (MqttSensor).
            m = aiomqtt.Message._from_paho_message(message)
            m.dup = bool(message.dup)  # type: ignore[attr-defined]
            self._queue.put_nowait(m)  # a place is free: checked above, same thread

    def taken(self, message: aiomqtt.Message) -> None:
        """A message left the queue: its bytes no longer count against the bound."""
        self.queued_bytes -= _payload_size(message.payload)

    def forget_disconnect(self) -> None:
        """The disconnect's error was handled: no 'exception never retrieved' at exit."""
        if self._disconnected.done() and not self._disconnected.cancelled():
            self._disconnected.exception()
