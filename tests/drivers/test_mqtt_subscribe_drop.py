"""A broker that closes the connection at one filter's SUBSCRIBE (mosquitto does for a
filter it takes as malformed), against a real mosquitto: that filter is quarantined and
reported, the others stay subscribed. Before, the link reconnected, subscribed and was
dropped again without end, every sensor of the broker silent."""

from __future__ import annotations

import asyncio
import logging
import time

import aiomqtt
import pytest

from drivers.mqtt import BrokerLink, BrokerSettings, MqttSensor, Route, Router, _subscriptions
from drivers.payloads import load_decoder
from drivers.reading import Reading
from tests.drivers.test_mqtt_link import broker, link_running, until
from tests.mosquitto import Mosquitto

pytestmark = [pytest.mark.network]
__all__ = ["broker"]  # the fixture

GOOD, BAD = "plant/ok/fan-1", "plant/bad/\x01fan-2"  # mosquitto drops us for U+0001


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_filter_the_broker_drops_us_for_is_quarantined_and_the_rest_heard(
    broker: Mosquitto, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.drivers.mqtt")
    got: list[Reading] = []
    sensors, routes = {}, []
    for topic in (GOOD, BAD):
        sensors[topic] = MqttSensor(
            topic, decoder=load_decoder("generic-json"), channels=["x"], stale_after_s=60,
            sink=got.append, broker="b", topic=topic,
        )  # fmt: skip
        routes.append(Route(topic))
        routes[-1].add(sensors[topic], None, None, 1)
    settings = BrokerSettings(
        id="b", host="127.0.0.1", port=broker.port, client_id=f"edge-drop-{protocol}",
        protocol=protocol, connect_timeout_s=3,
    )  # fmt: skip
    link = BrokerLink(settings, Router(routes))
    async with link_running(link), aiomqtt.Client("127.0.0.1", broker.port) as pub:
        deadline = time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            await pub.publish(GOOD, b'{"x": {"velocity_rms_mm_s": 1.5}}', qos=1)
            await asyncio.sleep(0.2)
        assert len(got) >= 5, f"the good sensor got {len(got)} readings: {link.status()}"
        await until(lambda: link.connected, 5)
        connects = link.connects_total
        await asyncio.sleep(1.0)
        assert link.connected and link.connects_total == connects  # no more reconnecting
        status = link.status()
    assert list(status["quarantined_subscriptions"]) == [BAD]
    assert status["refused_subscriptions"][BAD].startswith("quarantined: ")
    assert status["subscriptions"] == {GOOD: 1, BAD: 1}  # configured, one held back
    assert "quarantined" in (sensors[BAD].last_error or "")
    assert sensors[GOOD].last_error is None
    said = [r for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(said) == 1 and repr(BAD) in said[0].getMessage()


async def test_a_quarantined_filter_is_asked_again_ever_less_often(
    broker: Mosquitto, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The filter the broker really drops us for is asked for again after its back-off,
    quarantined again with a longer one (bounded), logged as an error only the first
    time; the good sensor is heard throughout."""
    # Production: 60 s, 5 min doubled up to 1 h; the same path in a fraction of a second.
    monkeypatch.setattr(_subscriptions, "REFUSED_SUB_RETRY_S", 0.2)
    monkeypatch.setattr(_subscriptions, "QUARANTINE_RETRY_S", 0.3)
    # The bound leaves the good sensor a connected stretch between re-asks even on a loaded
    # machine (at 0.6 s its publishes fell into the reconnects once in a loaded run).
    monkeypatch.setattr(_subscriptions, "QUARANTINE_RETRY_MAX_S", 2.0)
    caplog.set_level(logging.WARNING, logger="edge_agent.drivers.mqtt")
    got: list[Reading] = []
    routes = []
    for topic in (GOOD, BAD):
        sensor = MqttSensor(
            topic, decoder=load_decoder("generic-json"), channels=["x"], stale_after_s=60,
            sink=got.append, broker="b", topic=topic,
        )  # fmt: skip
        routes.append(Route(topic))
        routes[-1].add(sensor, None, None, 1)
    settings = BrokerSettings(
        id="b", host="127.0.0.1", port=broker.port, client_id="edge-drop-again",
        connect_timeout_s=3,
    )  # fmt: skip
    link = BrokerLink(settings, Router(routes))
    async with link_running(link), aiomqtt.Client("127.0.0.1", broker.port) as pub:
        await until(lambda: link._quarantines.get(BAD, None) is not None, 20)
        await until(lambda: link._quarantines[BAD].rounds >= 4, 60)
        await until(lambda: link.connected and BAD in link.quarantined, 10)
        heard = len(got)
        await until(lambda: link.connected, 10)
        for _ in range(100):
            await pub.publish(GOOD, b'{"x": {"velocity_rms_mm_s": 1.5}}', qos=1)
            await asyncio.sleep(0.1)
            if len(got) > heard:
                break
        held = link._quarantines[BAD]
    assert len(got) > heard, "the good sensor was not heard between the re-asks"
    # Waits double from 0.3 s and stop at the bound (jittered 0.8-1.0).
    assert held.due - time.monotonic() <= 2.0
    errors = [r for r in caplog.records if "quarantined" in r.getMessage()]
    assert errors[0].levelno == logging.ERROR
    assert all(r.levelno == logging.WARNING for r in errors[1:]) and len(errors) >= 4
