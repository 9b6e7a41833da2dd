"""The broker link when the broker or its publishers misbehave (real mosquitto): a
subscription the broker refuses, a retained reading replayed at every reconnect, a QoS 1
message delivered twice, readings out of order."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from agent.health_mqtt import mqtt_metrics
from agent.reading_queue import ReadingQueue
from agent.runtime import PipelineCounters
from drivers.mqtt import BrokerLink, BrokerSettings, MqttSensor, Route, Router, parse_key_from
from drivers.payloads import load_decoder
from drivers.reading import Reading
from tests.drivers.test_mqtt_link import MAC, TOPIC, Rig, broker, link_running, ncd, publish, until
from tests.mosquitto import Mosquitto, MqttProxy, assert_nothing_outlives, cancel_after

pytestmark = [pytest.mark.network]
__all__ = ["broker"]  # the fixture

DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


class _Dynsec(Mosquitto):
    """A broker whose ACL (mosquitto's dynamic security plugin) lets user gw subscribe to
    ncd/allowed/# only; a refused subscription gets SUBACK 0x87 (v5) or 0x80 (3.1.1)."""

    def _conf(self) -> Path:
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101)
        acl = [{"acltype": "subscribePattern", "topic": "ncd/allowed/#", "allow": True}]
        rules = {
            "clients": [{
                "username": "gw", "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(), "iterations": 101,
                "roles": [{"rolename": "gw"}],
            }],
            "roles": [{"rolename": "gw", "acls": acl}],
            "defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True,
                                 "subscribe": False, "unsubscribe": True},
        }  # fmt: skip
        (self.folder / "dynsec.json").write_text(json.dumps(rules))
        conf = super()._conf()
        text = conf.read_text() + f"plugin {DYNSEC}\n"
        conf.write_text(text + f"plugin_opt_config_file {self.folder / 'dynsec.json'}\n")
        return conf


@pytest.mark.skipif(not Path(DYNSEC).exists(), reason=f"{DYNSEC} is missing (mosquitto)")
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_subscription_the_broker_refuses_is_reported_not_silent(
    tmp_path: Path, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    with _Dynsec(tmp_path / "acl") as broker:
        rig = Rig(broker, username="gw", password="secret", protocol=protocol)
        caplog.set_level(logging.ERROR, logger="edge_agent.drivers.mqtt")
        async with rig.running() as link:
            await until(lambda: link.status()["refused_subscriptions"], 5)
            status = link.status()
    # Without this the sensor would only look stale, for no reason anyone could see.
    refused = status["refused_subscriptions"]
    assert list(refused) == ["ncd/vibration/+"]
    assert refused["ncd/vibration/+"] in ("Not authorized", "Unspecified error")
    assert "refused" in (status["last_error"] or "")
    assert rig.sensor.last_error is not None and "refused" in rig.sensor.last_error
    assert any("refused" in r.getMessage() for r in caplog.records)
    families = {m.name: m for m in mqtt_metrics({"mqtt": [status]})}
    [sample] = families["edge_mqtt_subscription_refused"].samples
    assert sample.labels == {"broker": "b", "topic": "ncd/vibration/+"} and sample.value == 1


async def retain(port: int, topic: str, body: str) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as c:
        await c.publish(topic, body, qos=1, retain=True)


def stamped(v: float, at: str) -> str:
    return json.dumps({"addr": MAC, "timestamp": at, **{f"{a}_velocity_mm_sec": v for a in "xyz"}})


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_retained_reading_is_not_analysed_again_at_every_reconnect(
    broker: Mosquitto, protocol: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    rig = Rig(broker, protocol=protocol)
    async with rig.running() as link:
        # The gateway publishes its readings retained, then the broker restarts: at the
        # resubscription the broker replays the last one.
        await retain(broker.port, TOPIC, stamped(2.0, now.isoformat()))
        await retain(broker.port, TOPIC, ncd(3.0))  # and one without a time of its own
        await until(lambda: len(rig.got) == 2, 5)
        silent = rig.sensor.silent_for_s
        await asyncio.sleep(0.3)
        broker.restart()
        await until(lambda: link.connects_total == 2, 10)
        await asyncio.sleep(0.5)
    assert rig.values() == [2.0, 3.0], "the replayed reading was analysed a second time"
    # MQTT 5 asks for no retained copies; 3.1.1 gets one and drops it.
    assert dict(rig.sensor.dropped) == ({} if protocol == "5" else {"retained": 1})
    # ...and it does not make a silent sensor look alive.
    assert rig.sensor.silent_for_s > silent + 0.5


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_persistent_session_gets_every_retained_reading_sent_while_away_in_order(
    broker: Mosquitto, protocol: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    at = [(now + timedelta(seconds=s)).isoformat() for s in (-3, -2, -1)]
    rig = Rig(broker, persistent=True, protocol=protocol)
    async with rig.running():
        pass
    for v, t in zip((1.0, 2.0, 3.0), at, strict=True):
        await retain(broker.port, TOPIC, stamped(v, t))
    # In 3.1.1 the broker replays the retained copy of 3.0 before the three it queued.
    replayed = 0 if protocol == "5" else 1  # MQTT 5 asks for no retained copies
    async with rig.running():
        await until(lambda: len(rig.got) == 3 and rig.sensor.dropped["retained"] == replayed, 5)
        await asyncio.sleep(0.2)
    assert rig.values() == [1.0, 2.0, 3.0]
    assert dict(rig.sensor.dropped) == ({"retained": 1} if replayed else {})


async def test_readings_out_of_order_or_delivered_twice_are_dropped_not_analysed(
    broker: Mosquitto,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    at = [(now + timedelta(seconds=s)).isoformat() for s in (-7200, -1, 0, 1)]
    rig = Rig(broker)
    async with rig.running():
        await publish(broker.port, [
            (TOPIC, stamped(2.0, at[2])),
            (TOPIC, stamped(2.0, at[2])),  # a QoS 1 redelivery: the same message again
            (TOPIC, stamped(9.0, at[0])),  # two hours back: would reset the trend history
            (TOPIC, stamped(8.0, at[1])),
            (TOPIC, stamped(2.5, at[2])),  # the same second, another reading: kept
            (TOPIC, stamped(3.0, at[3])),
        ])  # fmt: skip
        await until(lambda: sum(rig.sensor.dropped.values()) + len(rig.got) == 6, 5)
    assert rig.values() == [2.0, 2.5, 3.0]
    assert [r.timestamp for r in rig.got] == sorted(r.timestamp for r in rig.got)
    assert dict(rig.sensor.dropped) == {"duplicate": 1, "out_of_order": 2}


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_overlapping_subscriptions_deliver_a_message_once(
    broker: Mosquitto, protocol: str
) -> None:
    # One sensor on its exact topic, others behind the wildcard that also matches it: over
    # MQTT 5 the broker sends one copy per matching subscription.
    got: list[Reading] = []
    exact = MqttSensor(
        "fan-3", decoder=load_decoder("ncd-processed"), channels=["z"], stale_after_s=60,
        sink=got.append, broker="b", topic=TOPIC,
    )  # fmt: skip
    other = MqttSensor(
        "fan-4", decoder=load_decoder("ncd-processed"), channels=["z"], stale_after_s=60,
        sink=got.append, broker="b", topic="ncd/vibration/+",
    )  # fmt: skip
    one, shared = Route(TOPIC), Route("ncd/vibration/+")
    one.add(exact, None, None, 1)
    shared.add(other, parse_key_from("payload:addr"), "00:00:00:00:00:00:00:02", 1)
    base = {"id": "b", "host": "127.0.0.1", "port": broker.port, "client_id": "edge-o"}
    link = BrokerLink(BrokerSettings(**base, protocol=protocol), Router([one, shared]))
    async with link_running(link):
        await until(lambda: link.connected, 10)
        await asyncio.sleep(0.3)
        await publish(broker.port, [(TOPIC, ncd(1.0)), (TOPIC, ncd(2.0))])
        await until(lambda: len(got) >= 2, 5)
        await asyncio.sleep(0.5)
    assert [(r.sensor_id, r.features["velocity_rms_mm_s"]) for r in got] == [
        ("fan-3", 1.0),
        ("fan-3", 2.0),
    ], "a reading was analysed once per matching subscription"


@pytest.mark.skipif(not Path(DYNSEC).exists(), reason=f"{DYNSEC} is missing (mosquitto)")
async def test_a_refused_subscription_makes_the_agent_degraded_and_status_says_why(
    tmp_path: Path,
) -> None:
    from agent.config import load_config
    from agent.inspect import _line
    from agent.runtime import Agent

    with _Dynsec(tmp_path / "acl") as broker:
        path = tmp_path / "agent.yaml"
        path.write_text(
            json.dumps({
                "gateway": {"id": "gw-acl"},
                "assets": [{"id": "fan-3", "machine": {"standard": "iso10816-3", "group": 2,
                            "foundation": "rigid", "rpm": 1480}}],
                "mqtt": [{"id": "plant", "host": "127.0.0.1", "port": broker.port,
                          "username": "gw", "password": "secret"}],
                "sensors": [{"id": "fan-3-ncd", "asset": "fan-3", "channels": ["z"],
                             "mqtt": {"broker": "plant", "topic": TOPIC,
                                      "decoder": "ncd-processed"}}],
                "store": {"path": str(tmp_path / "outbox.db")},
                "health": {"port": 0},
                "control": {"socket": str(tmp_path / "control.sock")},
            })
        )  # fmt: skip
        config = load_config(path)
        agent = Agent(config)
        task = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(10):
                await agent.ready.wait()
            await until(lambda: agent.mqtt.links[0].refused, 5)
            snap = await agent.snapshot()
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)
    # The sensor is only "starting" for its first stale_after_s (300 s): without this the
    # agent would say ok for five minutes while nothing can ever arrive.
    assert snap["status"] == "degraded"
    line = _line(config, snap, None, {})
    assert f"mqtt broker plant refused the subscription to {TOPIC}" in line, line


async def test_a_link_cancelled_while_connecting_leaves_no_client_behind(
    broker: Mosquitto,
) -> None:
    """A stop or a reload cancels a link in the middle of its connect (paho connects in a
    thread no cancellation stops, and aiomqtt's asyncio.wait_for loses a cancel that lands
    as the CONNACK or SUBACK arrives, on Python 3.11): the link ends, and nothing outlives
    it, neither aiomqtt's housekeeping task nor a connection holding our client id (it
    would take the broker's messages)."""
    before = asyncio.all_tasks()
    for i in range(60):  # cancelled 0-15 ms after start: before, during and after CONNECT
        await cancel_after(asyncio.create_task(Rig(broker).link.run()), i / 4000)
    await assert_nothing_outlives(before, broker.port)


async def test_a_flooding_sensor_cannot_crowd_its_neighbours_out_of_the_analysis_queue(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    # Both sensors feed the agent's one bounded analysis queue; the analysis is behind (not
    # running yet) while one publisher sends thousands of messages in a tight loop.
    counters = PipelineCounters()
    queue = ReadingQueue(100, counters)
    routes = []
    for sid in ("flood", "quiet"):
        sensor = MqttSensor(
            sid, decoder=load_decoder("ncd-processed"), channels=["z"], stale_after_s=60,
            sink=queue.put, broker="b", topic=f"t/{sid}",
        )  # fmt: skip
        route = Route(f"t/{sid}")
        route.add(sensor, None, None, 1)
        routes.append(route)
    base = {"id": "b", "host": "127.0.0.1", "port": broker.port, "client_id": "edge-t"}
    link = BrokerLink(BrokerSettings(**base), Router(routes))
    caplog.set_level(logging.WARNING, logger="agent.reading_queue")
    async with link_running(link):
        await until(lambda: link.status()["connected"], 10)
        await asyncio.sleep(0.2)
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            for i in range(2000):
                await c.publish("t/flood", ncd(1.0), qos=1 if i == 1999 else 0)
                if i % 400 == 399:
                    await c.publish("t/quiet", ncd(2.0), qos=1)
        await until(lambda: link.status()["messages_total"] >= 1990, 10)
        # The quiet sensor's last QoS 1 message may still be on its way behind the flood.
        with contextlib.suppress(AssertionError):  # the assertion below says what is missing
            await until(lambda: queue._held["quiet"] >= 5, 5)
    queued: list[Reading] = []
    while queue.depth:
        queued.append(queue._queue.get_nowait())
    held = Counter(r.sensor_id for r in queued)
    assert held["quiet"] == 5, f"the quiet sensor's readings were crowded out: {held}"
    assert held["flood"] == 75  # its share of the queue; the rest dropped and counted
    assert counters.readings_dropped_total >= 1900
    assert len([r for r in caplog.records if "flood" in r.getMessage()]) == 1, "logged once"


async def test_a_backlog_of_hours_old_readings_does_not_make_a_dead_sensor_look_alive(
    broker: Mosquitto,
) -> None:
    # A gateway flushes what it buffered while its uplink was down: readings of a sensor
    # that died meanwhile. They are history (analysed in order) but no sign of life.
    now = datetime.now(UTC).replace(microsecond=0)
    backlog = [(now - timedelta(hours=2, seconds=-s)).isoformat() for s in (0, 60, 120)]
    rig = Rig(broker)  # stale_after_s=60
    async with rig.running():
        await publish(broker.port, [(TOPIC, stamped(float(i), at)) for i, at in enumerate(backlog)])
        await until(lambda: len(rig.got) == 3, 5)
        assert rig.sensor.state == "stale", "a 2 h old backlog made the sensor look alive"
        assert rig.sensor.silent_for_s > 7000
        assert rig.sensor.timing["late"] == 3
        assert "backlog" in (rig.sensor.last_error or "")
        status = rig.sensor.status()
        assert status["timing"] == {"late": 3} and status["state"] == "stale"
        # A fresh reading is the sign of life.
        await publish(broker.port, [(TOPIC, stamped(5.0, datetime.now(UTC).isoformat()))])
        await until(lambda: len(rig.got) == 4, 5)
        assert rig.sensor.state == "ok" and rig.sensor.silent_for_s < 30
    assert rig.values() == [0.0, 1.0, 2.0, 5.0]
    assert not rig.sensor.dropped


async def test_a_sensor_whose_clock_is_steadily_behind_is_learned_not_called_stale(
    broker: Mosquitto,
) -> None:
    # A live sensor whose clock lags 3 s, with stale_after_s 1: its lag is learned while
    # its messages flow (the floor rises by the time between messages), so it is "ok"
    # afterwards, not stale forever (which would raise a false sensor_fault alert).
    rig = Rig(broker)
    rig.sensor.stale_after_s = 1.0
    async with rig.running():
        deadline = time.monotonic() + 10.0
        for i in range(40):  # bounded: 40 messages, 0.25 s apart, at most 10 s
            at = (datetime.now(UTC) - timedelta(seconds=3)).isoformat()
            await publish(broker.port, [(TOPIC, stamped(float(i), at))])
            await until(lambda n=i + 1: len(rig.got) == n, 5)
            if i >= 24 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        assert rig.sensor.state == "ok", rig.sensor.last_error
        assert rig.sensor.silent_for_s < 1.0
    assert not rig.sensor.dropped


async def test_a_reading_stamped_minutes_ahead_does_not_make_the_next_ones_out_of_order(
    broker: Mosquitto,
) -> None:
    # One reading from a sensor whose clock ran 4 minutes ahead (inside the 5 minutes the
    # decoders accept), then correctly stamped ones: before, all of those were dropped as
    # out_of_order until real time passed the bad stamp.
    now = datetime.now(UTC)
    ahead = (now + timedelta(minutes=4)).isoformat()
    rig = Rig(broker)
    async with rig.running():
        await publish(broker.port, [(TOPIC, stamped(1.0, ahead))])
        await until(lambda: len(rig.got) == 1, 5)
        later = [datetime.now(UTC) + timedelta(milliseconds=ms) for ms in (1, 2, 3)]
        await publish(broker.port, [(TOPIC, stamped(v, at.isoformat())) for v, at in
                                    zip((2.0, 3.0, 4.0), later, strict=True)])  # fmt: skip
        await until(lambda: len(rig.got) + sum(rig.sensor.dropped.values()) == 4, 5)
    assert rig.values() == [1.0, 2.0, 3.0, 4.0]
    assert not rig.sensor.dropped
    assert rig.sensor.timing == {"clock_ahead": 1}
    # The first reading took its arrival time, so time only moves forward in the analysis.
    assert rig.got[0].timestamp < now + timedelta(seconds=10)
    assert [r.timestamp for r in rig.got] == sorted(r.timestamp for r in rig.got)


async def test_a_clock_near_the_ahead_threshold_loses_no_reading(broker: Mosquitto) -> None:
    # A sensor clock about 2 s ahead with a varying network delay: reading A looks 1.9 s
    # ahead and keeps its stamp; B, measured later, looks 2.5 s ahead and took its arrival
    # time, earlier than A's stamp: it was dropped as out_of_order.
    now = datetime.now(UTC)
    rig = Rig(broker)
    async with rig.running():
        await publish(
            broker.port, [(TOPIC, stamped(1.0, (now + timedelta(seconds=1.9)).isoformat()))]
        )
        await until(lambda: len(rig.got) == 1, 5)
        await publish(
            broker.port, [(TOPIC, stamped(2.0, (now + timedelta(seconds=2.5)).isoformat()))]
        )
        await until(lambda: len(rig.got) + sum(rig.sensor.dropped.values()) == 2, 5)
    assert rig.values() == [1.0, 2.0]
    assert not rig.sensor.dropped
    assert rig.got[0].timestamp < rig.got[1].timestamp  # time still only moves forward


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_qos1_redelivery_of_a_reading_without_a_timestamp_is_analysed_once(
    broker: Mosquitto, protocol: str
) -> None:
    # The link dies after the agent took a message but before its PUBACK reached the
    # broker (a cellular link dropping): the persistent session sends it again, flagged
    # DUP, with the same packet id. Without a timestamp in the payload the time check
    # cannot tell it from a new reading.
    async with MqttProxy(broker) as proxy:
        rig = Rig(broker, port=proxy.port, persistent=True, protocol=protocol)
        async with rig.running() as link:
            proxy.holding_acks = True
            await publish(broker.port, [(TOPIC, ncd(1.0))])
            await until(lambda: len(rig.got) == 1 and proxy.acks_held == 1, 5)
            proxy.holding_acks = False
            proxy.cut()
            await until(lambda: link.connects_total == 2, 10)
            await until(lambda: rig.sensor.messages_total == 2, 5)
            # The same bytes published again are a new reading, and analysed.
            await publish(broker.port, [(TOPIC, ncd(1.0))])
            await until(lambda: rig.sensor.messages_total == 3, 5)
    assert rig.values() == [1.0, 1.0], "the redelivered copy was analysed a second time"
    assert dict(rig.sensor.dropped) == {"duplicate": 1}


def _sensors(n: int, got: list[Reading]) -> tuple[list[Route], list[MqttSensor]]:
    """n NCD sensors on plant/s<i>/data, each on its own route, all readings into `got`."""
    routes, sensors = [], []
    for i in range(n):
        topic = f"plant/s{i}/data"
        s = MqttSensor(f"s{i}", decoder=load_decoder("ncd-processed"), channels=["z"],
                       stale_after_s=60, sink=got.append, broker="b", topic=topic)  # fmt: skip
        route = Route(topic)
        route.add(s, None, None, 1)
        routes.append(route)
        sensors.append(s)
    return routes, sensors


async def _retain_each(port: int, n: int) -> None:
    """A retained reading on each of the n sensors' topics."""
    async with aiomqtt.Client("127.0.0.1", port) as c:
        for i in range(n):
            await c.publish(f"plant/s{i}/data", ncd(1.0), qos=1, retain=True)


async def test_many_topics_with_retained_messages_are_subscribed_without_nagle_stalls(
    broker: Mosquitto,
) -> None:
    # Each retained copy the broker sends after a SUBACK is answered with a PUBACK, and
    # without TCP_NODELAY the next SUBSCRIBE waited for the broker's delayed ACK of it:
    # 22 ms per topic, 2000 sensors' topics 43 s at every (re)connect, nothing decoded
    # meanwhile. Now 2000 take under a second. (MQTT 5 asks for no retained copies, but
    # a persistent session's queued messages come in between the SUBACKs the same way.)
    import socket

    n = 400
    got: list[Reading] = []
    routes, sensors = _sensors(n, got)
    await _retain_each(broker.port, n)
    settings = BrokerSettings(
        id="b", host="127.0.0.1", port=broker.port, client_id="edge-r", protocol="3.1.1"
    )
    link = BrokerLink(settings, Router(routes))
    async with link_running(link):
        await until(lambda: link.connected, 10)
        assert link._client is not None
        sock = link._client._client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        # Every topic subscribed (its retained copy counted): well within the 8.8 s that
        # 400 delayed ACKs took.
        await until(lambda: sum(s.dropped["retained"] for s in sensors) == n, 5)


async def test_mqtt5_asks_the_broker_for_no_retained_copies(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    # A retained copy is never analysed (not live), yet the broker sent one per sensor
    # topic at every (re)subscription: 2000 sensors, 2000 messages through the decode
    # queue (with waveforms, megabytes) and 2000 warnings "message dropped (retained)".
    n = 50
    got: list[Reading] = []
    routes, sensors = _sensors(n, got)
    await _retain_each(broker.port, n)
    caplog.set_level(logging.WARNING, "edge_agent.drivers.mqtt")
    settings = BrokerSettings(id="b", host="127.0.0.1", port=broker.port, client_id="edge-r")
    link = BrokerLink(settings, Router(routes))
    async with link_running(link):
        await until(lambda: link.connected, 10)
        await asyncio.sleep(0.5)  # subscribed, and the retained copies (if sent) decoded
        await publish(broker.port, [(f"plant/s{i}/data", ncd(2.0)) for i in range(n)])
        await until(lambda: len(got) == n, 5)
    assert [r.features["velocity_rms_mm_s"] for r in got] == [2.0] * n
    assert link.messages_total == n
    assert not any(s.dropped for s in sensors)
    assert not [r for r in caplog.records if "retained" in r.getMessage()]


async def test_a_persistent_session_backlog_is_decoded_while_resubscribing(
    tmp_path: Path,
) -> None:
    # After a broker restart or a partition the broker sends a persistent session's
    # backlog at once, while the link subscribes its topics again one SUBACK at a time;
    # nothing was decoded until the last SUBACK, so the decode queue filled and the rest
    # was dropped (2000 sensors after 4 s away: 8766 queue_full). Now each SUBACK's wait
    # is followed by decoding what came meanwhile.
    n, backlog = 300, 4
    got: list[Reading] = []
    routes, _ = _sensors(n, got)
    extra = ("max_queued_messages 100000", "max_inflight_messages 100")
    with Mosquitto(tmp_path / "b", extra=extra) as broker:
        settings = BrokerSettings(id="b", host="127.0.0.1", port=broker.port, client_id="edge-p",
                                  persistent=True, queue_size=400)  # fmt: skip
        link = BrokerLink(settings, Router(routes))
        for away in (False, True):
            if away:  # the link is away: the broker queues every sensor's readings
                items = [(f"plant/s{i}/data", ncd(k + 1.0)) for k in range(backlog)
                         for i in range(n)]  # fmt: skip
                await publish(broker.port, items)
            task = asyncio.create_task(link.run())
            try:
                await until(lambda: link.connected, 10)
                if away:
                    await until(lambda: len(got) == n * backlog, 10)
                else:
                    await asyncio.sleep(0.5)  # subscribed
            except AssertionError:
                pass
            finally:
                link.stop()
                task.cancel()
                await asyncio.wait([task], timeout=5)
                link._stopped = False
    assert link.queue_dropped == {"queue_full": 0, "queue_bytes": 0}
    assert len(got) == n * backlog
