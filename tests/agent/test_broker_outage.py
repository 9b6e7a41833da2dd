"""An MQTT broker outage is one fault naming the broker, not one per sensor; a short one
raises nothing; after it each sensor is judged alone, and a dead sensor among live ones
still raises its own fault after its stale_after_s.

Real parts: a mosquitto of the test's own on a free loopback port (stopped and started
again on it), a publisher of NCD-style messages, the real Agent, a real store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.runtime import Agent
from tests.mosquitto import Mosquitto

pytestmark = [pytest.mark.network, pytest.mark.slow]

SENSORS = 20
STALE_S = 1.0  # each sensor's stale_after_s
SILENT_FAULT_S = 2.0  # sensor_faults.endpoint_silent_s


def _mac(i: int) -> str:
    return f"00:13:a2:00:41:9b:0d:{i:02x}"


def _config(
    tmp_path: Path, port: int, stale_s: float = STALE_S, silent_s: float = SILENT_FAULT_S
) -> str:
    sensor = (
        "  - {{id: s{i}, asset: m, channels: [z], mqtt: {{broker: plant, topic: "
        '"ncd/vibration/+", decoder: ncd-processed, key: "{mac}", key_from: "payload:addr",'
        " stale_after_s: {stale}}}}}"
    )
    return "\n".join(
        [
            "gateway: {id: gw-mq}",
            "assets:",
            "  - {id: m, tier: 1, machine: {standard: iso10816-3, group: 2, foundation: rigid,"
            " rpm: 1480}}",
            "mqtt:",
            f"  - {{id: plant, host: 127.0.0.1, port: {port}, reconnect_max_s: 0.3}}",
            "sensors:",
            *[sensor.format(i=i, mac=_mac(i), stale=stale_s) for i in range(SENSORS)],
            f"sensor_faults: {{endpoint_silent_s: {silent_s}}}",
            f'store: {{path: "{tmp_path / "o.db"}"}}',
            "health: {port: 0}",
            f'control: {{socket: "{tmp_path / "c.sock"}"}}',
        ]
    )


def _ncd(addr: str) -> str:
    msg: dict[str, Any] = {"addr": addr, "rssi": -60, "battery": 3.3, "temperature": 35.0}
    for a in "xyz":
        msg |= {f"{a}_velocity_mm_sec": 1.0, f"{a}_rms_ACC_G": 0.1, f"{a}_max_ACC_G": 0.3}
    return json.dumps(msg)


def _packet(kind: int, body: bytes) -> bytes:
    """An MQTT 3.1.1 packet: its type byte, remaining length (varint), body."""
    n, length = len(body), b""
    while True:
        n, digit = n >> 7, n & 0x7F
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            return bytes([kind]) + length + body


def _str(s: str) -> bytes:
    return len(s.encode()).to_bytes(2, "big") + s.encode()


async def _publish(
    port: int, live: set[int], stop: asyncio.Event, gate: asyncio.Event | None = None
) -> None:
    """Every 0.2 s a QoS 0 message from each live sensor; reconnects while the broker is
    down (once `gate` is set: a sensor gateway that comes back after the broker). Raw
    MQTT 3.1.1 on a socket: aiomqtt, reconnecting under load, now and then lost its new
    socket's writer to the old one's (an 'fd is not registered' error) and published
    nothing more for seconds, as no real gateway does."""
    connect = _packet(0x10, _str("MQTT") + bytes([4, 0x02]) + (30).to_bytes(2, "big") + _str("pub"))
    while not stop.is_set():
        if gate is not None:
            await gate.wait()
        writer = None
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(connect)
            async with asyncio.timeout(5):
                connack = await reader.readexactly(4)
            assert connack[0] == 0x20 and connack[3] == 0, connack
            while not stop.is_set() and not reader.at_eof():
                for i in sorted(live):
                    topic = _str(f"ncd/vibration/{_mac(i)}")
                    writer.write(_packet(0x30, topic + _ncd(_mac(i)).encode()))
                await writer.drain()
                await asyncio.sleep(0.2)
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await asyncio.sleep(0.1)


async def _until(cond: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _faults(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["sensor"]["id"], r["state"]) for r in records if r["kind"] == "sensor_fault"]


# The blip test's own timings: a blip longer than stale_after_s, shorter than
# endpoint_silent_s with a second to spare for the broker's restart and the reconnect.
BLIP_SILENT_S, BLIP_S = 4.0, 1.5
# The publisher back this long after the broker: past stale_after_s and a watch tick.
LATE_S = 2.5


async def test_a_broker_outage_is_one_fault_and_a_blip_none(tmp_path: Path) -> None:
    """A broker blip raises nothing; an outage raises one fault naming the broker, even
    when the sensors' publisher reconnects LATE_S after the broker is back (later than
    their stale_after_s: before, each raised its own fault then); a sensor that does not
    come back is judged alone once the others have."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    records: list[dict[str, Any]] = []
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(_config(tmp_path, broker.port, STALE_S, BLIP_SILENT_S))
    live = set(range(1, SENSORS))  # s0 is dead: its own fault, as ever
    stop, gate = asyncio.Event(), asyncio.Event()
    gate.set()
    agent = Agent(load_config(cfg), on_records=records.extend)
    task = asyncio.create_task(agent.run())
    pub = asyncio.create_task(_publish(broker.port, live, stop, gate))

    def all_are(state: str) -> Callable[[], bool]:
        ids = {f"s{i}" for i in live}
        return lambda: all(m.state == state for m in agent.mqtt.sensors if m.sensor_id in ids)

    try:
        await _until(lambda: ("s0", "raised") in _faults(records), 10)
        await _until(all_are("ok"), 5)
        await asyncio.sleep(0.5)  # a watch tick with all of them ok
        assert _faults(records) == [("s0", "raised")]
        records.clear()

        # A blip longer than stale_after_s, shorter than endpoint_silent_s: nothing.
        broker.stop()
        await _until(all_are("stale"), 5)
        await asyncio.sleep(BLIP_S - STALE_S)
        broker.start()
        await _until(all_are("ok"), 5)
        await asyncio.sleep(0.5)  # a watch tick, and the store's records
        assert _faults(records) == [], _faults(records)  # before: 19 raised + 19 cleared

        # An outage: one fault naming the broker, cleared when it is back; no sensor's,
        # though their publisher comes back LATE_S after the broker. s5 does not come back:
        # judged alone once the others have.
        gate.clear()
        broker.stop()
        await _until(lambda: len(_faults(records)) >= 1, 3 * BLIP_SILENT_S)
        live.discard(5)
        broker.start()
        await _until(lambda: all(link.connected for link in agent.mqtt.links), 5)
        await asyncio.sleep(LATE_S)
        gate.set()
        await _until(lambda: len(_faults(records)) >= 3, 3 * BLIP_SILENT_S)
        await _until(all_are("ok"), 5)
        await asyncio.sleep(0.5)  # no other sensor's fault follows
    finally:
        stop.set()
        gate.set()
        agent.stop()
        await asyncio.wait_for(task, 15)
        await asyncio.wait_for(pub, 5)
        broker.stop()
    assert _faults(records) == [
        ("broker:plant", "raised"),
        ("broker:plant", "cleared"),
        ("s5", "raised"),
    ], _faults(records)
    raised = next(r for r in records if r["kind"] == "sensor_fault")
    assert raised["asset"]["id"] == "gw-mq"
    assert raised["sensor"]["transport"] == "mqtt"
    ev = raised["evidence"]
    assert ev["broker"] == "plant" and ev["address"] == f"mqtt://127.0.0.1:{broker.port}"
    assert ev["sensors"] == SENSORS and ev["sensors_silent"] == SENSORS
    assert len(ev["sensor_ids"]) == SENSORS


async def test_a_dead_sensor_raises_while_the_broker_link_flaps(tmp_path: Path) -> None:
    """A link reconnecting every second (each up spell shorter than stale_after_s, each
    down spell shorter than endpoint_silent_s) raises no broker fault; a sensor that says
    nothing while the link is up still raises its own fault once the link has been up for
    its stale_after_s in all (before: held for as long as the link flapped, no fault)."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    records: list[dict[str, Any]] = []
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(_config(tmp_path, broker.port))
    stop = asyncio.Event()
    agent = Agent(load_config(cfg), on_records=records.extend)
    task = asyncio.create_task(agent.run())
    pub = asyncio.create_task(_publish(broker.port, set(range(1, SENSORS)), stop))
    try:
        await _until(lambda: all(link.connected for link in agent.mqtt.links), 5)
        for _ in range(8):  # up ~0.5 s, down ~0.5 s: s0 (dead) is silent throughout
            await asyncio.sleep(0.5)
            broker.stop()
            await asyncio.sleep(0.5)
            broker.start()
            await _until(lambda: all(link.connected for link in agent.mqtt.links), 5)
            if ("s0", "raised") in _faults(records):
                break
    finally:
        stop.set()
        agent.stop()
        await asyncio.wait_for(task, 15)
        await asyncio.wait_for(pub, 5)
        broker.stop()
    assert ("s0", "raised") in _faults(records), _faults(records)
    assert not any(sid.startswith("broker:") for sid, _ in _faults(records))
