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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from drivers.mqtt._broker_drops import DEFAULT_TOPIC as SYS_DROPPED_TOPIC
from drivers.mqtt._broker_drops import BrokerDrops
from drivers.mqtt._client import DROP_LOG_EVERY, QUEUE_FULL, QUEUE_REASONS, BoundedClient
from drivers.mqtt._connect import enter_client
from drivers.mqtt._router import Router
from drivers.reading import utc_now
from drivers.tls import client_cert_hint, load_tls

log = logging.getLogger("edge_agent.drivers.mqtt")

# Decoding yields the event loop at least this often, so a burst of large waveforms
# never delays the pollers' timers or the health endpoint by more than a few ms.
DRAIN_SLICE_S = 0.005
# After the queue runs dry, let messages gather this long before waking for the next: 200
# sensors at 1 Hz arrive one every 5 ms, and one wake-up per message (of this task and of
# the analysis) costs more CPU than decoding it. A reading is at most this much later.
GATHER_S = 0.02
BACKOFF_BASE_S = 0.1
BACKOFF_FLOOR_S = 0.05
DISCONNECT_S = 1.0  # inside the runtime's POLLER_STOP_S
UNSUBSCRIBE_BATCH = 100  # topic filters per UNSUBSCRIBE packet (a few KiB)
UPS_KEPT = 64  # connections remembered for connected_s_since (a few KiB per link)
# CONNACK codes that refuse who we are (MQTT 5: 0x86 bad user name or password, 0x87 not
# authorized, 0x8A banned, 0x8C bad authentication method; 3.1.1: 4 and 5). Trying again
# at once cannot help: such a refusal is tried again every REFUSED_RETRY_S (with the
# password file read again, so a fixed one is used without a restart).
NO_RETAINED = SubscribeOptions.RETAIN_DO_NOT_SEND  # MQTT 5 retain handling 2
REFUSED_CODES = frozenset({134, 135, 138, 140, 4, 5})
REFUSED_RETRY_S = 30.0


class SessionLog(Protocol):
    """Which topic filters a persistent session was last given, by session (broker
    entry and client id), kept across restarts by whoever runs the links."""

    def subscribed(self, session: str) -> frozenset[str]:
        """The filters recorded for the session (empty: none known)."""
        ...

    def record(self, session: str, filters: frozenset[str]) -> None:
        """The filters the session now holds (its run subscribed them)."""
        ...


class TlsFilesError(ValueError):
    """The broker's TLS files cannot be loaded: no connection is tried without them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    """How to reach one broker (the drivers' view of a ``mqtt:`` entry; paths absolute)."""

    id: str
    host: str
    port: int
    client_id: str
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    persistent: bool = False
    session_expiry_s: int = 86_400
    keepalive_s: int = 30
    protocol: str = "5"
    max_payload_bytes: int = 256 * 2**10
    queue_size: int = 10_000
    queue_max_bytes: int = 32 * 2**20
    reconnect_max_s: float = 2.0
    connect_timeout_s: float = 10.0
    # The broker's $SYS counter of messages it dropped (None: not asked for).
    sys_dropped_topic: str | None = SYS_DROPPED_TOPIC

    @property
    def address(self) -> str:
        return f"mqtt{'s' if self.tls else ''}://{self.host}:{self.port}"


class BrokerLink:
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
        self.connected = False
        self.connects_total = 0
        self.disconnects_total = 0
        self.messages_total = 0
        self.queue_dropped: dict[str, int] = dict.fromkeys(QUEUE_REASONS, 0)
        self._peak_before = 0  # the queue-bytes peak of clients since rebuilt
        self.last_error: str | None = None
        self.refused: dict[str, str] = {}  # topic filter -> the broker's SUBACK reason
        self.broker_drops = BrokerDrops(
            settings.id, settings.address, settings.sys_dropped_topic, busiest=self._busiest
        )
        self._sys_unsubscribed = False  # an earlier run's $SYS subscription (persistent)
        self._gone_tried = False  # the filters an earlier run left in the session
        self._down_since: float | None = time.monotonic()
        self._up_since: float | None = None  # monotonic time of the current connection
        # The last connections (monotonic start, end): how long the link was up during a
        # sensor's silence, however often it reconnected (bounded; see connected_s_since).
        self._ups: deque[tuple[float, float]] = deque(maxlen=UPS_KEPT)

    @property
    def id(self) -> str:
        return self.settings.id

    @property
    def down_for_s(self) -> float:
        """Seconds the link has been down (since start if it never connected), 0 when up."""
        if self.connected or self._down_since is None:
            return 0.0
        return time.monotonic() - self._down_since

    @property
    def up_for_s(self) -> float | None:
        """Seconds since the link last connected, None while it is down."""
        if not self.connected or self._up_since is None:
            return None
        return time.monotonic() - self._up_since

    def connected_s_since(self, since: float) -> float:
        """Seconds the link was connected from the monotonic time `since` to now, leaving
        out a connection that `since` fell in and that has ended since (a sensor silent
        when an outage began is judged from the reconnect on, as if it had just spoken).
        Before the oldest connection kept it counts as connected (a sensor silent through
        more reconnects than are kept is judged alone rather than held)."""
        now = time.monotonic()
        total = sum(end - start for start, end in self._ups if start >= since)
        if self.connected and self._up_since is not None:
            total += now - max(self._up_since, since)
        if len(self._ups) == self._ups.maxlen and self._ups[0][0] > since:
            total += self._ups[0][0] - since
        return total

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
            "refused_subscriptions": dict(self.refused),
            "unrouted": self.router.status(),
            **self.broker_drops.status(),
        }

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

    def stop(self) -> None:
        """Ask the run loop to end; no message is decoded after this."""
        self._stopped = True

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

    def _secrets(self) -> tuple[ssl.SSLContext | None, str | None]:
        """TLS context and password (blocking: reads files; run in a thread)."""
        s = self.settings
        context = None
        if s.tls:
            # As `check` loads them: a passphrase-protected key is refused, never prompted
            # for (OpenSSL would ask on the terminal, or fail obscurely under systemd).
            loaded = load_tls(s.ca_file, s.cert_file, s.key_file)
            if isinstance(loaded, str):
                raise TlsFilesError(
                    f"cannot load the broker's TLS files: {loaded}; not connecting without "
                    "them (tried again with backoff)"
                )
            context = loaded
        password = s.password
        if s.password_file is not None:
            password = s.password_file.read_text(encoding="utf-8").strip() or None
        return context, password

    def _build(self, context: ssl.SSLContext | None, password: str | None) -> BoundedClient:
        s = self.settings
        v5 = s.protocol == "5"
        kw: dict[str, Any] = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry_s if s.persistent else 0
            # No Maximum Packet Size: mosquitto keeps a message it will not send us for it in
            # flight, and 20 of them stop all delivery (drivers.mqtt._oversize, which reads
            # one past instead, counted).
            kw.update(clean_start=not s.persistent, properties=props)
        else:
            kw.update(clean_session=not s.persistent)
        return BoundedClient(
            s.host,
            s.port,
            identifier=s.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            username=s.username,
            password=password,
            tls_context=context,
            keepalive=s.keepalive_s,
            timeout=s.connect_timeout_s,
            max_queued_incoming_messages=s.queue_size,
            on_drop=self._drop,
            cap=s.max_payload_bytes,
            max_bytes=s.queue_max_bytes,
            sys_topic=s.sys_dropped_topic,
            on_sys=self.broker_drops.observe,
            **kw,
        )

    async def run(self) -> None:
        """Connect, subscribe and route until stopped; reconnect after every failure."""
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
            cap = min(self.settings.reconnect_max_s, BACKOFF_BASE_S * 2.0 ** min(attempt, 20))
            wait = max(BACKOFF_FLOOR_S, self._rng.uniform(0.0, cap))
            if refused:
                wait = max(wait, REFUSED_RETRY_S * self._rng.uniform(0.8, 1.0))
            await asyncio.sleep(wait)

    async def _session(self) -> None:
        if self._client is None:
            self._client = self._build(*await asyncio.to_thread(self._secrets))
        client = self._client
        await self._connect(client)
        try:
            _raise_if_cancelled()
            self.connected = True
            self.connects_total += 1
            down = time.monotonic() - (self._down_since or time.monotonic())
            self._down_since = None
            self._up_since = time.monotonic()
            log.info(
                "mqtt broker %s connected at %s (after %.1f s down)",
                self.settings.id,
                self.settings.address,
                down,
            )
            # A persistent session's backlog arrives from CONNACK on, ahead of the SUBACKs:
            # decoded as it comes, not left to fill the queue until the last one.
            draining = asyncio.create_task(self._drain_meanwhile(client))
            try:
                await self._subscribe(client)
                await self._unsubscribe_gone(client)
                await self._watch_broker_drops(client)
            finally:
                draining.cancel()  # lands at its sleep: no message taken is left undecoded
                await asyncio.wait([draining])
            await self._consume(client)
        finally:
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                async with asyncio.timeout(DISCONNECT_S):
                    await client.__aexit__(None, None, None)
            client.forget_disconnect()

    async def _subscribe(self, client: BoundedClient) -> None:
        """Every route's filter, the SUBACK checked. In MQTT 5 with an identifier (see
        Router) and without retained copies (retain handling 2): a retained copy is never
        analysed (MqttSensor), yet the broker would send one per sensor topic at every
        subscription: with 2000 sensors, 2000 messages through the decode queue and 2000
        "dropped (retained)" warnings at each reconnect. 3.1.1 has no such option."""
        v5 = self.settings.protocol == "5"
        ids = {r.topic: i for i, r in self.router.by_id.items()}
        for topic, route in self.router.routes.items():
            props = options = None
            if v5:
                options = SubscribeOptions(qos=route.qos, retainHandling=NO_RETAINED)
                if topic in ids:
                    props = Properties(PacketTypes.SUBSCRIBE)
                    props.SubscriptionIdentifier = ids[topic]
            qos = 0 if options else route.qos  # paho takes it from the options, if any
            result = await client.subscribe(topic, qos=qos, options=options, properties=props)
            _raise_if_cancelled()
            self._granted(topic, route, result)

    async def _connect(self, client: BoundedClient) -> None:
        """Connect within connect_timeout_s; a client whose connect timed out or was
        cancelled (a stop, a reload) is not used again (drivers.mqtt._connect)."""
        try:
            await enter_client(
                client,
                self.settings.connect_timeout_s + 1.0,
                name=f"mqtt-connect[{self.settings.id}]",
            )
        except (TimeoutError, asyncio.CancelledError):
            self._forget_client()
            raise

    def _granted(self, topic: str, route: Any, result: Any) -> None:
        """Check the SUBACK: a subscription the broker refuses (an ACL: 0x80 in 3.1.1,
        0x87 in 5) must be said, or its sensors would only look stale for no visible reason.
        """
        codes = result if isinstance(result, list | tuple) else [result]
        failed = [c for c in codes if getattr(c, "is_failure", False) or c == 0x80]
        if not failed:
            self.refused.pop(topic, None)
            return
        reason = str(failed[0])
        first = self.refused.get(topic) != reason
        self.refused[topic] = reason
        text = f"subscription to {topic} refused by the broker ({reason})"
        self.last_error = text
        for sensor in route.sensors():
            sensor.refused(text)
        if first:
            log.error(
                "mqtt broker %s at %s: %s; its sensors get no messages (check the broker's "
                "ACL for user %s); tried again at every reconnect",
                self.settings.id,
                self.settings.address,
                text,
                self.settings.username,
            )

    async def _unsubscribe_gone(self, client: BoundedClient) -> None:
        """A persistent session: unsubscribe the filters its last run subscribed and this
        configuration does not (a removed sensor's topic); then record this run's. The
        broker sends what it queued for them before this (decoded for no sensor); nothing
        after. Recorded only once they are gone; tried once per link (a broker that drops
        us for it must not cost the sensors every connection): the next run tries again."""
        if self._sessions is None or not self.settings.persistent or self._gone_tried:
            return
        self._gone_tried = True
        wanted = frozenset(self.router.routes)
        before = self._sessions.subscribed(self.session)
        gone = sorted(before - wanted)
        for i in range(0, len(gone), UNSUBSCRIBE_BATCH):
            await client.unsubscribe(gone[i : i + UNSUBSCRIBE_BATCH])
            _raise_if_cancelled()
        if gone:
            log.info(
                "mqtt broker %s: unsubscribed %d topic filter(s) an earlier configuration "
                "left in the persistent session of client id %s: %s",
                self.settings.id,
                len(gone),
                self.settings.client_id,
                ", ".join(gone[:10]) + (f" and {len(gone) - 10} more" if len(gone) > 10 else ""),
            )
        if before != wanted:
            self._sessions.record(self.session, wanted)

    async def _watch_broker_drops(self, client: BoundedClient) -> None:
        """Subscribe to the broker's dropped-messages counter, after the sensors' own
        subscriptions (a broker that refuses it, or even disconnects us for it, costs them
        nothing): QoS 0, it is refreshed every few seconds anyway."""
        drops = self.broker_drops
        if (
            self.settings.persistent
            and drops.topic != SYS_DROPPED_TOPIC
            and not self._sys_unsubscribed
        ):
            await self._unsubscribe_default_sys(client)
        if not drops.wanted:
            return
        assert drops.topic is not None
        drops.connected()
        try:
            result = await client.subscribe(drops.topic, qos=0)
        except aiomqtt.MqttError as exc:
            drops.lost(f"{type(exc).__name__}: {exc}")  # twice in a row: not asked again
            raise
        _raise_if_cancelled()
        codes = result if isinstance(result, list | tuple) else [result]
        failed = [c for c in codes if getattr(c, "is_failure", False) or c == 0x80]
        if failed:
            drops.refused(f"SUBACK {failed[0]}")
        else:
            drops.granted()

    async def _unsubscribe_default_sys(self, client: BoundedClient) -> None:
        """A persistent session keeps what an earlier run subscribed: the broker's default
        dropped-messages counter, when sys_dropped_topic was on then and is off (or names
        another topic) now. Its updates would keep coming, counted as sensor messages.
        Unsubscribing a topic the session does not hold is harmless. Once per link: this
        link never subscribes it, and a broker that drops us for it is not asked again."""
        self._sys_unsubscribed = True
        await client.unsubscribe(SYS_DROPPED_TOPIC)
        _raise_if_cancelled()

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

    def _failed(self, exc: BaseException, attempt: int) -> bool:
        """Say why the session failed (once while the reason stays the same); True when
        the broker refused our credentials (see REFUSED_CODES)."""
        refused = _refused_code(exc)
        if refused is not None:
            text = self._refusal(refused)
        elif isinstance(exc, TlsFilesError):
            text = str(exc)
        else:
            text = f"{type(exc).__name__}: {exc}"
        if self.settings.tls:
            text += client_cert_hint(text, has_cert=self.settings.cert_file is not None)
        if attempt == 0 or text != self.last_error:
            log.warning(
                "mqtt broker %s at %s: %s; reconnecting",
                self.settings.id,
                self.settings.address,
                text,
            )
        self.last_error = text
        if refused is not None or not isinstance(exc, aiomqtt.MqttError):
            self._forget_client()  # rebuilt: a fixed TLS or password file is read again
        return refused is not None

    def _refusal(self, code: str) -> str:
        """What an integrator needs to fix a refused connection."""
        s = self.settings
        if s.username is None:
            who = "no username is configured (the broker may want one)"
        else:
            source = f"password_file {s.password_file}" if s.password_file else "password"
            who = f"check username {s.username!r} and its {source}"
        return (
            f"the broker refused the connection: {code}; {who}; tried again every "
            f"{REFUSED_RETRY_S:.0f} s{_reread(s.password_file)}"
        )

    def _forget_client(self) -> None:
        """Drop the client (its queue and the bytes counted in it go with it)."""
        if self._client is not None:
            self._peak_before = max(self._peak_before, self._client.queued_bytes_peak)
        self._client = None

    def _mark_down(self) -> None:
        if self.connected:
            self.disconnects_total += 1
            self._down_since = time.monotonic()
            if self._up_since is not None:
                self._ups.append((self._up_since, self._down_since))
        self.connected = False
        self._up_since = None


def _refused_code(exc: BaseException) -> str | None:
    """The CONNACK refusal of our credentials ("Not authorized (0x87)"), else None."""
    if not isinstance(exc, MqttConnectError):
        return None
    rc = exc.rc
    value = getattr(rc, "value", rc)
    if not isinstance(value, int) or value not in REFUSED_CODES:
        return None
    name = (
        str(rc)
        if not isinstance(rc, int)
        else ("Bad username or password", "Not authorised")[value - 4]
    )
    return f"{name} (0x{value:02X})"


def _raise_if_cancelled() -> None:
    """aiomqtt waits for a CONNACK or SUBACK with asyncio.wait_for, which on Python 3.11
    returns the result instead of raising when a cancel lands as the answer arrives: the
    link would go on consuming with its stop lost, a task no one ends."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _reread(password_file: Path | None) -> str:
    """What a fixed password file does, for the refusal message: the link reads the file
    again at each try, but under systemd the file it reads is the copy LoadCredential=
    made when the service started (systemd/README.md), so a fix reaches it by a restart."""
    if password_file is None:
        return ""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and Path(os.path.abspath(password_file)).is_relative_to(os.path.abspath(creds)):
        return (
            f", but {password_file} is systemd's copy of the credential made when the service "
            "started: after fixing the file in /etc/edge-agent/credentials, "
            "systemctl restart edge-agent"
        )
    return ", the password file read again each time"
