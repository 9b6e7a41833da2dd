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
unspecified) concerns the session, not the item, and is retried. MQTT 5 does not allow
0x95 in a PUBACK, yet mosquitto sends it (message_size_limit): paho takes it for a
protocol error and closes the connection, a drop the rule below handles.

A record too large for the broker must not block the ones behind it (a broker disconnects
a client that sends a packet over its limit; resending it forever silences the uplink):
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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from types import TracebackType
from typing import Any, Self

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttUplink as MqttUplinkConfig
from agent.store import StoredItem
from agent.uplink._transport import SendResult, tcp_probe
from agent.uplink.errors import UplinkRejected, UplinkUnavailable

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
MAX_QUEUED = 1000  # paho's own outgoing queue, bounded
_ITEM_REFUSALS = frozenset({0x95, 0x99})  # packet too large, payload format invalid
PACKET_TOO_LARGE = 0x95
DROPS_TO_REFUSE = 3  # drops right after one record, in a row, that make it "too large"
TOO_LARGE = "MQTT packet too large"  # how its dead letters' reasons start
_DOWN_CONNACK = frozenset({3, 0x88, 0x89})  # server unavailable, server busy


class _AckingClient(aiomqtt.Client):
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
        self._suspect: str | None = None  # an item the connection dropped right after
        self._drops = 0  # ... so many times in a row
        self._largest_acked = 0  # bytes: the largest packet this broker acknowledged
        self._sizes: dict[str, int] = {}  # packet bytes of the batch being sent, by item id
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
            context = ssl.create_default_context(
                cafile=str(cfg.tls.ca_file) if cfg.tls.ca_file else None
            )
            if cfg.tls.cert_file and cfg.tls.key_file:
                context.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file))
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
        async with asyncio.timeout(self.cfg.timeout_s + 1.0):
            await self._client.__aenter__()
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
        return UplinkUnavailable(
            f"{doing} {self.target}: {type(exc).__name__}: {exc}",
            uplink=self.name,
            status=code if isinstance(code, int) else None,
            down=not refused or code in _DOWN_CONNACK,
        )

    async def send(self, items: list[StoredItem]) -> SendResult:
        """Publish every item at QoS 1, concurrently; each one counts on its own PUBACK.

        An item over the broker's Maximum Packet Size is refused without being sent; while
        an item is suspected of a limit the broker does not announce, it goes alone (the
        items behind it wait, in order). See the module docstring.
        """
        if not (self._up and self._client is not None and self._client.connected()):
            await self._disconnect()
            try:
                await self._connect()
            except (aiomqtt.MqttError, OSError, ValueError, TimeoutError) as exc:
                # OSError covers ssl.SSLError and unreadable TLS or password files.
                self._suspect, self._drops = None, 0  # an outage: no record's fault
                return SendResult([], self._error(exc, "connecting to"), items)
        client = self._client
        assert client is not None
        props = self._props
        self._sizes = {it.item_id: publish_size(self.topic(it), it.json, props) for it in items}
        limit = client.max_packet_size
        oversize = [it for it in items if limit is not None and self._size(it) > limit]
        sending = [it for it in items if it not in oversize]
        ids = [it.item_id for it in sending]
        if self._suspect in ids:  # nothing after it: a drop right after it is its doing
            sending = sending[: ids.index(self._suspect) + 1]
        outcomes = await asyncio.gather(
            *(
                client.publish_acked(
                    self.topic(it), it.json, properties=props, wait_s=self.cfg.timeout_s
                )
                for it in sending
            ),
            return_exceptions=True,
        )
        delivered: list[StoredItem] = []
        unavailable: UplinkUnavailable | None = None
        soft: list[StoredItem] = []
        hard = [(it, self._too_large(
            f"{TOO_LARGE}: {self._size(it)} bytes, over the broker's maximum packet size "
            f"{limit} (announced in CONNACK); not sent"
        )) for it in oversize]  # fmt: skip
        drops: list[tuple[StoredItem, Dropped]] = []
        for it, out in zip(sending, outcomes, strict=True):
            if isinstance(out, ReasonCode) and not out.is_failure:
                delivered.append(it)
                self._largest_acked = max(self._largest_acked, self._size(it))
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
        if (culprit := await self._refused_by_drops(drops)) is not None:
            # The drop was its doing: the rest left without a PUBACK go again next time.
            it, drop = culprit
            return SendResult(delivered, self._too_large(
                f"{TOO_LARGE}: {self._size(it)} bytes; the connection ended right after it "
                f"{DROPS_TO_REFUSE} times in a row without a PUBACK (last: {drop.reason}), the "
                "broker taking us back at once each time (a limit it does not announce; the "
                f"largest it acknowledged: {self._largest_acked} bytes)"
            ), [it])  # fmt: skip
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

    def _size(self, item: StoredItem) -> int:
        return self._sizes[item.item_id]

    async def _refused_by_drops(
        self, drops: list[tuple[StoredItem, Dropped]]
    ) -> tuple[StoredItem, Dropped] | None:
        """Count a drop right after one item: the first publish left without a PUBACK that
        may be the cause (a drop that may mean "too large", after a packet larger than any
        this broker acknowledged), when the broker takes us back at once with our session
        (no outage, no restart). The item the drops make too large, with the last drop
        (DROPS_TO_REFUSE in a row, then the count ends); None otherwise."""
        culprit = next(
            ((it, drop) for it, drop in drops
             if drop.maybe_too_large and self._size(it) > self._largest_acked),
            None,
        )  # fmt: skip
        if culprit is None or not await self._back_at_once():
            # No drop, a session-wide one, not a matter of size, or the broker is down.
            self._suspect, self._drops = None, 0
            return None
        suspect = culprit[0]
        self._drops = self._drops + 1 if suspect.item_id == self._suspect else 1
        self._suspect = suspect.item_id
        log.warning(
            "uplink[%s]: the connection ended right after %s (%d bytes, no PUBACK) and the "
            "broker took us back at once, session kept, %d of %d times in a row",
            self.name, suspect.item_id, self._size(suspect), self._drops, DROPS_TO_REFUSE,
        )  # fmt: skip
        if self._drops < DROPS_TO_REFUSE:
            return None
        self._suspect, self._drops = None, 0
        return culprit

    async def _back_at_once(self) -> bool:
        """The broker takes us back right away and still has our session: it neither was
        down (it would refuse) nor restarted (a restarted broker has lost the session, or,
        stopped cleanly, said "server shutting down" first)."""
        try:
            await self._connect()
        except (aiomqtt.MqttError, OSError, ValueError, TimeoutError):
            return False
        return self._client is not None and self._client.session_present

    def _too_large(self, reason: str) -> UplinkRejected:
        return UplinkRejected(
            f"publish to {self.target}: {reason}",
            uplink=self.name, status=PACKET_TOO_LARGE, reason=reason, too_large=True,
            per_item=True,
        )  # fmt: skip

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


def publish_size(topic: str, payload: str, properties: Properties) -> int:
    """Bytes of the whole MQTT 5 PUBLISH packet at QoS 1, as Maximum Packet Size counts
    them: fixed header, topic, packet id, properties, payload."""
    remaining = 2 + len(topic.encode()) + 2 + len(properties.pack()) + len(payload.encode())
    length_bytes = (
        1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2**21 else 4
    )
    return 1 + length_bytes + remaining
