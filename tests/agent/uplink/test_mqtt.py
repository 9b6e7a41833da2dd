"""MQTT 5 uplink through a real mosquitto (our own, TLS, on a free port) that restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import MqttUplink as MqttUplinkConfig
from agent.health import render_metrics
from agent.store import Outbox
from agent.uplink import Delivery, MqttTransport, delivery
from agent.uplink._mqtt_limits import DROPS_TO_REFUSE, publish_size
from tests.agent.store._drafts import draft
from tests.agent.uplink._running import Running, true, until
from tests.mosquitto import (
    Certs,
    Collector,
    Mosquitto,
    MqttProxy,
    assert_nothing_outlives,
    cancel_after,
    make_certs,
)

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
        # A subscriber (its session kept through the restart): once publishing is allowed,
        # the PUBACK is 0x00, not 0x10 "no matching subscribers" (not a delivery either).
        await Collector(broker, f"edge-agent/{GW}/#").subscribe()
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
    # Nobody subscribes: this test is about the connection, so a PUBACK 0x10 counts here.
    c = MqttUplinkConfig(host="127.0.0.1", port=broker.port, tls=None, timeout_s=1.0,
                         max_backoff_s=0.5, probe_interval_s=0.2,
                         require_subscriber=False)  # fmt: skip
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


LIMIT = 4096  # bytes: a broker's max_packet_size, far below one large alert's packet


def in_first_arrival_order(collector: Collector) -> list[str]:
    """The alert ids the collector received, each where it first arrived."""
    order: list[str] = []
    for _topic, rec in collector.messages:
        if rec["alert_id"] not in order:
            order.append(rec["alert_id"])
    return order


async def one_large_among_small(
    broker: Mosquitto, outbox: Outbox
) -> tuple[Collector, list[str], str]:
    """A subscribed collector and 15 stored alerts, the 4th of tens of KB (its evidence):
    the ids the collector must get, in order, and the large one's id."""
    collector = Collector(broker, f"edge-agent/{GW}/#")
    await collector.subscribe()
    drafts = [draft(i=i) for i in range(3)]
    drafts.append(draft(i=3, spectrum="x" * 20_000))
    drafts += [draft(i=4 + i) for i in range(12)]
    records = await outbox.append(drafts)
    big = records[3]["alert_id"]
    return collector, [r["alert_id"] for r in records if r["alert_id"] != big], big


async def test_a_record_over_the_brokers_maximum_packet_size_is_dead_lettered_not_looped(
    tmp_path: Path, certs: Certs, outbox: Outbox
) -> None:
    with Mosquitto(tmp_path / "small", certs=certs, max_packet_size=LIMIT) as broker:
        collector, want, big = await one_large_among_small(broker, outbox)
        async with Running(mqtt(cfg(broker), outbox)) as up:
            await until(lambda: _eq(pending(outbox), 0))
        seen = await collector.collect(set(want))
        log = await asyncio.to_thread(broker.log.read_text)
    [dead] = await outbox.dead_letters()
    assert dead["id"] == big and dead["uplink"] == UP
    reason = dead["reason"]
    assert reason.startswith("MQTT packet too large: ") and f"maximum packet size {LIMIT}" in reason
    assert seen == set(want) and in_first_arrival_order(collector) == want  # in order
    assert up.status.dead_lettered_total == 1 and up.status.too_large_total == 1
    assert up.status.delivered_total == len(want)
    # Never sent: the broker never had to cut the connection, the uplink never failed.
    assert up.status.failures_total == 0, up.status.last_error
    assert "oversize" not in log, log[-2000:]
    metrics = render_metrics({"uplinks": [asdict(up.status)]}).decode()
    assert f'edge_uplink_too_large_total{{uplink="{UP}"}} 1.0' in metrics
    assert f'edge_uplink_dead_lettered_total{{uplink="{UP}"}} 1.0' in metrics


def plain(port: int, **kw: Any) -> MqttUplinkConfig:
    base: dict[str, Any] = {"host": "127.0.0.1", "port": port, "tls": None, "timeout_s": 2.0,
                            "max_backoff_s": 0.5, "probe_interval_s": 0.3,
                            "batch_size": 10}  # fmt: skip
    return MqttUplinkConfig(**(base | kw))


async def test_a_limit_the_broker_does_not_announce_dead_letters_after_three_drops_in_a_row(
    tmp_path: Path, outbox: Outbox
) -> None:
    with Mosquitto(tmp_path / "plain") as broker:
        collector, want, big = await one_large_among_small(broker, outbox)
        async with MqttProxy(broker, LIMIT) as proxy:
            async with Running(mqtt(plain(proxy.port), outbox)) as up:
                await until(lambda: _eq(pending(outbox), 0), timeout_s=30)
            cuts = proxy.cuts
        seen = await collector.collect(set(want))
    [dead] = await outbox.dead_letters()
    assert dead["id"] == big and dead["uplink"] == UP
    assert dead["reason"].startswith("MQTT packet too large: ") and "3 times" in dead["reason"]
    assert seen == set(want) and in_first_arrival_order(collector) == want
    assert up.status.too_large_total == 1 and up.status.delivered_total == len(want)
    # Sent three times (one more when the first drop, before any PUBACK, was laid on an
    # earlier alert): neither we nor paho (at reconnect) sent it again after.
    assert DROPS_TO_REFUSE <= cuts <= DROPS_TO_REFUSE + 1, cuts


async def test_a_puback_0x95_from_mosquitto_dead_letters_the_record_after_three_drops(
    tmp_path: Path, certs: Certs, outbox: Outbox
) -> None:
    # mosquitto's message_size_limit (not announced) answers a larger publish with PUBACK
    # 0x95, which MQTT 5 does not allow in a PUBACK: paho takes it for a protocol error
    # and closes the connection. The same record every time: it is the record's doing.
    with Mosquitto(tmp_path / "limit", certs=certs, message_size_limit=LIMIT) as broker:
        collector, want, big = await one_large_among_small(broker, outbox)
        async with Running(mqtt(cfg(broker), outbox)) as up:
            await until(lambda: _eq(pending(outbox), 0), timeout_s=30)
        seen = await collector.collect(set(want))
        log = await asyncio.to_thread(broker.log.read_text)
    [dead] = await outbox.dead_letters()
    assert dead["id"] == big and dead["uplink"] == UP
    assert dead["reason"].startswith("MQTT packet too large: ") and "3 times" in dead["reason"]
    assert seen == set(want) and in_first_arrival_order(collector) == want
    assert up.status.too_large_total == 1 and up.status.delivered_total == len(want)
    refusals = log.count("Dropped too large PUBLISH")
    assert DROPS_TO_REFUSE <= refusals <= DROPS_TO_REFUSE + 1, refusals


def more_delivered(up: Delivery, n: int) -> Callable[[], Awaitable[bool]]:
    """A condition for `until`: n more alerts delivered than now."""
    at = up.status.delivered_total + n

    async def cond() -> bool:
        return up.status.delivered_total >= at

    return cond


def held_times(proxy: MqttProxy, alert_id: str, n: int) -> Callable[[], Awaitable[bool]]:
    """A condition for `until`: the proxy held this alert n times."""

    async def cond() -> bool:
        return proxy.held.count(alert_id) >= n

    return cond


class Listener:
    """A subscriber online throughout (persistent session, back within 0.1 s of a drop):
    what a kill -9 of the broker cannot lose once the broker has forwarded it."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.ids: list[str] = []
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        assert self.broker.certs is not None
        context = ssl.create_default_context(cafile=str(self.broker.certs.ca))
        while True:
            client = aiomqtt.Client("127.0.0.1", self.broker.port, identifier="test-listener",
                                    protocol=aiomqtt.ProtocolVersion.V5, clean_start=False,
                                    properties=props, tls_context=context)  # fmt: skip
            try:
                async with client:
                    await client.subscribe(f"edge-agent/{GW}/#", qos=1)
                    async for msg in client.messages:
                        self.ids.append(json.loads(bytes(msg.payload))["alert_id"])  # type: ignore[arg-type]
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    async def __aenter__(self) -> Listener:
        self.task = asyncio.create_task(self._run())
        await until(
            lambda: true(
                self.broker.log.exists() and "test-listener" in self.broker.log.read_text()
            )
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_a_broker_killed_during_delivery_dead_letters_nothing(
    tmp_path: Path, certs: Certs, outbox: Outbox
) -> None:
    n, batch = 300, 5
    # Each alert larger than the one before: the one in flight at a kill is always larger
    # than anything the broker acknowledged, so only the outage rule keeps it alive.
    records = await outbox.append([draft(i=i, spectrum="y" * (8000 + 100 * i)) for i in range(n)])
    acked_at_kill: list[int] = []
    with Mosquitto(tmp_path / "kill", certs=certs) as broker:
        async with Listener(broker) as listener:
            await asyncio.to_thread(broker.restart)  # the listener's session is now on disk
            async with Running(mqtt(cfg(broker, batch_size=batch), outbox)) as up:
                for pause_s in (1.0, 0.0, 0.0, 0.0):  # down a while, then back at once
                    await until(more_delivered(up, 20), timeout_s=30)
                    await until(lambda: true(up.status.state == "sending"))  # in flight
                    if await pending(outbox) == 0:
                        break
                    await asyncio.to_thread(broker.kill)
                    acked_at_kill.append(up.status.delivered_total)
                    await asyncio.sleep(pause_s)
                    await asyncio.to_thread(broker.start)
                await until(lambda: _eq(pending(outbox), 0), timeout_s=60)
                want = [r["alert_id"] for r in records]

                def missing() -> list[int]:
                    return [int(i.rsplit("-", 1)[1]) for i in set(want) - set(listener.ids)]

                def lost_at_kills() -> bool:  # missing (if any): only what a kill can lose
                    return all(
                        any(at - 2 * batch < seq <= at + 2 * batch for at in acked_at_kill)
                        for seq in missing()
                    )

                # Until the rest has arrived: waiting for all of it waited the whole 10 s
                # whenever a kill lost some.
                with contextlib.suppress(AssertionError):
                    await until(lambda: true(lost_at_kills()), timeout_s=10)
    assert len(acked_at_kill) >= 3, acked_at_kill  # the kills landed during delivery
    # Nothing was dead-lettered: every alert acknowledged, each counted once.
    assert (await outbox.stats()).dead_lettered == 0
    assert up.status.dead_lettered_total == 0 and up.status.delivered_total == n
    # End to end, all arrived but what mosquitto held in memory when killed (it saves its
    # state on a clean stop only): a few alerts acknowledged just before a kill.
    assert lost_at_kills(), (missing(), acked_at_kill)


async def test_drops_right_after_one_alert_while_the_broker_dies_each_time_dead_letter_nothing(
    tmp_path: Path, outbox: Outbox
) -> None:
    # The broker is killed DROPS_TO_REFUSE + 1 times in a row while the same alert is in
    # flight (the proxy holds it: sent, never acknowledged) and is back within a fraction
    # of a second: the pattern of a limit nobody announces, but each drop is an outage.
    records = await outbox.append([draft(i=i, spectrum="y" * 100 * i) for i in range(30)])
    with Mosquitto(tmp_path / "dies") as broker:
        async with MqttProxy(broker) as proxy:
            proxy.holding = True
            # No subscriber (a killed broker keeps no session): PUBACK 0x10 counts here.
            c = plain(proxy.port, require_subscriber=False)
            async with Running(mqtt(c, outbox)) as up:
                for episode in range(1, DROPS_TO_REFUSE + 2):
                    await until(held_times(proxy, records[0]["alert_id"], episode))
                    await asyncio.to_thread(broker.kill)
                    await asyncio.to_thread(broker.start)
                proxy.holding = False
                await until(lambda: _eq(pending(outbox), 0), timeout_s=20)
    assert proxy.held.count(records[0]["alert_id"]) >= DROPS_TO_REFUSE + 1, proxy.held
    assert (await outbox.stats()).dead_lettered == 0
    assert up.status.dead_lettered_total == 0 and up.status.delivered_total == len(records)


async def test_the_packet_size_is_counted_exactly_at_the_brokers_limit(
    tmp_path: Path, certs: Certs, outbox: Outbox
) -> None:
    # Two alerts one byte apart; the broker's limit is the first one's PUBLISH size.
    [fits, over] = await outbox.append([draft(i=1, pad="z" * 5000), draft(i=2, pad="z" * 5001)])
    items = await outbox.next_batch(UP, 2)
    transport = MqttTransport(cfg(Mosquitto(tmp_path / "unused", certs=certs)), name=UP,
                              gateway_id=GW)  # fmt: skip
    sizes = [publish_size(transport.topic(it), it.json, transport._props) for it in items]
    assert sizes[1] == sizes[0] + 1
    with Mosquitto(tmp_path / "exact", certs=certs, max_packet_size=sizes[0]) as broker:
        # About sizes, with no subscriber: a PUBACK 0x10 counts as delivered here.
        async with Running(mqtt(cfg(broker, require_subscriber=False), outbox)) as up:
            await until(lambda: _eq(pending(outbox), 0))
    [dead] = await outbox.dead_letters()
    assert dead["id"] == over["alert_id"], dead
    assert f"{sizes[1]} bytes, over the broker's maximum packet size {sizes[0]}" in dead["reason"]
    assert up.status.delivered_total == 1 and fits["alert_id"] != dead["id"]


async def test_an_uplink_cancelled_while_connecting_leaves_no_connection_behind(
    broker: Mosquitto, outbox: Outbox
) -> None:
    """A stop or a reload cancels a send in the middle of its connect (paho connects in a
    thread no cancellation stops): nothing outlives it, neither aiomqtt's housekeeping task
    nor a session under our client id that would take the next connection's place."""
    await outbox.append([draft(i=0)])
    items = await outbox.next_batch(UP, 1)
    before = asyncio.all_tasks()
    for i in range(40):  # cancelled 0-10 ms after start: before, during and after CONNECT
        transport = MqttTransport(cfg(broker, require_subscriber=False), name=UP, gateway_id=GW)
        async with transport:
            await cancel_after(asyncio.create_task(transport.send(items)), i / 4000)
    await assert_nothing_outlives(before, broker.port)


async def test_a_broker_wanting_a_client_certificate_says_so_at_once(
    tmp_path: Path, certs: Certs, outbox: Outbox
) -> None:
    """mosquitto require_certificate true and no cert_file: the error names the fix within
    the connect, not "timed out" after it (TLS 1.3 sends the alert after the handshake)."""
    await outbox.append([draft(i=0)])
    with Mosquitto(tmp_path / "mtls", certs=certs, require_certificate=True) as broker:
        async with Running(mqtt(cfg(broker, timeout_s=20.0), outbox)) as up:
            t0 = time.monotonic()
            await until(lambda: true(up.status.last_error is not None))
            took = time.monotonic() - t0
    error = up.status.last_error or ""
    assert "the server asks for a client certificate: set cert_file and key_file" in error, error
    assert took < 15, took


async def test_a_connection_that_reads_no_puback_is_replaced_and_the_alert_delivered(
    tmp_path: Path, outbox: Outbox
) -> None:
    """The guard for a deaf connection, whatever made it so (a lost add_reader: see
    drivers.mqtt._sockets): no PUBACK within timeout_s is a failure, the connection is
    closed and a new one delivers the alert (passed before: a guard)."""
    with Mosquitto(tmp_path / "deaf") as broker:
        c = plain(broker.port, timeout_s=1.0, require_subscriber=False)
        transport = MqttTransport(c, name=UP, gateway_id=GW)
        await outbox.append([draft(i=0)])
        async with Running(delivery(UP, transport, outbox, c)) as up:
            await until(lambda: _eq(pending(outbox), 0))
            client = transport._client
            assert client is not None
            # Deaf: the loop no longer reads the socket; it still looks connected.
            asyncio.get_running_loop().remove_reader(client._client.socket().fileno())
            await outbox.append([draft(i=1)])
            await until(lambda: _eq(pending(outbox), 0), timeout_s=10)
            assert up.status.delivered_total == 2
            # It failed on the missing PUBACK (not on a connect): the deaf link was seen.
            assert up.status.failures_total >= 1
            assert "publishing to" in (up.status.last_error or ""), up.status.last_error
