"""MQTT 5 uplink through a real mosquitto (our own, TLS, on a free port) that restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import MqttUplink as MqttUplinkConfig
from agent.store import Outbox
from agent.uplink import Delivery, MqttTransport, delivery
from tests.agent.store._drafts import draft
from tests.agent.uplink._running import Running, true, until
from tests.mosquitto import Certs, Collector, Mosquitto, make_certs

pytestmark = [pytest.mark.network, pytest.mark.slow]

UP = "broker"
GW = "gw-01"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def broker(tmp_path: Path, certs: Certs) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", certs=certs) as m:
        yield m


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(
        tmp_path / "outbox.db", gateway_id=GW, max_bytes=1 << 30, first_seq=1, uplinks=(UP,)
    ) as ob:
        yield ob


def cfg(broker: Mosquitto, **kw: Any) -> MqttUplinkConfig:
    assert broker.certs is not None
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": broker.port,
        "tls": {"ca_file": broker.certs.ca},
        "timeout_s": 2.0,
        "max_backoff_s": 0.5,
        "probe_interval_s": 0.3,
        "batch_size": 10,
    }
    base.update(kw)
    return MqttUplinkConfig(**base)


def mqtt(c: MqttUplinkConfig, outbox: Outbox) -> Delivery:
    return delivery(UP, MqttTransport(c, name=UP, gateway_id=GW), outbox, c)


async def pending(outbox: Outbox) -> int:
    return (await outbox.stats()).uplinks[UP].pending


async def test_delivers_over_tls_on_puback_through_a_broker_restart(
    broker: Mosquitto, outbox: Outbox
) -> None:
    collector = Collector(broker, f"edge-agent/{GW}/#")
    await collector.subscribe()
    first = await outbox.append([draft(i=i) for i in range(15)])
    async with Running(mqtt(cfg(broker), outbox)) as up:
        await until(lambda: _eq(pending(outbox), 0))
        await asyncio.to_thread(broker.stop)
        second = await outbox.append([draft(tier=1, i=100 + i) for i in range(10)])
        await until(lambda: true(up.status.consecutive_failures >= 1))
        await asyncio.sleep(1.0)
        assert await pending(outbox) == 10  # nothing counted without a PUBACK
        # While down it probes the broker between attempts (its state alternates between
        # "probing" and a retry in flight, so the count is what a test can rely on).
        assert up.status.probes_total >= 1
        await asyncio.to_thread(broker.start)  # same port, same persistence
        t0 = time.monotonic()
        await until(lambda: _eq(pending(outbox), 0))
        resumed_s = time.monotonic() - t0
    want = {r["alert_id"] for r in first + second}
    seen = await collector.collect(want)
    assert seen == want  # at least once each, through the restart
    topics = {t for t, _ in collector.messages}
    assert topics == {f"edge-agent/{GW}/severity"}
    assert resumed_s < 2.0, resumed_s
    assert up.status.delivered_total >= 25
    # A persistent session: a fixed client id, clean start off (mosquitto logs "c0").
    log = await asyncio.to_thread(broker.log.read_text)
    assert f"edge-agent-{GW}-{UP}" in log and "(p5, c0" in log, log[-2000:]


async def test_a_refusing_puback_is_never_counted_as_delivered(
    tmp_path: Path, certs: Certs, outbox: Outbox
) -> None:
    deny = "topic read edge-agent/#\n"  # anonymous clients may not publish there
    with Mosquitto(tmp_path / "acl-broker", certs=certs, acl=deny) as broker:
        await outbox.append([draft(i=i) for i in range(3)])
        async with Running(mqtt(cfg(broker), outbox)) as up:
            await until(lambda: true(up.status.consecutive_failures >= 2))
            assert await pending(outbox) == 3  # PUBACK 0x87: not delivered, not dead
            assert (await outbox.stats()).dead_lettered == 0
            assert "0x87" in (up.status.last_error or ""), up.status.last_error
            await asyncio.to_thread(broker.restart, acl="topic readwrite edge-agent/#\n")
            await until(lambda: _eq(pending(outbox), 0))


async def test_plain_mqtt_to_a_broker_down_at_start_waits_and_delivers(
    tmp_path: Path, outbox: Outbox
) -> None:
    broker = Mosquitto(tmp_path / "plain")  # not started yet
    c = MqttUplinkConfig(host="127.0.0.1", port=broker.port, tls=None, timeout_s=1.0,
                         max_backoff_s=0.5, probe_interval_s=0.2)  # fmt: skip
    await outbox.append([draft()])
    async with Running(mqtt(c, outbox)) as up:
        await until(lambda: true(up.status.consecutive_failures >= 2))
        assert "Connection refused" in (up.status.last_error or "")
        await asyncio.to_thread(broker.start)
        try:
            await until(lambda: _eq(pending(outbox), 0))
        finally:
            await asyncio.to_thread(broker.stop)


async def _eq(value: Any, expected: int) -> bool:
    return bool(await value == expected)
