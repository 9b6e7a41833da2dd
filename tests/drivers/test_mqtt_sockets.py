"""paho's socket in the event loop's selector when the loop lags behind paho's connect
thread (drivers.mqtt._sockets), against a real mosquitto."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.mqtt import HandshakeAware
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
