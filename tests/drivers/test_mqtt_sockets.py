"""paho's socket in the event loop's selector when the loop lags behind paho's connect
thread (drivers.mqtt._sockets), against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from drivers.mqtt import (
    BrokerLink,
    BrokerSettings,
    HandshakeAware,
    MqttSensor,
    Route,
    Router,
    parse_key_from,
)
from drivers.payloads import load_decoder
from drivers.reading import Reading
from tests.mosquitto import Mosquitto

pytestmark = [pytest.mark.network]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


def _opened_then_closed_off_loop(client: HandshakeAware, port: int) -> socket.socket:
    """What paho's connect thread does to a socket it gives up: opened, then closed,
    before the (lagging) loop ran the add queued at the open."""
    sock = socket.create_connection(("127.0.0.1", port))
    client._on_socket_open(client._client, None, sock)
    client._on_socket_close(client._client, None, sock)
    return sock


async def test_a_socket_closed_before_the_lagging_loop_added_it_does_not_cost_the_next_one(
    broker: Mosquitto,
) -> None:
    client = HandshakeAware("127.0.0.1", broker.port, identifier="lag", timeout=2.0)
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    old = await asyncio.to_thread(_opened_then_closed_off_loop, client, broker.port)
    await asyncio.sleep(0.1)  # the loop catches up with what was queued
    fd = old.fileno()
    old.close()  # the connect thread's sock.close(): this fd number is free again
    # The next connection (same fd number, the lowest free one) is read and written: its
    # CONNACK and the PUBACK arrive. It read nothing (the selector kept the closed socket's
    # key, its add_reader failed with ENOENT) and timed out.
    async with asyncio.timeout(5):
        async with client:
            assert client._client.socket().fileno() == fd  # the case: the number reused
            await client.publish("t/lag", b"x", qos=1, timeout=2.0)
    assert not errors, [(e["message"], repr(e.get("exception"))) for e in errors]


MAC = "00:13:a2:00:41:9b:0c:01"
KEEPALIVE_S = 1


async def _until(pred: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        await asyncio.sleep(0.02)


async def test_a_link_that_reads_nothing_while_connected_reconnects_within_two_keepalives(
    broker: Mosquitto,
) -> None:
    """The guard for a deaf link, whatever made it so: paho pings after a keepalive without
    a byte received and gives the connection up after a second one; the link reconnects
    and its sensor hears again (passed before: a guard)."""
    got: list[Reading] = []
    sensor = MqttSensor(
        "fan-3", decoder=load_decoder("ncd-processed"), channels=["z"], stale_after_s=60,
        sink=got.append, broker="b", topic="ncd/vibration/+",
    )  # fmt: skip
    route = Route("ncd/vibration/+")
    route.add(sensor, parse_key_from("payload:addr"), MAC, 1)
    settings = BrokerSettings(
        id="b", host="127.0.0.1", port=broker.port, client_id="deaf", keepalive_s=KEEPALIVE_S
    )
    link = BrokerLink(settings, Router([route]))
    task = asyncio.create_task(link.run())
    body = json.dumps({"addr": MAC, **{f"{a}_velocity_mm_sec": 1.0 for a in "xyz"}})
    try:
        await _until(lambda: link.status()["connected"], 10)
        client = link._client
        assert client is not None
        # Deaf: the loop no longer reads the socket (as after a lost add_reader).
        asyncio.get_running_loop().remove_reader(client._client.socket().fileno())
        await _until(lambda: link.status()["connects_total"] >= 2, 2 * KEEPALIVE_S + 3)
        heard = len(got)
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            deadline = time.monotonic() + 5
            while len(got) == heard:  # published until heard: subscribed again by then
                assert time.monotonic() < deadline, "the sensor is not heard again"
                await pub.publish(f"ncd/vibration/{MAC}", body, qos=1)
                await asyncio.sleep(0.1)
    finally:
        link.stop()
        task.cancel()
        await asyncio.wait([task], timeout=5)
