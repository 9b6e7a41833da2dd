"""A good subscription is never silenced for good by a broker that crashes while the
link subscribes, against a real mosquitto killed (SIGKILL) and started again at the
SUBSCRIBE: the drop looks like a broker refusing the filter, so the filter may be
quarantined, but it is asked for again later (bounded back-off) and its sensor heard.
Before, it stayed quarantined until someone reloaded the agent."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import pytest

from drivers.mqtt import BrokerLink, BrokerSettings, MqttSensor, Route, Router, _subscriptions
from drivers.payloads import load_decoder
from drivers.reading import Reading
from tests.drivers.test_mqtt_link import broker, link_running, until
from tests.mosquitto import Mosquitto, MqttProxy

pytestmark = [pytest.mark.network]
__all__ = ["broker"]  # the fixture

TOPIC = "plant/ok/fan-1"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_good_filter_struck_by_broker_crashes_is_heard_again(
    broker: Mosquitto, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Production waits minutes; the test the same path in a fraction of a second.
    monkeypatch.setattr(_subscriptions, "REFUSED_SUB_RETRY_S", 0.3)
    monkeypatch.setattr(_subscriptions, "QUARANTINE_RETRY_S", 0.5, raising=False)
    got: list[Reading] = []
    sensor = MqttSensor(
        TOPIC, decoder=load_decoder("generic-json"), channels=["x"], stale_after_s=60,
        sink=got.append, broker="b", topic=TOPIC,
    )  # fmt: skip
    route = Route(TOPIC)
    route.add(sensor, None, None, 1)
    async with MqttProxy(broker) as proxy:
        proxy.crash_at_subscribe = 2  # the broker dies at the first two SUBSCRIBEs
        settings = BrokerSettings(
            id="b", host="127.0.0.1", port=proxy.port, client_id=f"edge-crash-{protocol}",
            protocol=protocol, connect_timeout_s=3,
        )  # fmt: skip
        link = BrokerLink(settings, Router([route]))
        async with link_running(link):
            deadline = time.monotonic() + 40
            while not got and time.monotonic() < deadline:
                if proxy.crashes == 2 and not proxy.crash_at_subscribe:
                    async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
                        await pub.publish(TOPIC, b'{"x": {"velocity_rms_mm_s": 1.5}}', qos=1)
                await asyncio.sleep(0.3)
            status = link.status()
    assert proxy.crashes == 2
    assert got, f"the good sensor was never heard after the broker's crashes: {status}"
    assert status["quarantined_subscriptions"] == {}
    assert sensor.last_error is None


async def test_one_crash_during_a_batch_does_not_make_every_filter_a_round_trip(
    broker: Mosquitto,
) -> None:
    """The broker crashing once while many filters are in flight: they are asked for
    together again, not one SUBSCRIBE and one round trip each (2000 sensors over a 40 ms
    link: 80 s of sensors unsubscribed, each lone SUBSCRIBE a chance for the next blip to
    strike a good filter)."""
    got: list[Reading] = []
    routes = []
    topics = [f"plant/line-{i}/fan" for i in range(40)]
    for topic in topics:
        sensor = MqttSensor(
            topic, decoder=load_decoder("generic-json"), channels=["x"], stale_after_s=60,
            sink=got.append, broker="b", topic=topic,
        )  # fmt: skip
        routes.append(Route(topic))
        routes[-1].add(sensor, None, None, 1)
    async with MqttProxy(broker) as proxy:
        proxy.crash_at_subscribe = 1
        settings = BrokerSettings(
            id="b", host="127.0.0.1", port=proxy.port, client_id="edge-batch",
            protocol="3.1.1", connect_timeout_s=3,
        )  # fmt: skip
        link = BrokerLink(settings, Router(routes))
        async with link_running(link):
            await until(lambda: proxy.crashes == 1, 20)
            await until(lambda: link.connects_total == 2 and link.connected, 20)
            await asyncio.sleep(0.5)  # the set-up's SUBSCRIBEs and SUBACKs
            async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
                for topic in topics:
                    await pub.publish(topic, b'{"x": {"velocity_rms_mm_s": 1.5}}', qos=1)
            await until(lambda: len(got) == len(topics), 20)
            status = link.status()
    assert status["quarantined_subscriptions"] == {} and link.connects_total == 2
    # One SUBSCRIBE for the 40 (MQTT 3.1.1 batches them) and the broker's $SYS drop
    # counter's. Before: 40 lone SUBSCRIBEs, one round trip each.
    assert proxy.subscribes == 2
    assert not link._suspects
