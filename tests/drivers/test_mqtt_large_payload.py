"""A large JSON message within the size cap, against a real mosquitto: decoded as before,
but its body parsed off the event loop, so every other task (Modbus polls, the uplink,
/healthz) runs meanwhile. Parsed inline, a 60 MiB waveform held the loop for seconds."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading

import aiomqtt
import pytest

from drivers.mqtt import BrokerLink, BrokerSettings, MqttSensor, Route, Router
from drivers.mqtt._dispatch import OFFLOAD_BYTES
from drivers.payloads import Payload, load_decoder
from drivers.payloads._common import _unique_keys
from drivers.payloads._sliced_json import loads_sliced
from drivers.reading import Reading
from tests.drivers.test_mqtt_link import broker, link_running, until
from tests.mosquitto import Mosquitto, MqttProxy

pytestmark = [pytest.mark.network]
__all__ = ["broker"]  # the fixture

TOPIC = "plant/waveform/pump-7"
SAMPLES = 65_536  # the shipped decoder's most per axis


def _waveform(rng: random.Random) -> bytes:
    """Three full axes and a long field the decoder ignores: about 12 MiB of JSON."""
    axes = {a: [rng.uniform(-2, 2) for _ in range(SAMPLES)] for a in "xyz"}
    extra = [rng.uniform(-1, 1) for _ in range(400_000)]
    return json.dumps({"odr_hz": 25_600, "axes": axes, "spectrum": extra}).encode()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_large_waveform_is_decoded_while_the_loop_runs_on(
    broker: Mosquitto, protocol: str
) -> None:
    got: list[Reading] = []
    sensor = MqttSensor(
        "pump-7", decoder=load_decoder("waveform-json"), channels=["x", "y", "z"],
        stale_after_s=60, sink=got.append, broker="b", topic=TOPIC,
    )  # fmt: skip
    route = Route(TOPIC)
    route.add(sensor, None, None, 1)
    settings = BrokerSettings(
        id="b", host="127.0.0.1", port=broker.port, client_id=f"edge-large-{protocol}",
        protocol=protocol, max_payload_bytes=64 * 2**20, queue_max_bytes=64 * 2**20,
    )  # fmt: skip
    link = BrokerLink(settings, Router([route]))
    body = _waveform(random.Random(7))
    assert len(body) > 8 * OFFLOAD_BYTES
    # Loop turns seen between the link taking the message and the sensor decoding it: none
    # when the body is parsed on the loop.
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while sensor.messages_total == 0:
            if link.messages_total > 0:
                turns += 1
            await asyncio.sleep(0.002)

    async with link_running(link):
        await until(lambda: link.connected, 10)
        await asyncio.sleep(0.3)  # the SUBACK (the link is connected before it)
        ticking = asyncio.create_task(ticker())
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            await pub.publish(TOPIC, body, qos=1)
        await until(lambda: sensor.messages_total > 0, 60)
        await asyncio.wait([ticking], timeout=5)
    assert sensor.dropped == {}, sensor.status()
    assert sorted(r.channel for r in got) == ["x", "y", "z"]
    sent = json.loads(body)["axes"]
    for r in got:
        assert r.waveform is not None and list(r.waveform.samples) == sent[r.channel]
    assert turns >= 3, "the event loop stood still while the message was parsed"


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": [1, 2.5, -3e2, 4], "b": [[1, 2], [], {"c": null}], "d": "x,1"}',
        b"[1,2,]", b"[ ,1]", b"[1,,2]", b"[1 2]", b"[1,2", b'{"a": 1, "a": 2}',
        b"\xef\xbb\xbf[1]", b"[NaN, 1, 2]", b"[01, 2]", b"[" * 5000, b"\xff", b"[1] x",
        b"[null, 1, 2.5, 3]", b'[1, "x", 2, 3, 4]', b"[1, 2, null ,3 , 4 ]", b"[1, 2, null,]",
        b"[1, null 2, 3]", b"[ 1 , 2 , [3, 4], 5, 6 ]",
        b"[" * 400 + b"1" + b"]" * 400, b'{"a": ' * 400 + b"1" + b"}" * 400,
    ],
)  # fmt: skip
def test_sliced_parsing_gives_what_json_gives(text: bytes) -> None:
    """Same value, or an error where json.loads refuses (the decoder counts it malformed)."""
    try:
        expected: object = json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        expected = type(exc)
    try:
        got: object = loads_sliced(text, _unique_keys)
    except (ValueError, RecursionError) as exc:
        got = type(exc)
    if isinstance(expected, type):
        assert isinstance(got, type) and issubclass(got, ValueError) == issubclass(
            expected, ValueError
        )
    else:
        assert json.dumps(got) == json.dumps(expected)


def _parsers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mqtt-json[") and t.is_alive()]


async def test_a_stop_during_a_long_parse_ends_the_worker_thread(broker: Mosquitto) -> None:
    """A stop (SIGTERM, a reload removing the broker) while a large body is parsed: the
    link ends at once and so does its worker thread, which the interpreter's exit waits
    for (a parse of seconds left running would push `edge-agent run` past its stop budget,
    systemd then killing it)."""
    got: list[Reading] = []
    sensor = MqttSensor(
        "pump-7", decoder=load_decoder("generic-json"), channels=["x"], stale_after_s=60,
        sink=got.append, broker="b", topic=TOPIC,
    )  # fmt: skip
    route = Route(TOPIC)
    route.add(sensor, None, None, 1)
    settings = BrokerSettings(
        id="b", host="127.0.0.1", port=broker.port, client_id="edge-large-stop",
        max_payload_bytes=64 * 2**20, queue_max_bytes=64 * 2**20,
    )  # fmt: skip
    link = BrokerLink(settings, Router([route]))
    # Valid JSON of 40 MiB whose walk takes seconds (one member at a time).
    body = b'{"x": {"velocity_rms_mm_s": 1.5}, "flags": [' + b"true," * 8_000_000 + b"true]}"
    async with link_running(link):
        await until(lambda: link.connected, 10)
        await asyncio.sleep(0.3)  # the SUBACK (the link is connected before it)
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            await pub.publish(TOPIC, body, qos=1)
        await until(lambda: link.messages_total > 0 and _parsers(), 60)
        await asyncio.sleep(0.2)  # well into the parse
    assert sensor.messages_total == 0  # stopped before the parse ended: nothing decoded
    await until(lambda: not _parsers(), 2)


async def test_a_worker_that_raises_leaves_the_link_running(
    broker: Mosquitto, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker failing (out of memory on a small gateway, a bug): the message is decoded
    as before the worker existed, on the loop, and the link goes on; said once."""

    def fail(cls: type[Payload], raw: bytes, *args: object) -> Payload:
        raise MemoryError

    monkeypatch.setattr(Payload, "parsed_in_slices", classmethod(fail))
    caplog.set_level(logging.WARNING, logger="edge_agent.drivers.mqtt")
    got: list[Reading] = []
    sensor = MqttSensor(
        "pump-7", decoder=load_decoder("generic-json"), channels=["x"], stale_after_s=60,
        sink=got.append, broker="b", topic=TOPIC,
    )  # fmt: skip
    route = Route(TOPIC)
    route.add(sensor, None, None, 1)
    settings = BrokerSettings(
        id="b", host="127.0.0.1", port=broker.port, client_id="edge-large-raise",
        max_payload_bytes=64 * 2**20, queue_max_bytes=64 * 2**20,
    )  # fmt: skip
    link = BrokerLink(settings, Router([route]))
    body = json.dumps({"x": {"velocity_rms_mm_s": 1.5}, "pad": "p" * OFFLOAD_BYTES}).encode()
    async with link_running(link) as running:
        task = next(t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "BrokerLink.run")
        await until(lambda: link.connected, 10)
        await asyncio.sleep(0.3)
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            for _ in range(3):
                await pub.publish(TOPIC, body, qos=1)
        await until(lambda: sensor.messages_total >= 3 or task.done(), 20)
        assert not task.done(), task
        assert running.connected and running.connects_total == 1
    assert len(got) == 3
    said = [r for r in caplog.records if "worker" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_large_backlog_message_survives_a_drop_during_the_set_up(
    broker: Mosquitto, protocol: str
) -> None:
    """A persistent session's backlog is decoded while the link subscribes; the connection
    lost then (a blip at the SUBSCRIBE) ended the set-up and cancelled the large message's
    parse: the message, already acknowledged to the broker, was lost for good."""
    got: list[Reading] = []
    sensor = MqttSensor(
        "pump-7", decoder=load_decoder("generic-json"), channels=["x"], stale_after_s=60,
        sink=got.append, broker="b", topic=TOPIC,
    )  # fmt: skip
    route = Route(TOPIC)
    route.add(sensor, None, None, 1)
    async with MqttProxy(broker) as proxy:
        settings = BrokerSettings(
            id="b", host="127.0.0.1", port=proxy.port, client_id=f"edge-backlog-{protocol}",
            protocol=protocol, persistent=True, max_payload_bytes=64 * 2**20,
            queue_max_bytes=64 * 2**20,
        )  # fmt: skip
        link = BrokerLink(settings, Router([route]))
        async with link_running(link):
            await until(lambda: link.connected, 10)
            await asyncio.sleep(0.3)  # the SUBACK: the session holds the subscription
        link._stopped = False  # the same link runs again (a restarted agent)
        # 10 MB whose sliced parse takes seconds (a Python call per member): received
        # within a fraction of the 0.5 s before the cut, still parsing at it.
        body = b'{"x": {"velocity_rms_mm_s": 1.5}, "flags": [' + b"true," * 2_000_000 + b"1]}"
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            await pub.publish(TOPIC, body, qos=1)  # queued for the session while away
        proxy.cut_at_subscribe, proxy.cut_after_s = 1, 0.5  # mid-parse of the backlog
        async with link_running(link):
            await until(lambda: proxy.cuts == 1, 30)
            # The cut fell mid-parse: the worker started on the body, no message decoded yet.
            assert link._parser is not None and sensor.messages_total == 0
            await until(lambda: link.connected and sensor.messages_total > 0, 60)
    assert [r.features["velocity_rms_mm_s"] for r in got] == [1.5]
