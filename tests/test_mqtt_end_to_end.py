"""MQTT sensors through the whole chain: mosquitto -> agent -> store -> backend.

Real parts only: a mosquitto the test starts, the backend simulator as a process, the
agent in-process on a real SQLite file. An NCD-style sensor that degrades raises zone C
and D like a Modbus one; a silent sensor raises a sensor_fault, cleared when it speaks;
20 % malformed messages change nothing but the drop counters.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from agent.config import load_config
from agent.demo import SimProcess
from agent.health import render_metrics
from agent.runtime import Agent
from tests.mosquitto import Mosquitto

pytestmark = [pytest.mark.network, pytest.mark.slow]

TOKEN = "test-token-mqtt"
MAC = "00:13:a2:00:41:9b:0c:01"
QUIET = "00:13:a2:00:41:9b:0c:02"

CONFIG = """\
gateway: {{id: gw-mq}}
assets:
  - id: fan-3
    name: Fan 3
    tier: 1
    machine: {{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}}
    alerting: {{debounce: 3, hysteresis: 0.1}}
  - id: pump-9
    machine: {{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}}
mqtt:
  - {{id: plant, host: 127.0.0.1, port: {port}, session: persistent, reconnect_max_s: 0.5}}
sensors:
  - id: fan-3-ncd
    asset: fan-3
    mqtt: {{broker: plant, topic: "ncd/vibration/+", decoder: ncd-processed,
            key: "{mac}", key_from: "payload:addr", stale_after_s: 30}}
    channels: [z]
  - id: pump-9-ncd
    asset: pump-9
    mqtt: {{broker: plant, topic: "ncd/vibration/+", decoder: ncd-processed,
            key: "{quiet}", key_from: "payload:addr", stale_after_s: {stale}}}
    channels: [z]
{uplinks}
store: {{path: "{store}", max_bytes: 64MiB}}
health: {{port: 0}}
control: {{socket: "{control}"}}
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("broker")) as b:
        yield b


def write_config(folder: Path, broker: Mosquitto, *, uplinks: str = "", stale: float = 60) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agent.yaml"
    path.write_text(
        CONFIG.format(
            port=broker.port,
            mac=MAC,
            quiet=QUIET,
            stale=stale,
            uplinks=uplinks,
            store=folder / "outbox.db",
            control=folder / "control.sock",
        )
    )
    return path


def ncd(v: float, addr: str = MAC, at: datetime | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"addr": addr, "rssi": -60, "battery": 3.3, "temperature": 35.0}
    for a in "xyz":
        msg |= {f"{a}_velocity_mm_sec": v, f"{a}_rms_ACC_G": v / 10, f"{a}_max_ACC_G": v / 3}
    if at is not None:
        msg["timestamp"] = at.isoformat().replace("+00:00", "Z")
    return msg


def degrading(n: int) -> list[float]:
    """Velocity RMS of a bearing that wears out: zone A, then B, C (2.8) and D (4.5)."""
    return [round(1.0 + 5.5 * (i / n) ** 2 + 0.05 * math.sin(i), 4) for i in range(n)]


async def run(config: Path, records: list[dict[str, Any]] | None = None) -> tuple[Agent, Any]:
    agent = Agent(load_config(config), on_records=None if records is None else records.extend)
    task = asyncio.create_task(agent.run())
    async with asyncio.timeout(10):
        await agent.ready.wait()
    await _until(lambda: all(link.connected for link in agent.mqtt.links), 10)
    await asyncio.sleep(0.3)  # subscribed
    return agent, task


async def _until(pred: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.05)


async def backend_alerts(url: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s,
        s.get(url) as resp,
    ):
        resp.raise_for_status()
        return list((await resp.json())["alerts"])


async def test_degrading_ncd_sensor_reaches_backend_as_zone_c_then_d_and_silence_is_a_fault(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with SimProcess.backend(tmp_path / "backend.db", TOKEN) as backend:
        url = backend.info["url"]
        uplinks = f'uplinks:\n  - http: {{url: "{url}", token: "{TOKEN}", timeout_s: 2}}'
        agent, task = await run(write_config(tmp_path, broker, uplinks=uplinks, stale=2))
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port) as c:
                for v in degrading(120):
                    await c.publish(f"ncd/vibration/{MAC}", json.dumps(ncd(v)), qos=1)
                    await asyncio.sleep(0.01)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    alerts = await backend_alerts(url)
                    kinds = {(a["kind"], a["state"], a["sensor"]["id"]) for a in alerts}
                    if ("severity", "escalated", "fan-3-ncd") in kinds and (
                        "sensor_fault",
                        "raised",
                        "pump-9-ncd",
                    ) in kinds:
                        break
                    await asyncio.sleep(0.3)
                # The silent sensor speaks: its fault clears.
                await c.publish(f"ncd/vibration/{QUIET}", json.dumps(ncd(1.0, QUIET)), qos=1)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    alerts = await backend_alerts(url)
                    if ("sensor_fault", "cleared") in {(a["kind"], a["state"]) for a in alerts}:
                        break
                    await asyncio.sleep(0.3)
            health = await agent.snapshot()
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)
    sev = [a for a in alerts if a["kind"] == "severity"]
    assert [(a["state"], a["severity"]["zone"]) for a in sev][:2] == [
        ("raised", "C"),
        ("escalated", "D"),
    ]
    raised = sev[0]
    assert raised["sensor"] == {"id": "fan-3-ncd", "channel": "z", "transport": "mqtt"}
    assert raised["asset"]["id"] == "fan-3" and raised["severity"]["threshold"] == 2.8
    assert 2.8 <= raised["severity"]["value"] < 4.5
    faults = [(a["state"], a["sensor"]["id"]) for a in alerts if a["kind"] == "sensor_fault"]
    assert faults == [("raised", "pump-9-ncd"), ("cleared", "pump-9-ncd")]
    fault = next(a for a in alerts if a["kind"] == "sensor_fault")
    assert fault["severity"]["metric"] == "seconds_without_message"
    assert fault["sensor"]["transport"] == "mqtt"
    by_id = {s["id"]: s for s in health["sensors"]}
    assert by_id["fan-3-ncd"]["messages_total"] == 120 and by_id["fan-3-ncd"]["state"] == "ok"
    assert by_id["pump-9-ncd"]["state"] == "ok"
    assert health["mqtt"][0]["connected"] is True


def garbage(i: int, at: datetime) -> bytes | str:
    """Every kind of bad message a plant network produces, in turn."""
    kinds: list[Any] = [
        b"{truncated",
        json.dumps(ncd(float("nan"), at=at)),  # NaN velocity: flagged, not analysed
        json.dumps({**ncd(2.0, at=at), "z_velocity_mm_sec": "fast"}),
        json.dumps(ncd(9.0, at=at + timedelta(hours=2))),  # a clock far ahead
        json.dumps(ncd(9.0, at=datetime(1999, 1, 1, tzinfo=UTC))),
        json.dumps({"addr": MAC, "battery": 3.1}),
        json.dumps(ncd(9.0, addr="00:13:a2:00:41:9b:0c:99", at=at)),  # unknown sensor
        json.dumps({**ncd(2.0, at=at), "pad": "x" * 300_000}),  # above the 256 KiB cap
        json.dumps(ncd(65535.0, at=at)),  # sentinel-like, out of the valid range
        b"\xff\xfe\xfd",
    ]
    return kinds[i % len(kinds)]  # type: ignore[no-any-return]


async def stream(
    broker: Mosquitto, dirty: bool, start: datetime
) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    """The same 300 timestamped readings, with one bad message after every fourth when
    dirty (20 % of the stream); the alerts that came out, and the snapshot."""
    folder = broker.folder.parent / f"agent-{'dirty' if dirty else 'clean'}"
    records: list[dict[str, Any]] = []
    agent, task = await run(write_config(folder, broker), records)
    values = degrading(300)
    sent = 0
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            for i, v in enumerate(values):
                at = start + timedelta(seconds=5 * i)
                await c.publish(f"ncd/vibration/{MAC}", json.dumps(ncd(v, at=at)), qos=1)
                sent += 1
                if dirty and i % 4 == 3:
                    await c.publish(f"ncd/vibration/{MAC}", garbage(i // 4, at), qos=1)
                    sent += 1
        link = agent.mqtt.links[0]
        await _until(lambda: link.messages_total >= sent, 20)
        snap = await agent.snapshot()
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)
    alerts = [
        (r["kind"], r["state"], r["sensor"]["id"], r["sensor"]["channel"],
         (r.get("severity") or {}).get("zone"), (r.get("severity") or {}).get("value"),
         r["detected_at"])
        for r in records
        if r.get("kind") != "sensor_fault"
    ]  # fmt: skip
    return alerts, snap


async def test_twenty_percent_malformed_changes_nothing_but_the_drop_counters(
    broker: Mosquitto,
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=30)
    clean, clean_snap = await stream(broker, False, start)
    dirty, snap = await stream(broker, True, start)
    assert clean and ("severity", "escalated", "fan-3-ncd", "z", "D") in [a[:5] for a in clean]
    assert dirty == clean
    fan = next(s for s in snap["sensors"] if s["id"] == "fan-3-ncd")
    # 75 bad messages, ten kinds in turn (kinds 0-4 eight times, 5-9 seven times). The
    # unparsable ones and the unknown and too-large ones cannot be told apart by topic on
    # a shared subscription keyed by payload: they count on the topic filter.
    assert fan["messages_total"] == 300 + 75 - 15 - 7 - 7
    assert fan["dropped"] == {
        "wrong_type": 8, "future_timestamp": 8, "old_timestamp": 8, "missing_field": 7
    }  # fmt: skip
    assert fan["bad_values"] == {"not_finite": 8, "out_of_range": 7}
    assert snap["mqtt"][0]["unrouted"] == {
        "ncd/vibration/+": {"malformed": 15, "unknown_sensor": 7, "too_large": 7}
    }
    assert snap["pipeline"]["analysis_errors_total"] == 0
    clean_fan = next(s for s in clean_snap["sensors"] if s["id"] == "fan-3-ncd")
    assert clean_fan["dropped"] == {} and clean_fan["bad_values"] == {}
    text = render_metrics(snap).decode()
    assert 'edge_mqtt_dropped_total{reason="future_timestamp",sensor="fan-3-ncd"} 8.0' in text
    assert (
        'edge_mqtt_unrouted_total{broker="plant",reason="unknown_sensor",'
        'topic="ncd/vibration/+"} 7.0'
    ) in text
    assert 'edge_sensor_bad_values_total{reason="not_finite",sensor="fan-3-ncd"} 8.0' in text


async def test_broker_down_shows_in_healthz_and_shutdown_stays_bounded(
    tmp_path: Path, broker: Mosquitto
) -> None:
    from tests.conftest import free_port

    gone = Mosquitto(tmp_path / "gone")  # never started: nothing listens on its port
    gone.port = free_port()
    records: list[dict[str, Any]] = []
    faults = "sensor_faults: {endpoint_silent_s: 1}"
    config = write_config(tmp_path, gone, stale=1, uplinks=faults)
    agent = Agent(load_config(config), on_records=records.extend)
    task = asyncio.create_task(agent.run())
    async with asyncio.timeout(10):
        await agent.ready.wait()
    await asyncio.sleep(1.5)
    snap = await agent.snapshot()
    await _until(lambda: any(r.get("kind") == "sensor_fault" for r in records), 5)
    agent.stop()
    started = time.monotonic()
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 3.0
    link = snap["mqtt"][0]
    assert link["connected"] is False and "refused" in (link["last_error"] or "")
    assert snap["status"] == "degraded"
    states = {s["id"]: s["state"] for s in snap["sensors"]}
    assert states == {"fan-3-ncd": "starting", "pump-9-ncd": "stale"}  # stale after 30 s, 1 s
    # The fault is the broker's, not the silent sensor's: whoever reads it goes to the
    # network or the broker, not to the sensor's battery.
    [fault] = [r for r in records if r.get("kind") == "sensor_fault"]
    assert fault["sensor"]["id"] == "broker:plant"
    assert "MQTT broker plant" in fault["no_estimate_reason"], fault
    cause = fault["evidence"]["last_error"] or ""
    assert "refused" in cause, cause
    assert fault["evidence"]["sensor_ids"] == ["pump-9-ncd"]


async def test_waveform_snapshots_go_through_the_agents_feature_extraction(
    tmp_path: Path, broker: Mosquitto
) -> None:
    import base64

    import numpy as np

    (tmp_path / "agent.yaml").write_text(
        f"""\
gateway: {{id: gw-wf}}
assets:
  - id: fan-3
    machine: {{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}}
mqtt:
  - {{id: plant, host: 127.0.0.1, port: {broker.port}}}
sensors:
  - id: fan-3-wave
    asset: fan-3
    mqtt: {{broker: plant, topic: "ncd/waveform/+", decoder: waveform-json,
            key: "{MAC}", key_from: "payload:addr"}}
    channels: [x, z]
store: {{path: "{tmp_path}/outbox.db"}}
health: {{port: 0}}
control: {{socket: "{tmp_path}/control.sock"}}
"""
    )
    fs, n = 25600.0, 2560
    t = np.arange(n) / fs
    x = 0.5 * np.sin(2 * np.pi * 100.0 * t)  # 0.5 g at 100 Hz
    expected = 0.5 * 9806.65 / (2 * np.pi * 100.0) / np.sqrt(2)  # velocity RMS, mm/s
    counts = np.round(x / 2 / 0.0005).astype("<i2")  # z: half of it, as int16 counts
    msg = {"addr": MAC, "odr_hz": fs, "axes": {"x": x.tolist()}}
    packed = {"addr": MAC, "odr_hz": fs, "encoding": "int16-b64", "scale_g": 0.0005,
              "axes": {"z": base64.b64encode(counts.tobytes()).decode()}}  # fmt: skip
    agent, task = await run(tmp_path / "agent.yaml")
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            await c.publish(f"ncd/waveform/{MAC}", json.dumps(msg), qos=1)
            await c.publish(f"ncd/waveform/{MAC}", json.dumps(packed), qos=1)
        assert agent.monitor is not None
        monitor = agent.monitor
        await _until(lambda: len(monitor.views()) == 2, 10)
        views = {v.channel: v.value for v in monitor.views()}
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)
    assert views["x"] == pytest.approx(expected, rel=0.05)
    assert views["z"] == pytest.approx(expected / 2, rel=0.05)
