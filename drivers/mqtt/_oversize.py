"""An oversized PUBLISH read past, never assembled: paho's packet reader with a size cap.

paho assembles every packet whole before anyone may look at it: a 64 MiB message took
64 MiB (and more while its buffer grew) and held the event loop 0.2 s (3.1.1) to 1.7 s (5)
before our size cap could drop it. Here the fixed header is read first; a PUBLISH whose
body is larger than the cap plus room for its topic and properties has only its topic and
packet id read, the rest is read in CHUNK pieces and thrown away (the loop is yielded every
MAX_CHUNKS, as paho does), and it is acknowledged (PUBACK, or PUBREC for QoS 2) so that the
broker neither sends it again nor holds a place of its in-flight window for it. Every other
packet goes to paho's own reader, its header already read.

Why not MQTT 5's Maximum Packet Size: mosquitto 2.0 then drops a larger QoS 1 message
without a word but keeps it in flight, waiting for a PUBACK that never comes: after 20 such
messages (its max_inflight_messages) it sent this client nothing more, every sensor of the
broker silent while the link looked connected.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import __version__ as PAHO_VERSION
from paho.mqtt.enums import MQTTErrorCode

PUBLISH = 0x30
HEADROOM = 2 * 65_536  # a topic (at most 65535 bytes), packet id and properties
CHUNK = 65_536
MAX_CHUNKS = 16  # per read callback (1 MiB): the loop is yielded between
_SKIP = "edge_skip"  # our key in paho's _in_packet (paho renews the dict per packet)
# paho's packet in progress, as _packet_read keeps it (2.2): the keys and their types.
IN_PACKET = {
    "command": int, "have_remaining": int, "remaining_count": list, "remaining_mult": int,
    "remaining_length": int, "packet": bytearray, "to_process": int, "pos": int,
}  # fmt: skip
# paho's private methods used, and how many positional arguments each takes.
METHODS = {"_packet_read": 0, "_sock_recv": 1, "_send_puback": 1, "_send_pubrec": 1}


def unguardable(client: paho.Client) -> str | None:
    """What of paho's private reader the guard needs is missing or shaped otherwise on
    this client (None: all there, the guard can be installed)."""
    for name, nargs in METHODS.items():
        method = getattr(client, name, None)
        if not callable(method):
            return f"no {name}"
        try:
            params = inspect.signature(method).parameters.values()
        except (TypeError, ValueError):
            return f"{name} has no signature"
        if sum(p.kind == p.POSITIONAL_OR_KEYWORD for p in params) != nargs:
            return f"{name} takes other arguments"
    if not callable(getattr(client, "_easy_log", None)):
        return "no _easy_log"
    for name in ("MQTT_LOG_ERR", "MQTTv5", "time_func"):
        if not hasattr(paho, name):
            return f"no paho.mqtt.client.{name}"
    mutex = getattr(client, "_msgtime_mutex", None)
    if not (hasattr(mutex, "__enter__") and hasattr(mutex, "__exit__")):
        return "no _msgtime_mutex"
    if not isinstance(getattr(client, "_last_bytes_received", None), int | float):
        return "no _last_bytes_received"
    if not hasattr(client, "_protocol"):
        return "no _protocol"
    packet = getattr(client, "_in_packet", None)
    if not isinstance(packet, dict) or set(packet) != set(IN_PACKET):
        return "_in_packet has other keys"
    if any(not isinstance(packet[k], t) for k, t in IN_PACKET.items()):
        return "_in_packet holds other types"
    return None


def install(client: paho.Client, limit: int, on_oversize: Callable[[str, int], None]) -> str | None:
    """The guard on `client`, if paho's internals are as it reads them; else nothing is
    installed and why is returned, e.g. "paho 2.3.0 internals differ (no _sock_recv)"."""
    why = unguardable(client)
    if why is not None:
        return f"paho {PAHO_VERSION} internals differ ({why})"
    OversizeGuard(client, limit, on_oversize)
    return None


class OversizeGuard:
    """Installed on a paho client: PUBLISH packets over `limit` + HEADROOM bytes are read
    past and acknowledged, and `on_oversize(topic, size)` is told (on the reading thread).
    Installed through `install`, which checks paho's internals first.
    """

    def __init__(
        self, client: paho.Client, limit: int, on_oversize: Callable[[str, int], None]
    ) -> None:
        self._c = client
        self._limit = limit + HEADROOM
        self._on_oversize = on_oversize
        self._paho_read = client._packet_read
        client._packet_read = self._packet_read  # type: ignore[method-assign]

    def _packet_read(self) -> MQTTErrorCode:
        p: dict[str, Any] = self._c._in_packet  # type: ignore[assignment]
        if not p["have_remaining"]:
            rc = self._header(p)
            if rc is not None:
                return rc
            if p["command"] & 0xF0 == PUBLISH and p["remaining_length"] > self._limit:
                p[_SKIP] = True
        if p.get(_SKIP):
            return self._skip(p)
        return self._paho_read()

    def _recv(self, n: int) -> bytes | MQTTErrorCode:
        """Up to n bytes; the error code paho would return instead of raising."""
        try:
            data = self._c._sock_recv(n)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            # The same log line as paho's (drivers.mqtt._handshake reads it).
            self._c._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        with self._c._msgtime_mutex:  # bytes received: the keepalive counts from here
            self._c._last_bytes_received = paho.time_func()
        return data

    def _header(self, p: dict[str, Any]) -> MQTTErrorCode | None:
        """The command byte and remaining length, as paho reads them (None: complete)."""
        if p["command"] == 0:
            data = self._recv(1)
            if isinstance(data, MQTTErrorCode):
                return data
            p["command"] = data[0]
        while True:
            data = self._recv(1)
            if isinstance(data, MQTTErrorCode):
                return data
            p["remaining_count"].append(data[0])
            if len(p["remaining_count"]) > 4:
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
            p["remaining_length"] += (data[0] & 127) * p["remaining_mult"]
            p["remaining_mult"] *= 128
            if data[0] & 128 == 0:
                break
        p["have_remaining"] = 1
        p["to_process"] = p["remaining_length"]
        return None

    def _skip(self, p: dict[str, Any]) -> MQTTErrorCode:
        qos = (p["command"] & 0x06) >> 1
        packet: bytearray = p["packet"]
        for _ in range(MAX_CHUNKS):
            need = _head_need(packet, qos, self._c._protocol == paho.MQTTv5)
            if need > p["to_process"]:
                return MQTTErrorCode.MQTT_ERR_PROTOCOL  # a topic longer than its packet
            if need == 0 and p["to_process"] == 0:
                return self._skipped(p, qos)
            data = self._recv(need if need > 0 else min(CHUNK, p["to_process"]))
            if isinstance(data, MQTTErrorCode):
                return data
            p["to_process"] -= len(data)
            if need > 0:  # the head (topic, packet id, properties' length) is kept
                packet += data
        return MQTTErrorCode.MQTT_ERR_AGAIN  # more on the next read callback

    def _skipped(self, p: dict[str, Any], qos: int) -> MQTTErrorCode:
        packet = bytes(p["packet"])
        tlen = int.from_bytes(packet[:2], "big")
        topic = packet[2 : 2 + tlen].decode("utf-8", "replace")
        mid = int.from_bytes(packet[2 + tlen : 4 + tlen], "big") if qos else 0
        props = _varint(packet[2 + tlen + (2 if qos else 0) :])  # 0 in 3.1.1
        size = p["remaining_length"] - len(packet) - props  # the payload's
        self._c._in_packet = {  # as paho renews it (the keys checked by unguardable)
            "command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
            "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0,
        }  # fmt: skip
        self._on_oversize(topic, size)
        if qos == 1:
            return self._c._send_puback(mid)
        if qos == 2:
            return self._c._send_pubrec(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def _head_need(packet: bytearray, qos: int, v5: bool) -> int:
    """How many more bytes the head of a PUBLISH takes: the topic's length, the topic, the
    packet id (QoS 1 and 2) and, in MQTT 5, the properties' length (1 to 4 bytes)."""
    if len(packet) < 2:
        return 2 - len(packet)
    end = 2 + int.from_bytes(packet[:2], "big") + (2 if qos else 0)
    if v5:
        i = end
        while i < len(packet) and packet[i] & 128 and i - end < 3:
            i += 1
        end = i + 1
    return max(0, end - len(packet))


def _varint(data: bytes) -> int:
    """MQTT's variable byte integer at the start of data (0 when there is none)."""
    value, mult = 0, 1
    for b in data[:4]:
        value += (b & 127) * mult
        mult *= 128
        if not b & 128:
            break
    return value
