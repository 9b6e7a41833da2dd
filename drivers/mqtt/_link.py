"""One broker connection: subscribe, receive, route; reconnect forever.

aiomqtt 2.x as documented: the Client is created once and ``async with`` is re-entered
after every MqttError, with a capped, fully jittered wait (a broker restart costs seconds,
not minutes), and every subscription is made again. A persistent session (fixed client
id, MQTT 5 clean start off + session expiry, or 3.1.1 clean session off) lets the broker
queue QoS 1 messages while the agent is away.

Bounded: aiomqtt's incoming queue has ``queue_size`` places and holds at most
``queue_max_bytes`` of payload (places alone would let 10000 messages of 256 KiB, 2.5 GB,
wait while decoding is held up); a message that finds it full (``queue_full``) or would
take it past its bytes (``queue_bytes``), or is larger than ``max_payload_bytes``, is
dropped in paho's callback (counted, never blocking paho's loop); one far larger is read
past before paho would assemble it (drivers.mqtt._oversize). Decoding runs in this
link's task, yielding the loop every DRAIN_SLICE_S.

What the broker itself drops (its per-client limits, before anything reaches us) shows
only in its own $SYS counter, watched by drivers.mqtt._broker_drops.

A persistent session also keeps every subscription an earlier run made: a topic filter
no longer configured (a sensor removed by a reload or while stopped) would go on
receiving, and queueing while we are away within the same per-client limit as the wanted
ones. With a SessionLog (the agent keeps it in its store), the link unsubscribes the
filters the session's last run subscribed and this one does not.

The link's parts, by concern: connecting and the back-off between tries
(drivers.mqtt._reconnect), its subscriptions (_subscriptions), decoding what arrives
(_dispatch), when it was up (_uptime); how to reach the broker (_settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiomqtt

from drivers.mqtt._broker_drops import BrokerDrops
from drivers.mqtt._client import QUEUE_REASONS, BoundedClient
from drivers.mqtt._connect import raise_if_cancelled
from drivers.mqtt._dispatch import Dispatching
from drivers.mqtt._reconnect import Reconnecting
from drivers.mqtt._router import Router
from drivers.mqtt._settings import BrokerSettings, SessionLog, TlsFilesError
from drivers.mqtt._subscriptions import Quarantine, Subscribing
from drivers.mqtt._uptime import Uptime

__all__ = ["BrokerLink", "BrokerSettings", "SessionLog", "TlsFilesError"]

DISCONNECT_S = 1.0  # inside the runtime's POLLER_STOP_S


class BrokerLink(Uptime, Reconnecting, Subscribing, Dispatching):
    """Subscribes to one broker and routes its messages (see the module docstring).

    Args:
        settings: the broker.
        router: the subscriptions and the sensors behind them.
        rng: random source for the reconnect jitter.
        sessions: what a persistent session was last subscribed to (None: not known, a
            filter an earlier run subscribed stays in the session).
    """

    def __init__(
        self,
        settings: BrokerSettings,
        router: Router,
        *,
        rng: random.Random | None = None,
        sessions: SessionLog | None = None,
    ) -> None:
        self.settings = settings
        self._sessions = sessions
        self.router = router
        self._rng = rng or random.Random()
        self._client: BoundedClient | None = None
        self._stopped = False
        self.messages_total = 0
        self.queue_dropped: dict[str, int] = dict.fromkeys(QUEUE_REASONS, 0)
        self._peak_before = 0  # the queue-bytes peak of clients since rebuilt
        self.last_error: str | None = None
        self.refused: dict[str, str] = {}  # topic filter -> the broker's SUBACK reason
        self._refused_alone: set[str] = set()  # see Subscribing._singly
        self.quarantined: dict[str, str] = {}  # topic filter -> why (drivers.mqtt._subscriptions)
        self._suspects: set[str] = set()
        self._doubted: set[str] = set()
        self._strikes: dict[str, int] = {}
        self._quarantines: dict[str, Quarantine] = {}
        self.broker_drops = BrokerDrops(
            settings.id, settings.address, settings.sys_dropped_topic, busiest=self._busiest
        )
        self._sys_unsubscribed = False  # an earlier run's $SYS subscription (persistent)
        self._gone_tried = False  # the filters an earlier run left in the session
        self._unguarded_said = False  # drivers.mqtt._reconnect
        self._parser: ThreadPoolExecutor | None = None  # drivers.mqtt._dispatch
        self._abandon = threading.Event()
        self._parse_failed_said = False
        self._init_uptime()

    @property
    def id(self) -> str:
        return self.settings.id

    @property
    def session(self) -> str:
        """Our session: the broker entry's id and our client id (the broker knows it by the
        client id; not by the address, which a configuration may write otherwise)."""
        return f"{self.settings.id} {self.settings.client_id}"

    def status(self) -> dict[str, Any]:
        """A snapshot for /healthz and /metrics."""
        client = self._client
        return {
            "id": self.settings.id,
            "address": self.settings.address,
            "client_id": self.settings.client_id,
            "connected": self.connected,
            "connects_total": self.connects_total,
            "disconnects_total": self.disconnects_total,
            "messages_total": self.messages_total,
            "queue_depth": client._queue.qsize() if client is not None else 0,
            "queue_size": self.settings.queue_size,
            "queue_bytes": client.queued_bytes if client is not None else 0,
            "queue_bytes_peak": max(
                self._peak_before, client.queued_bytes_peak if client is not None else 0
            ),
            "queue_max_bytes": self.settings.queue_max_bytes,
            "queue_dropped_total": sum(self.queue_dropped.values()),
            "queue_dropped": dict(self.queue_dropped),
            "down_for_s": None
            if self._down_since is None
            else round(time.monotonic() - self._down_since, 3),
            "last_error": self.last_error,
            "subscriptions": {t: r.qos for t, r in self.router.routes.items()},
            # A quarantined filter is refused too (one list for /healthz, /metrics, inspect).
            "refused_subscriptions": {
                **self.refused,
                **{t: f"quarantined: {why}" for t, why in self.quarantined.items()},
            },
            "quarantined_subscriptions": dict(self.quarantined),
            "unrouted": self.router.status(),
            **self.broker_drops.status(),
        }

    def stop(self) -> None:
        """Ask the run loop to end; no message is decoded after this."""
        self._stopped = True

    async def run(self) -> None:
        """Connect, subscribe and route until stopped; reconnect after every failure."""
        try:
            await self._reconnecting()
        finally:
            self._close_parser()

    async def _reconnecting(self) -> None:
        attempt = 0
        while not self._stopped:
            try:
                await self._session()
                attempt = 0  # the session ended after it had worked
            except (aiomqtt.MqttError, OSError, ValueError, TimeoutError) as exc:
                # OSError covers ssl.SSLError and unreadable TLS or password files.
                refused = self._failed(exc, attempt)
            else:
                refused = False
            finally:
                self._mark_down()
            if self._stopped:
                break
            attempt += 1
            await asyncio.sleep(self._backoff(attempt, refused))

    async def _session(self) -> None:
        if self._client is None:
            self._client = self._build(*await asyncio.to_thread(self._secrets))
        client = self._client
        await self._connect(client)
        try:
            raise_if_cancelled()
            self._mark_up()
            # A persistent session's backlog arrives from CONNACK on, ahead of the SUBACKs:
            # decoded as it comes, not left to fill the queue until the last one.
            set_up = asyncio.Event()
            draining = asyncio.create_task(self._drain_meanwhile(client, set_up))
            try:
                await self._subscribe(client)
                await self._unsubscribe_gone(client)
                await self._watch_broker_drops(client)
            except asyncio.CancelledError:
                draining.cancel()  # a stop: nothing is decoded after it
                raise
            finally:
                # It ends at its next look, after the message it decodes: a cancel would
                # land in a large body's parse, and that message, acknowledged to the
                # broker already, would be lost (the set-up failing: a drop at a SUBSCRIBE).
                set_up.set()
                if self._stopped:
                    draining.cancel()  # a stop, its cancel taken by aiomqtt as an answer
                try:
                    await asyncio.wait([draining])
                except asyncio.CancelledError:
                    draining.cancel()  # a stop while it decodes what was queued
                    await asyncio.wait([draining])
                    raise
            retrying = asyncio.create_task(self._retry_refused(client))
            try:
                await self._consume(client)
            finally:
                retrying.cancel()
                await asyncio.wait([retrying])
        finally:
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                async with asyncio.timeout(DISCONNECT_S):
                    await client.__aexit__(None, None, None)
            client.forget_disconnect()
