"""MQTT 5 transport: one QoS 1 message per item, delivered only on a successful PUBACK.

aiomqtt 2.x treats every PUBACK as success, but an MQTT 5 broker refuses a publish with a
PUBACK whose reason code is 0x80 or above (not authorized, quota exceeded, ...): marking
such an alert delivered would lose it. `_AckingClient` keeps the reason code, the CONNACK's
Maximum Packet Size and why the connection ended. It relies on aiomqtt 2.x internals
(pinned <3 in pyproject); tests/agent/uplink/test_mqtt.py fails loudly if an upgrade
changes them.

The session is persistent (a fixed client id, clean start off, a session expiry), the
client is created once and re-entered after a failure, as aiomqtt documents. Refusals:
"payload format invalid" (0x99) and "packet too large" (0x95) dead-letter that one item;
every other negative PUBACK (not authorized, topic invalid, quota, server busy,
unspecified) concerns the session, not the item, and is retried. A record too large for
the broker is found and dead-lettered by agent.uplink._mqtt_limits.

PUBACK 0x10 "No matching subscribers" is a success code, but mosquitto and HiveMQ send it
when they discarded the message because no client subscribes to its topic (the backend's
consumer down with a clean session): with `require_subscriber` (the default) it is not a
delivery; the item stays pending and is retried with the backoff, neither down (the
broker answered) nor dead-lettered (it is no fault of the item). A broker that hands
messages on without a subscriber (a Kafka bridge, a rules engine) may answer 0x10 too:
there `require_subscriber: false` counts it as delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from types import TracebackType
from typing import Any, Self

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttUplink as MqttUplinkConfig
from agent.config import client_cert_hint, load_tls
from agent.store import StoredItem
from agent.uplink._mqtt_limits import PACKET_TOO_LARGE, Dropped, PacketLimits
from agent.uplink._transport import SendResult, tcp_probe
from agent.uplink.errors import UplinkRejected, UplinkUnavailable
from drivers.mqtt import HandshakeAware, enter_client

PROBE_TIMEOUT_S = 2.0
MAX_QUEUED = 1000  # paho's own outgoing queue, bounded
_ITEM_REFUSALS = frozenset({PACKET_TOO_LARGE, 0x99})  # too large, payload format invalid
NO_MATCHING_SUBSCRIBERS = 0x10
_DOWN_CONNACK = frozenset({3, 0x88, 0x89})  # server unavailable, server busy


class _AckingClient(HandshakeAware):
    """aiomqtt's client, keeping each PUBACK's reason code (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reasons: dict[int, ReasonCode] = {}
        self.max_packet_size: int | None = None  # the broker's, from CONNACK (None: any)
        self.drop: Dropped | None = None  # how the last connection ended
        self.session_present = False  # the broker still had our session at CONNACK

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None
    ) -> None:
        self.max_packet_size = getattr(properties, "MaximumPacketSize", None)
        self.session_present = bool(getattr(flags, "session_present", False))
        self.drop = None
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None
    ) -> None:
        by_broker = bool(getattr(flags, "is_disconnect_packet_from_server", False))
        self.drop = Dropped(reason_code, by_broker=by_broker)
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        if mid in self._pending_publishes:  # a late ack of an abandoned publish is dropped
            self._reasons[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def connected(self) -> bool:
        return bool(self._client.is_connected())

    def forget_unacked(self) -> None:
        """Before reconnecting: paho would resend every unacknowledged publish on its own
        at CONNACK (an oversized one first: dropped again before we send anything). The
        delivery loop resends what is still pending itself, so paho's copies go."""
        self._client.drop_out_messages()

    def forget_disconnect(self) -> None:
        """The disconnect's error was seen (as a failed publish): do not log it again as a
        "Future exception was never retrieved" at exit."""
        if self._disconnected.done() and not self._disconnected.cancelled():
            self._disconnected.exception()

    async def publish_acked(
        self, topic: str, payload: str, *, properties: Properties, wait_s: float
    ) -> ReasonCode:
        """Publish at QoS 1; the PUBACK's reason code.

        Raises:
            Dropped: the connection ended before the PUBACK (at once, not after wait_s).
            MqttError: not sent, or no PUBACK within wait_s.
        """
        gone = self._disconnected  # replaced at each connect
        info = self._client.publish(topic, payload, 1, False, properties)
        if info.rc != 0:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        confirmation = asyncio.Event()
        acked = asyncio.ensure_future(confirmation.wait())
        try:
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                await asyncio.wait(
                    {acked, gone}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
                )
            if info.mid in self._reasons:
                return self._reasons[info.mid]
            if gone.done():
                drop = self.drop or Dropped()
                raise Dropped(drop.reason, by_broker=drop.by_broker)  # one per publish
            raise aiomqtt.MqttError("Operation timed out")
        finally:
            acked.cancel()
            self._reasons.pop(info.mid, None)


class MqttTransport:
    """Publishes items to an MQTT 5 broker.

    Args:
        cfg: the `uplinks[].mqtt` configuration (file paths already absolute).
        name: the uplink's name, for errors, logs and the default client id.
        gateway_id: for the topic and the default client id.
    """

    kind = "mqtt"

    def __init__(self, cfg: MqttUplinkConfig, *, name: str, gateway_id: str) -> None:
        self.cfg = cfg
        self.name = name
        self.gateway_id = gateway_id
        self.client_id = cfg.client_id or f"edge-agent-{gateway_id}-{name}"
        self.target = f"mqtt{'s' if cfg.tls is not None else ''}://{cfg.host}:{cfg.port}"
        self._client: _AckingClient | None = None
        self._up = False
        self._limits = PacketLimits(uplink=name, target=self.target)
        self._props = Properties(PacketTypes.PUBLISH)
        self._props.PayloadFormatIndicator = 1
        self._props.ContentType = "application/json"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._disconnect()

    def topic(self, item: StoredItem) -> str:
        """The topic of one item: the configured template, per gateway and kind."""
        kind = "summary" if item.class_name == "summary" else _kind_of(item.json)
        return self.cfg.topic.format(gateway=self.gateway_id, kind=kind)

    def _secrets(self) -> tuple[ssl.SSLContext | None, str | None]:
        """The TLS context and the password (blocking: reads files; run in a thread)."""
        cfg = self.cfg
        context = None
        if cfg.tls is not None:
            # As `check` loads them (a passphrase-protected key is refused, not prompted for).
            loaded = load_tls(cfg.tls.ca_file, cfg.tls.cert_file, cfg.tls.key_file)
            if isinstance(loaded, str):
                raise ValueError(f"cannot load this uplink's TLS files: {loaded}")
            context = loaded
        password = cfg.password
        if cfg.password_file is not None:  # re-read at each new client: a rotation works
            password = cfg.password_file.read_text(encoding="utf-8").strip() or None
        return context, password

    def _build(self, context: ssl.SSLContext | None, password: str | None) -> _AckingClient:
        """A new client (on the event loop: aiomqtt binds it to the running loop)."""
        cfg = self.cfg
        connect = Properties(PacketTypes.CONNECT)
        connect.SessionExpiryInterval = cfg.session_expiry_s
        client = _AckingClient(
            cfg.host,
            cfg.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=connect,
            username=cfg.username,
            password=password,
            tls_context=context,
            keepalive=cfg.keepalive_s,
            timeout=cfg.timeout_s,
            max_queued_outgoing_messages=MAX_QUEUED,
        )
        client.pending_calls_threshold = cfg.batch_size + 1  # a full batch is expected
        return client

    async def _connect(self) -> None:
        if self._client is None:
            self._client = self._build(*await asyncio.to_thread(self._secrets))
        self._client.forget_unacked()
        try:
            await enter_client(
                self._client, self.cfg.timeout_s + 1.0, name=f"mqtt-uplink[{self.name}]"
            )
        except (TimeoutError, asyncio.CancelledError):
            self._client = None  # it keeps aiomqtt's re-entry lock: rebuilt at the next try
            raise
        self._up = True

    async def _disconnect(self) -> None:
        client, up, self._up = self._client, self._up, False
        if client is None or not up:
            return
        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
            async with asyncio.timeout(2.0):
                await client.__aexit__(None, None, None)
        client.forget_disconnect()

    def _error(self, exc: BaseException, doing: str) -> UplinkUnavailable:
        rc = getattr(exc, "rc", None)
        code = getattr(rc, "value", rc)
        refused = isinstance(exc, MqttConnectError)
        if refused and code not in _DOWN_CONNACK:
            self._client = None  # rebuilt at the next try: a rotated password is re-read
        text = f"{type(exc).__name__}: {exc}"
        if self.cfg.tls is not None:
            text += client_cert_hint(text, has_cert=self.cfg.tls.cert_file is not None)
        return UplinkUnavailable(
            f"{doing} {self.target}: {text}",
            uplink=self.name,
            status=code if isinstance(code, int) else None,
            down=not refused or code in _DOWN_CONNACK,
        )

    async def send(self, items: list[StoredItem]) -> SendResult:
        """Publish every item at QoS 1, concurrently; each one counts on its own PUBACK.

        An item over the broker's Maximum Packet Size is refused without being sent; while
        an item is suspected of a limit the broker does not announce, it goes last (the
        items behind it wait, in order): see agent.uplink._mqtt_limits. A PUBACK 0x10 is
        no delivery while `require_subscriber` holds (see the module docstring).
        """
        if not (self._up and self._client is not None and self._client.connected()):
            await self._disconnect()
            try:
                await self._connect()
            except (aiomqtt.MqttError, OSError, ValueError, TimeoutError) as exc:
                # OSError covers ssl.SSLError and unreadable TLS or password files.
                self._limits.outage()  # an outage: no record's fault
                return SendResult([], self._error(exc, "connecting to"), items)
        client = self._client
        assert client is not None
        limits = self._limits
        sending, hard = limits.plan(items, self.topic, self._props, client.max_packet_size)
        outcomes = await asyncio.gather(
            *(
                client.publish_acked(
                    self.topic(it), it.json, properties=self._props, wait_s=self.cfg.timeout_s
                )
                for it in sending
            ),
            return_exceptions=True,
        )
        delivered: list[StoredItem] = []
        unavailable: UplinkUnavailable | None = None
        soft: list[StoredItem] = []
        drops: list[tuple[StoredItem, Dropped]] = []
        for it, out in zip(sending, outcomes, strict=True):
            if isinstance(out, ReasonCode) and self._dropped_unheard(out):
                limits.acked(it)  # the broker took the packet; nobody got it
                unavailable = unavailable or self._no_subscriber(out, it)
                soft.append(it)
            elif isinstance(out, ReasonCode) and not out.is_failure:
                delivered.append(it)
                limits.acked(it)
            elif isinstance(out, ReasonCode) and out.value in _ITEM_REFUSALS:
                reason = f"PUBACK {out.value:#04x} {out}"
                hard.append((it, UplinkRejected(
                    f"publish to {self.target}: {reason}",
                    uplink=self.name, status=out.value, reason=reason, per_item=True,
                    too_large=out.value == PACKET_TOO_LARGE,
                )))  # fmt: skip
            elif isinstance(out, ReasonCode):
                unavailable = unavailable or UplinkUnavailable(
                    f"publish to {self.target}: PUBACK {out.value:#04x} {out} "
                    f"(topic {self.topic(it)})",
                    uplink=self.name, status=out.value,
                )  # fmt: skip
                soft.append(it)
            elif isinstance(out, aiomqtt.MqttError | OSError):
                if isinstance(out, Dropped):
                    drops.append((it, out))
                unavailable = self._error(out, "publishing to")
                soft.append(it)
            elif isinstance(out, BaseException):
                raise out
        if drops:
            await self._disconnect()
        if (culprit := await limits.refused_by_drops(drops, self._back_at_once)) is not None:
            # The drop was its doing: the rest left without a PUBACK go again next time.
            it, refused = culprit
            return SendResult(delivered, refused, [it])
        if unavailable is not None:
            if unavailable.down and not drops:  # after drops: closed, or open anew
                await self._disconnect()
            return SendResult(delivered, unavailable, soft + [it for it, _ in hard])
        if not hard:
            return SendResult(delivered)
        # One reason per result (it goes with each dead letter); the others are refused
        # again next time.
        refused = hard[0][1]
        return SendResult(
            delivered, refused, [it for it, exc in hard if exc.reason == refused.reason]
        )

    def _dropped_unheard(self, code: ReasonCode) -> bool:
        """A PUBACK 0x10 "No matching subscribers", when it is not a delivery."""
        return code.value == NO_MATCHING_SUBSCRIBERS and self.cfg.require_subscriber

    def _no_subscriber(self, code: ReasonCode, item: StoredItem) -> UplinkUnavailable:
        # Not down (the broker answered: a probe cannot see a subscriber come back) and no
        # fault of the item: kept and retried with the backoff.
        return UplinkUnavailable(
            f"publish to {self.target}: PUBACK {code.value:#04x} {code} on topic "
            f"{self.topic(item)}: no client subscribes, so the broker dropped it; kept and "
            "retried (set require_subscriber: false when the broker hands messages on "
            "without a subscriber, e.g. a Kafka or rules-engine extension)",
            uplink=self.name, status=code.value,
        )  # fmt: skip

    async def _back_at_once(self) -> bool:
        """The broker takes us back right away and still has our session: it neither was
        down (it would refuse) nor restarted (a restarted broker has lost the session, or,
        stopped cleanly, said "server shutting down" first)."""
        try:
            await self._connect()
        except (aiomqtt.MqttError, OSError, ValueError, TimeoutError):
            return False
        return self._client is not None and self._client.session_present

    async def probe(self) -> bool:
        """A TCP connection to the broker opens (no MQTT session is touched)."""
        return await tcp_probe(
            self.cfg.host, self.cfg.port, min(self.cfg.timeout_s, PROBE_TIMEOUT_S)
        )


def _kind_of(text: str) -> str:
    """The record's kind, read from its frozen JSON text without parsing all of it."""
    marker = '"kind":"'
    start = text.find(marker)
    if start < 0:
        return "alert"
    start += len(marker)
    end = text.find('"', start)
    return text[start:end] if end > start else "alert"
