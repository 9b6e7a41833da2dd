"""A reload with MQTT sensors: the plan (pure), then a running agent whose file gains an
MQTT sensor and a changed broker, with a real mosquitto."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.config import Config, load_config
from agent.reload_plan import plan_reload
from agent.runtime import Agent
from drivers.profiles import ProfileLibrary
from drivers.reading import utc_now
from tests.mosquitto import Mosquitto

LIBRARY = ProfileLibrary.load(None)
MACHINE = {"standard": "iso10816-3", "group": 2, "foundation": "rigid", "rpm": 1480}


def data(tmp_path: Path, port: int, sensors: int = 1) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-rm"},
        "assets": [{"id": "fan-3", "machine": MACHINE}],
        "mqtt": [{"id": "plant", "host": "127.0.0.1", "port": port}],
        "sensors": [
            {
                "id": f"s{n}",
                "asset": "fan-3",
                "channels": ["z"],
                "mqtt": {
                    "broker": "plant",
                    "topic": f"ncd/vibration/{n}",
                    "decoder": "ncd-processed",
                },
            }
            for n in range(1, sensors + 1)
        ],
        "store": {"path": str(tmp_path / "outbox.db")},
        "health": {"port": 0},
        "control": {"socket": str(tmp_path / "control.sock")},
    }


def plan(old: dict[str, Any], new: dict[str, Any]):  # type: ignore[no-untyped-def]
    return plan_reload(Config.model_validate(old), Config.model_validate(new), LIBRARY, LIBRARY)


def test_plan_mqtt_sensors_and_brokers(tmp_path: Path) -> None:
    old = data(tmp_path, 1883)
    assert not plan(old, data(tmp_path, 1883)).mqtt
    added = plan(old, data(tmp_path, 1883, sensors=2))
    assert added.mqtt and added.start == ["s2"] and not added.stop
    moved = plan(old, data(tmp_path, 1884))
    assert moved.mqtt and moved.start == ["s1"] and moved.stop == ["s1"]
    assert "MQTT brokers changed: the broker links are rebuilt" in moved.changes
    other = data(tmp_path, 1883)
    other["assets"][0]["alerting"] = {"debounce": 5}
    p = plan(old, other)
    assert not p.mqtt and p.reanalyse == ["s1"]


async def until(pred: Any, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not pred():  # noqa: ASYNC110 (state of the agent, no event to wait on)
            await asyncio.sleep(0.05)


def ncd(v: float) -> str:
    return json.dumps({"addr": "a", **{f"{a}_velocity_mm_sec": v for a in "xyz"}})


@pytest.mark.network
async def test_reload_adds_an_mqtt_sensor_and_follows_a_moved_broker(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    with Mosquitto(tmp_path / "b1") as one, Mosquitto(tmp_path / "b2") as two:
        path.write_text(json.dumps(data(tmp_path, one.port)))
        agent = Agent(load_config(path), config_path=path)
        task = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(10):
                await agent.ready.wait()
            await until(lambda: agent.mqtt.links[0].connected)
            assert agent.reloader is not None
            path.write_text(json.dumps(data(tmp_path, two.port, sensors=2)))
            result = await agent.reloader.reload("test")
            assert "sensor s2 added" in result["changes"]
            await until(lambda: agent.mqtt.links and agent.mqtt.links[0].connected)
            await asyncio.sleep(0.3)  # subscribed
            async with aiomqtt.Client("127.0.0.1", two.port) as c:
                await c.publish("ncd/vibration/1", ncd(1.0), qos=1)
                await c.publish("ncd/vibration/2", ncd(2.0), qos=1)
            await until(lambda: sum(s.messages_total for s in agent.mqtt.sensors) >= 2)
            links = [link.settings.port for link in agent.mqtt.links]
            by_id = {s.sensor_id: s.state for s in agent.mqtt.sensors}
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)
    assert links == [two.port]
    assert by_id == {"s1": "ok", "s2": "ok"}


@pytest.mark.network
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_retained_reading_is_not_analysed_again_after_a_reload(
    tmp_path: Path, protocol: str
) -> None:
    def config(sensors: int) -> dict[str, Any]:
        d = data(tmp_path, broker.port, sensors=sensors)
        d["mqtt"][0]["protocol"] = protocol
        return d

    path = tmp_path / "agent.yaml"
    stamped = json.dumps(
        {
            "addr": "a",
            "timestamp": utc_now().isoformat(),
            **{f"{a}_velocity_mm_sec": 2.0 for a in "xyz"},
        }
    )
    with Mosquitto(tmp_path / "b1") as broker:
        path.write_text(json.dumps(config(1)))
        agent = Agent(load_config(path), config_path=path)
        task = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(10):
                await agent.ready.wait()
            await until(lambda: agent.mqtt.links[0].connected)
            await asyncio.sleep(0.3)  # subscribed
            async with aiomqtt.Client("127.0.0.1", broker.port) as c:
                await c.publish("ncd/vibration/1", stamped, qos=1, retain=True)
            await until(lambda: agent.mqtt.sensors[0].messages_total == 1)
            assert agent.reloader is not None
            path.write_text(json.dumps(config(2)))
            await agent.reloader.reload("test")  # rebuilds the links: 3.1.1 replays it
            await until(lambda: agent.mqtt.links[0].connected)
            if protocol == "3.1.1":
                await until(lambda: agent.mqtt.sensors[0].messages_total == 1)
            else:  # MQTT 5 asks for no retained copies (retain handling 2)
                await asyncio.sleep(0.5)
            s1 = agent.mqtt.sensors[0]
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)
    replayed = {"retained": 1} if protocol == "3.1.1" else {}
    assert dict(s1.dropped) == replayed, "the retained reading was analysed again"
    assert s1.messages_total == len(replayed)


def _decoder(folder: Path, scale: float) -> None:
    """plant-json: the shipped generic-json under another name, its z velocity scaled."""
    shipped = Path(__file__).resolve().parents[2] / "drivers" / "payloads" / "generic-json.yaml"
    text = shipped.read_text().replace("name: generic-json", "name: plant-json")
    field = "{path: z.velocity_rms_mm_s, feature: velocity_rms_mm_s, channel: z, unit: mm/s,"
    folder.mkdir(exist_ok=True)
    (folder / "plant-json.yaml").write_text(text.replace(field, f"{field} scale: {scale},"))


@pytest.mark.network
async def test_a_decoder_file_edited_in_place_is_applied_by_a_reload(tmp_path: Path) -> None:
    """Before: a decoders_dir file corrected in place (scale 1 -> 10) changed nothing at a
    reload ("changes": []): the links kept decoding with the old file until a restart, and
    the baseline learned from the old values was kept even then."""
    path, folder = tmp_path / "agent.yaml", tmp_path / "decoders"
    _decoder(folder, 1.0)
    with Mosquitto(tmp_path / "b1") as broker:
        cfg = data(tmp_path, broker.port)
        cfg["decoders_dir"] = str(folder)
        cfg["sensors"][0]["mqtt"].update(topic="t/s1", decoder="plant-json")
        path.write_text(json.dumps(cfg))
        agent = Agent(load_config(path), config_path=path)
        task = asyncio.create_task(agent.run())

        async def publish_and_see(value: float) -> None:
            await until(lambda: agent.mqtt.links and agent.mqtt.links[0].connected)
            await asyncio.sleep(0.3)  # subscribed
            async with aiomqtt.Client("127.0.0.1", broker.port) as c:
                await c.publish("t/s1", json.dumps({"z": {"velocity_rms_mm_s": 1.5}}), qos=1)
            await until(lambda: agent.mqtt.sensors[0].messages_total == 1)
            assert agent.monitor is not None
            monitor = agent.monitor
            await until(lambda: [v.value for v in monitor.views()] == [value], 5)

        try:
            async with asyncio.timeout(10):
                await agent.ready.wait()
            await publish_and_see(1.5)
            assert agent.reloader is not None
            _decoder(folder, 10.0)
            result = await agent.reloader.reload("test")
            assert result["changes"] == [
                "sensor s1 restarted: how it is read changed; its baseline on asset fan-3 is "
                "relearned (mqtt.decoder plant-json edited: it reads other values); its open "
                "severity and trend alerts are cleared by the reload, saying why"
            ]
            await publish_and_see(15.0)  # decoded with the file as it is now
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)


async def _run_agent(path: Path, work: Any = None) -> dict[str, Any]:
    """Start the agent on its file, let its link connect and subscribe, do `work`, stop;
    its broker link's status."""
    agent = Agent(load_config(path), config_path=path)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(10):
            await agent.ready.wait()
        await until(lambda: agent.mqtt.links and agent.mqtt.links[0].connected)
        await asyncio.sleep(0.5)  # subscribed, and the queued messages are in
        if work is not None:
            await work(agent)
            await until(lambda: agent.mqtt.links and agent.mqtt.links[0].connected)
            await asyncio.sleep(0.5)
        return agent.mqtt.links[0].status()
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)


@pytest.mark.network
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_removed_sensor_s_topic_is_unsubscribed_from_a_persistent_session(
    tmp_path: Path, protocol: str
) -> None:
    """Before: a sensor removed by a reload, or while the agent was stopped, stayed
    subscribed in the broker's persistent session: every QoS 1 message on its topic was
    queued while the agent was away (within the per-client limit the wanted topics share)
    and arrived after each start, counted as unrouted, run after run."""
    path = tmp_path / "agent.yaml"

    def write(port: int, sensors: int) -> None:
        cfg = data(tmp_path, port, sensors=sensors)
        cfg["mqtt"][0].update(session="persistent", protocol=protocol)
        path.write_text(json.dumps(cfg))

    async def away(port: int) -> None:  # published while the agent is stopped
        async with aiomqtt.Client("127.0.0.1", port) as c:
            for n in (1, 2, 2, 2, 3, 3, 3):
                await c.publish(f"ncd/vibration/{n}", ncd(1.0), qos=1)

    async def reload_to_one(agent: Agent) -> None:
        write(broker.port, 1)
        assert agent.reloader is not None
        await agent.reloader.reload("test")

    with Mosquitto(tmp_path / "b1") as broker:
        write(broker.port, 2)
        await _run_agent(path, reload_to_one)  # s2 removed by a reload
        await away(broker.port)
        assert (await _run_agent(path))["messages_total"] == 1  # s1's only
        write(broker.port, 3)
        await _run_agent(path)
        write(broker.port, 1)  # s2 and s3 removed while the agent is stopped
        await _run_agent(path)
        await away(broker.port)
        status = await _run_agent(path)
    assert status["messages_total"] == 1 and status["subscriptions"] == {"ncd/vibration/1": 1}
