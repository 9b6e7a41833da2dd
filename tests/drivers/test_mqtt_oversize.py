"""Messages over the size cap against a real mosquitto: counted on their sensor, logged
once with the size and the cap, acknowledged, and the next message decoded."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest

from drivers.mqtt import BrokerLink, BrokerSettings, MqttSensor, Route, Router
from drivers.mqtt._oversize import HEADROOM, PAHO_VERSION
from drivers.payloads import load_decoder
from drivers.reading import Reading
from tests.drivers.test_mqtt_link import TOPIC, broker, link_running, ncd, until
from tests.mosquitto import Certs, Mosquitto, make_certs

pytestmark = [pytest.mark.network]
__all__ = ["broker"]  # the fixture

CAP = 4096


def _link(
    broker: Mosquitto, got: list[Reading], **settings: object
) -> tuple[BrokerLink, MqttSensor]:
    """One sensor on its own topic (QoS 2 asked: each message comes at its own QoS)."""
    sensor = MqttSensor(
        "fan-3", decoder=load_decoder("ncd-processed"), channels=["z"], stale_after_s=60,
        sink=got.append, broker="b", topic=TOPIC,
    )  # fmt: skip
    route = Route(TOPIC)
    route.add(sensor, None, None, 2)
    s = {"id": "b", "host": "127.0.0.1", "port": broker.port, "client_id": "edge-t", **settings}
    return BrokerLink(BrokerSettings(**s), Router([route])), sensor  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(
    link: BrokerLink, got: list[Reading], port: int, **pub_kw: Any
) -> AsyncIterator[None]:
    """The link running, its subscription made (a reading came through: then forgotten).
    `pub_kw`: aiomqtt.Client's arguments for the publisher (tls_context)."""
    async with link_running(link):
        await until(lambda: link.connected, 10)
        deadline = time.monotonic() + 10
        async with aiomqtt.Client("127.0.0.1", port, **pub_kw) as pub:
            while not got and time.monotonic() < deadline:
                await pub.publish(TOPIC, ncd(0.5), qos=1)
                with contextlib.suppress(AssertionError):
                    await until(lambda: got, 0.2)
        assert got, "the link's subscription never delivered"
        got.clear()
        yield


async def _sent(port: int, bodies: list[tuple[str | bytes, int]], **pub_kw: Any) -> None:
    """Each (body, qos) published on TOPIC, in order, by a client of its own."""
    async with aiomqtt.Client("127.0.0.1", port, **pub_kw) as pub:
        for body, qos in bodies:
            await pub.publish(TOPIC, body, qos=qos)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_oversized_messages_are_counted_acked_and_the_next_one_decoded(
    broker: Mosquitto, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """25 messages far over the cap (more than mosquitto's 20 in flight), at each QoS, then
    a normal one. Telling an MQTT 5 broker our maximum packet size made it drop them
    uncounted but keep the QoS 1/2 ones in flight: after 20 it sent nothing more."""
    caplog.set_level(logging.WARNING, logger="edge_agent.drivers.mqtt")
    got: list[Reading] = []
    link, sensor = _link(broker, got, protocol=protocol, max_payload_bytes=CAP)
    big = json.dumps({"pad": "x" * (CAP + HEADROOM + 50_000)})
    async with running(link, got, broker.port):
        await _sent(broker.port, [(big, (1, 2, 0)[i % 3]) for i in range(25)] + [(ncd(2.0), 1)])
        await until(lambda: got, 5)
    assert [r.features["velocity_rms_mm_s"] for r in got] == [2.0]
    assert dict(sensor.dropped) == {"too_large": 25}
    logged = [r.getMessage() for r in caplog.records if "too_large" in r.getMessage()]
    assert len(logged) == 1 and f"> {CAP}" in logged[0] and "fan-3" in logged[0]
    assert f"{len(big)} bytes" in logged[0]


async def test_a_message_just_over_the_cap_is_counted_too(broker: Mosquitto) -> None:
    """Within the room for topic and properties, paho assembles it: the cap still holds."""
    got: list[Reading] = []
    link, sensor = _link(broker, got, max_payload_bytes=CAP)
    async with running(link, got, broker.port):
        await _sent(broker.port, [(json.dumps({"pad": "x" * CAP}), 1), (ncd(3.0), 1)])
        await until(lambda: got, 5)
    assert dict(sensor.dropped) == {"too_large": 1}
    assert [r.features["velocity_rms_mm_s"] for r in got] == [3.0]


async def test_the_largest_cap_allowed_connects(broker: Mosquitto) -> None:
    """max_payload_bytes 64MiB (the configuration's upper bound) once made a Maximum Packet
    Size over MQTT's limit: paho raised, and the link's task ended for good."""
    got: list[Reading] = []
    link, _ = _link(broker, got, max_payload_bytes=64 * 2**20, queue_max_bytes=64 * 2**20)
    async with running(link, got, broker.port):
        await _sent(broker.port, [(ncd(4.0), 1)])
        await until(lambda: got, 5)
    assert link.connects_total == 1


class _Renamed(paho.Client):
    """paho as a minor release might change it: a private method the guard calls renamed
    (paho's own QoS 2 path would use the new name; the test sends QoS 0 and 1)."""

    @property
    def _send_pubrec(self) -> Any:
        raise AttributeError("_send_pubrec")


class _NewKey(paho.Client):
    """paho keeping one more thing in its packet in progress (the guard's reset would
    lose it)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._in_packet["properties"] = None


@pytest.mark.parametrize(
    ("client", "why"), [(_Renamed, "no _send_pubrec"), (_NewKey, "_in_packet has other keys")]
)
async def test_a_paho_whose_internals_differ_keeps_its_own_reader(
    broker: Mosquitto,
    client: type[paho.Client],
    why: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The guard replaces paho's private reader: after a paho upgrade that changed it, the
    guard is not installed (said once), messages over the cap are assembled by paho and
    dropped by the cap, and every other message is read as before."""
    monkeypatch.setattr(paho, "Client", client)  # aiomqtt builds its paho client so
    caplog.set_level(logging.WARNING, logger="edge_agent.drivers.mqtt")
    got: list[Reading] = []
    link, sensor = _link(broker, got, max_payload_bytes=CAP)
    big = json.dumps({"pad": "x" * (CAP + HEADROOM + 50_000)})
    async with running(link, got, broker.port):
        assert link._client is not None and isinstance(link._client._client, client)
        assert "_packet_read" not in vars(link._client._client)  # paho's own reader
        await _sent(broker.port, [(big, 1), (big, 0), (ncd(2.0), 1)])
        await until(lambda: got, 5)
    link._build(None, None)  # a rebuilt client (a credential refused): not said again
    assert [r.features["velocity_rms_mm_s"] for r in got] == [2.0]
    assert dict(sensor.dropped) == {"too_large": 2}
    said = [r.getMessage() for r in caplog.records if "guard not installed" in r.getMessage()]
    assert said == [
        f"mqtt broker b: oversize guard not installed: paho {PAHO_VERSION} internals differ "
        f"({why}); messages over the cap (max_payload_bytes {CAP}) are assembled then dropped"
    ]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_oversized_messages_over_tls_are_read_past_too(
    tmp_path: Path, certs: Certs, protocol: str
) -> None:
    """Over TLS the guard reads the decrypted stream: a read may stop inside a TLS record
    (the rest held by the SSL object, the socket not readable) or find no whole record
    yet (SSLWantReadError). Each QoS, then a normal message right behind the last one."""
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    got: list[Reading] = []
    big = json.dumps({"pad": "x" * (CAP + HEADROOM + 300_000)})
    with Mosquitto(tmp_path / "tls", certs=certs) as broker:
        link, sensor = _link(
            broker, got, protocol=protocol, max_payload_bytes=CAP, tls=True, ca_file=certs.ca
        )
        async with running(link, got, broker.port, tls_context=ctx):
            assert link._client is not None and "_packet_read" in vars(link._client._client)
            bodies = [(big, (1, 2, 0)[i % 3]) for i in range(24)] + [(ncd(2.5), 1)]
            await _sent(broker.port, bodies, tls_context=ctx)
            await until(lambda: got, 10)
    assert [r.features["velocity_rms_mm_s"] for r in got] == [2.5]
    assert dict(sensor.dropped) == {"too_large": 24}
    assert link.connects_total == 1


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_oversized_qos2_messages_complete_their_flow(
    broker: Mosquitto, protocol: str
) -> None:
    """A QoS 2 message read past is answered PUBREC; the broker's PUBREL for a packet id
    paho never saw must still get its PUBCOMP, or each stays in the broker's in-flight
    window (20 in mosquitto) and the 21st stops all delivery."""
    got: list[Reading] = []
    link, sensor = _link(broker, got, protocol=protocol, max_payload_bytes=CAP)
    big = json.dumps({"pad": "x" * (CAP + HEADROOM + 1000)})
    async with running(link, got, broker.port):
        await _sent(broker.port, [(big, 2)] * 30 + [(ncd(5.0), 2)])
        await until(lambda: got, 5)
    assert [r.features["velocity_rms_mm_s"] for r in got] == [5.0]
    assert dict(sensor.dropped) == {"too_large": 30}


async def test_packets_at_the_guards_boundary(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """MQTT 3.1.1, QoS 1 (no properties: the packet's length is known exactly): one byte
    over the guard's limit is read past, its payload's size told right; one at the limit
    is assembled by paho and dropped by the cap; the next message is decoded."""
    caplog.set_level(logging.WARNING, logger="edge_agent.drivers.mqtt")
    got: list[Reading] = []
    link, sensor = _link(broker, got, protocol="3.1.1", max_payload_bytes=CAP)
    at_limit = CAP + HEADROOM - (2 + len(TOPIC) + 2)  # remaining length == the limit
    async with running(link, got, broker.port):
        await _sent(broker.port, [(b"x" * (at_limit + 1), 1), (b"x" * at_limit, 1), (ncd(6.0), 1)])
        await until(lambda: got, 5)
    assert [r.features["velocity_rms_mm_s"] for r in got] == [6.0]
    assert dict(sensor.dropped) == {"too_large": 2}
    logged = [r.getMessage() for r in caplog.records if "too_large" in r.getMessage()]
    assert len(logged) == 1 and f"{at_limit + 1} bytes" in logged[0], logged
