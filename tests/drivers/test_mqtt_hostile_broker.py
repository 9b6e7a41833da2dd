"""The broker link against brokers that misbehave on purpose: one that takes the TCP
connection and never answers CONNECT."""

from __future__ import annotations

import asyncio

import pytest

from drivers.mqtt import BrokerLink, BrokerSettings, MqttSensor, Route, Router
from drivers.payloads import load_decoder
from tests.drivers.test_mqtt_link import until

pytestmark = [pytest.mark.network]


class _Mute:
    """A TCP server that takes every connection, reads what comes and never answers."""

    def __init__(self) -> None:
        self.accepted = 0
        self.ended = 0  # connections the client closed

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while await reader.read(4096):
                pass
        finally:
            self.ended += 1
            writer.close()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        self._server.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_broker_that_never_sends_connack_is_named_and_tried_again(protocol: str) -> None:
    mute = _Mute()
    port = await mute.start()
    sensor = MqttSensor(
        "fan-3", decoder=load_decoder("ncd-processed"), channels=["z"], stale_after_s=60,
        sink=lambda r: None, broker="b", topic="t/x",
    )  # fmt: skip
    route = Route("t/x")
    route.add(sensor, None, None, 1)
    settings = BrokerSettings(
        id="b", host="127.0.0.1", port=port, client_id="edge-t", protocol=protocol,
        connect_timeout_s=0.3, reconnect_max_s=0.1,
    )  # fmt: skip
    link = BrokerLink(settings, Router([route]))
    task = asyncio.create_task(link.run())
    try:
        await until(lambda: mute.accepted >= 3, 10)
        # Each attempt's connection is closed before the next: never more than one open.
        await until(lambda: mute.ended >= mute.accepted - 1, 5)
        assert not link.connected and link.connects_total == 0
        assert "no CONNACK within 0.3 s" in (link.last_error or "")
        assert link.status()["last_error"] == link.last_error
    finally:
        link.stop()
        task.cancel()
        await asyncio.wait([task], timeout=5)
        mute.close()
