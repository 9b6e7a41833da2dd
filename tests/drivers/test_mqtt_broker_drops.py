"""Messages the broker drops before they reach us (real mosquitto): its $SYS counter is
watched and reported, a broker without it shows "unknown", never an error."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import aiomqtt
import pytest

from agent.health_mqtt import mqtt_metrics
from drivers.mqtt import BrokerLink
from drivers.mqtt._broker_drops import MAX_VALUE, BrokerDrops, parse_counter
from tests.drivers.test_mqtt_link import TOPIC, Rig, ncd, publish, until
from tests.drivers.test_mqtt_link_faults import DYNSEC, _Dynsec
from tests.mosquitto import Mosquitto, MqttProxy

pytestmark = [pytest.mark.network]

LOGGER = "edge_agent.drivers.mqtt"
# Small limits: 5 in flight (unacknowledged) and 10 queued per client; the rest dropped.
LIMITS = ("sys_interval 1", "max_inflight_messages 5", "max_queued_messages 10")
BURST = 60  # per burst: 60 - 5 - 10 = 45 dropped while our client is paused


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING
    ]


def _dropped(link: BrokerLink) -> int:
    return int(link.status()["broker_dropped_total"] or 0)


def _metric(status: dict[str, object]) -> list[float]:
    families = {m.name: m for m in mqtt_metrics({"mqtt": [status]})}
    return [s.value for s in families["edge_mqtt_broker_dropped"].samples]


async def test_drops_by_the_broker_for_a_slow_client_are_counted_and_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with Mosquitto(tmp_path / "b", extra=LIMITS) as broker:
        async with MqttProxy(broker) as proxy:
            rig = Rig(broker, port=proxy.port)
            async with rig.running() as link:
                await until(lambda: link.status()["broker_drops"] == "watching", 5)
                assert link.status()["broker_dropped_total"] == 0  # the retained baseline
                for n in (1, 2):
                    proxy.pause()  # our client reads nothing, acknowledges nothing
                    await publish(broker.port, [(TOPIC, ncd(float(v))) for v in range(BURST)])
                    proxy.resume()
                    await until(lambda g=15 * n: len(rig.got) >= g, 10)
                    await until(lambda d=45 * n: _dropped(link) >= d, 10)
                status = link.status()
    # 120 published, 30 delivered: the 90 the broker dropped are visible now.
    assert len(rig.got) == 30
    assert status["messages_total"] == 30  # the $SYS messages are no readings
    assert 90 <= status["broker_dropped_total"] <= 2 * BURST
    assert _metric(status) == [float(status["broker_dropped_total"])]
    warned = [m for m in _warnings(caplog) if "dropped" in m]
    assert len(warned) == 1, warned  # one per episode, not one per $SYS update
    assert "broker-wide" in warned[0] and "max_queued_messages" in warned[0]
    assert " b at " in warned[0]  # names the broker


async def test_a_broker_without_sys_shows_unknown_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with Mosquitto(tmp_path / "b", extra=("sys_interval 0",)) as broker:
        rig = Rig(broker)
        async with rig.running() as link:
            await publish(broker.port, [(TOPIC, ncd(1.0))])
            await until(lambda: rig.got, 5)
            status = link.status()
    assert status["broker_dropped_total"] is None and status["broker_drops"] == "waiting"
    assert status["last_error"] is None and not status["refused_subscriptions"]
    assert _metric(status) == []  # absent: unknown, not 0
    assert _warnings(caplog) == []


async def test_turned_off_it_is_not_subscribed(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "b", extra=("sys_interval 1",)) as broker:
        rig = Rig(broker, sys_dropped_topic=None)
        async with rig.running() as link:
            await publish(broker.port, [(TOPIC, ncd(1.0))])
            await until(lambda: rig.got, 5)
            status = link.status()
    assert status["broker_drops"] == "off" and status["broker_dropped_total"] is None
    assert "$SYS/broker/publish/messages/dropped" not in broker.log.read_text()


async def _broker_drops_some(port: int) -> None:
    """An offline persistent client's queue (max_queued_messages 10) overflows: the broker
    drops messages and publishes its new $SYS dropped counter at the next sys_interval."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="ghost", clean_session=False) as c:
        await c.subscribe("ghost/t", qos=1)
    await publish(port, [("ghost/t", "x")] * 30)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_turned_off_on_a_persistent_session_the_old_subscription_is_removed(
    tmp_path: Path, protocol: str
) -> None:
    # The broker kept the earlier run's $SYS subscription in the session: its updates kept
    # coming, counted as sensor messages, with the watch turned off.
    limits = ("sys_interval 1", "max_queued_messages 10")
    with Mosquitto(tmp_path / "b", extra=limits) as broker:
        first = Rig(broker, persistent=True, protocol=protocol)
        async with first.running() as link:
            await until(lambda: link.status()["broker_drops"] == "watching", 5)
        again = Rig(broker, persistent=True, protocol=protocol, sys_dropped_topic=None)
        async with (
            again.running() as link,
            aiomqtt.Client("127.0.0.1", broker.port) as watcher,
        ):
            await watcher.subscribe("$SYS/broker/publish/messages/dropped")
            await _broker_drops_some(broker.port)
            async with asyncio.timeout(5):  # the broker published a new count...
                async for message in watcher.messages:
                    if parse_counter(message.payload):
                        break
            await asyncio.sleep(0.3)  # ...which reached every subscriber by now
            assert link.status()["messages_total"] == 0


@pytest.mark.skipif(not Path(DYNSEC).exists(), reason=f"{DYNSEC} is missing (mosquitto)")
async def test_a_refused_sys_subscription_is_said_once_at_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with _Dynsec(tmp_path / "acl") as broker:
        rig = Rig(broker, username="gw", password="secret")
        async with rig.running() as link:
            await until(lambda: link.status()["broker_drops"] == "refused", 5)
            status = link.status()
    assert status["broker_dropped_total"] is None and _metric(status) == []
    said = [r for r in caplog.records if "$SYS" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    # The sensor's own refused subscription is still the error it was.
    assert list(status["refused_subscriptions"]) == ["ncd/vibration/+"]


def test_the_counter_is_parsed_within_bounds(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_counter(b"45") == 45 and parse_counter(b" 7\n") == 7
    for bad in (b"", b"-1", b"1e9", b"4 5", b"\xd9\xa3", b"9" * 25, str(MAX_VALUE).encode()):
        assert parse_counter(bad) is None, bad
    drops = BrokerDrops("b", "mqtt://x:1", "$SYS/broker/publish/messages/dropped")
    drops.connected()
    drops.observe(b"100")  # the baseline: drops before we came are not ours
    drops.observe(b"garbage")  # ignored, counted, logged once
    drops.observe(b"x" * 10_000)
    drops.observe(b"130")
    drops.observe(b"5")  # went back (a reset): a new baseline, nothing counted
    drops.observe(b"8")
    assert drops.dropped_total == 33 and drops.bad_values == 2
    drops.connected()
    drops.observe(b"50")  # a new connection: a new baseline
    assert drops.dropped_total == 33


async def test_the_drop_warning_names_the_sensor_that_floods_the_broker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # One sensor at 5000 messages/s beside 1999 at 1 Hz (QoS 1, mosquitto's defaults):
    # the broker dropped 27516 messages, the quiet sensors got 18 % of theirs, and the
    # warning said only "a sensor floods the broker", not which one.
    from drivers.mqtt import BrokerSettings, MqttSensor, Route, Router
    from drivers.payloads import load_decoder
    from drivers.reading import Reading

    caplog.set_level(logging.INFO, logger=LOGGER)
    got: list[Reading] = []
    routes = []
    for name in ("quiet-1", "noisy-7", "quiet-2"):
        sensor = MqttSensor(name, decoder=load_decoder("ncd-processed"), channels=["z"],
                            stale_after_s=60, sink=got.append, broker="b",
                            topic=f"plant/{name}")  # fmt: skip
        route = Route(f"plant/{name}")
        route.add(sensor, None, None, 1)
        routes.append(route)
    with Mosquitto(tmp_path / "b", extra=LIMITS) as broker:
        async with MqttProxy(broker) as proxy:
            settings = BrokerSettings(id="b", host="127.0.0.1", port=proxy.port, client_id="e")
            link = BrokerLink(settings, Router(routes))
            task = asyncio.create_task(link.run())
            try:
                await until(lambda: link.status()["broker_drops"] == "watching", 5)
                proxy.pause()
                items = [("plant/noisy-7", ncd(float(v))) for v in range(BURST)]
                await publish(broker.port, [("plant/quiet-1", ncd(1.0)), *items,
                                            ("plant/quiet-2", ncd(1.0))])  # fmt: skip
                proxy.resume()
                await until(lambda: _dropped(link) >= 45, 10)
            finally:
                link.stop()
                task.cancel()
                await asyncio.wait([task], timeout=5)
    warned = [m for m in _warnings(caplog) if "dropped" in m]
    assert len(warned) == 1, warned
    assert re.search(r"\d+ \(\d+ %\) were on plant/noisy-7", warned[0]), warned[0]
