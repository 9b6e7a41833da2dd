"""MQTT sensors that clip or freeze: never analysed as a machine's state, a sensor_fault
while it lasts, cleared when they read true again.

Real parts: a mosquitto the test starts, the agent in-process on a real SQLite file, a
site decoder file; waveforms are FEMTO bearing snapshots (real vibration), clipped at the
int16 limits as a sensor with too small a range sends them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest

from agent.config import load_config
from agent.runtime import Agent
from tests.mosquitto import Mosquitto

pytestmark = [pytest.mark.network]

FEMTO = Path("/work/shared/data/femto/Bearing1_1.npz")
DECODER = """\
name: site-ncd
format: json-features
key_field: addr
fields:
  - {path: z_velocity_mm_sec, feature: velocity_rms_mm_s, channel: z, valid: [0, 500]}
  - {path: z_max_ACC_G, feature: accel_peak_g, channel: z, valid: [0, 200], full_scale: 16}
"""
CONFIG = """\
gateway: {{id: gw-q}}
assets:
  - {{id: fan, machine: {{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1800}}}}
mqtt:
  - {{id: plant, host: 127.0.0.1, port: {port}}}
sensors:
  - id: wave
    asset: fan
    mqtt: {{broker: plant, topic: "q/wave", decoder: waveform-json}}
    channels: [z]
    bad_values_fault_s: 0.5
  - id: feat
    asset: fan
    mqtt: {{broker: plant, topic: "q/feat", decoder: site-ncd}}
    channels: [z]
    bad_values_fault_s: 0.5
    stuck: {{min_readings: 4, min_duration_s: 0.5}}
decoders_dir: decoders
store: {{path: "{folder}/o.db"}}
health: {{port: 0}}
control: {{socket: "{folder}/c.sock"}}
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("broker")) as b:
        yield b


async def _until(done: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.05)


async def _agent(tmp_path: Path, broker: Mosquitto, records: list[dict[str, Any]]) -> Any:
    (tmp_path / "decoders").mkdir()
    (tmp_path / "decoders" / "site-ncd.yaml").write_text(DECODER)
    (tmp_path / "agent.yaml").write_text(CONFIG.format(port=broker.port, folder=tmp_path))
    agent = Agent(load_config(tmp_path / "agent.yaml"), on_records=records.extend)
    task = asyncio.create_task(agent.run())
    async with asyncio.timeout(10):
        await agent.ready.wait()
    await _until(lambda: all(link.connected for link in agent.mqtt.links), 10)
    await asyncio.sleep(0.3)  # subscribed
    return agent, task


def _faults(records: list[dict[str, Any]], sensor: str, state: str) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if r["kind"] == "sensor_fault" and r["sensor"]["id"] == sensor and r["state"] == state
    ]


def _snapshots(gain: float) -> list[str]:
    """Five loud FEMTO snapshots as int16-b64 messages, counts times ``gain`` (clipped at
    the int16 limits, as a sensor whose range is ``gain`` times too small sends them)."""
    data = np.load(FEMTO)
    scale = float(data["scale_g"]) / gain
    out = []
    for i in range(-10, -5):
        counts = np.clip(np.round(data["acc"][i, :, 0] * gain), -32768, 32767).astype("<i2")
        msg = {"odr_hz": float(data["fs_hz"]), "encoding": "int16-b64", "scale_g": scale,
               "axes": {"z": base64.b64encode(counts.tobytes()).decode()}}  # fmt: skip
        out.append(json.dumps(msg))
    return out


@pytest.mark.skipif(not FEMTO.exists(), reason="the FEMTO recordings are not on this machine")
async def test_a_clipped_waveform_and_a_feature_at_full_scale_are_saturated_not_analysed(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A waveform with 4 % of its samples at the int16 limits (its kurtosis read 5.6
    instead of 15, its velocity RMS 12.7 instead of 11.5 mm/s) and an accel peak at the
    sensor's 16 g full scale: flagged saturated, never analysed, a sensor_fault each;
    the unclipped snapshots of the same bearing are analysed and clear the wave's fault."""
    records: list[dict[str, Any]] = []
    agent, task = await _agent(tmp_path, broker, records)
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            for msg in _snapshots(gain=4.0):
                await c.publish("q/wave", msg, qos=1)
                peak = {"z_velocity_mm_sec": 1.2, "z_max_ACC_G": 16.0}
                await c.publish("q/feat", json.dumps(peak), qos=1)
                await asyncio.sleep(0.2)
            await _until(lambda: _faults(records, "wave", "raised"), 10)
            await _until(lambda: _faults(records, "feat", "raised"), 10)
            views = {(v.sensor_id, v.channel) for v in agent.monitor.views()}
            early = list(records)  # before any true reading
            snap = await agent.snapshot()
            for msg in _snapshots(gain=1.0):
                await c.publish("q/wave", msg, qos=1)
                await asyncio.sleep(0.2)
            await _until(lambda: _faults(records, "wave", "cleared"), 10)
            after = {(v.sensor_id, v.channel) for v in agent.monitor.views()}
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)
    assert ("wave", "z") not in views and ("feat", "z") not in views  # nothing analysed
    (wave,) = _faults(records, "wave", "raised")
    assert wave["evidence"]["implausible_values"] == ["waveform:saturated"]
    (feat,) = _faults(records, "feat", "raised")
    assert feat["evidence"]["implausible_values"] == ["accel_peak_g:saturated"]
    for fault in (wave, feat):  # what the engineer reads: over range, not "garbage"
        assert "saturated" in fault["no_estimate_reason"]
        assert "exceed its measuring range" in fault["no_estimate_reason"]
    by_id = {s["id"]: s for s in snap["sensors"]}
    assert by_id["wave"]["bad_values"] == {"saturated": 5}
    # saturated only, past bad_values_fault_s: not watched, so /healthz is degraded
    assert snap["status"] == "degraded"
    assert by_id["wave"]["implausible_fault"] and by_id["feat"]["implausible_fault"]
    assert ("wave", "z") in after
    assert [r for r in early if r["kind"] in ("severity", "trend")] == []


async def test_frozen_mqtt_features_raise_a_sensor_fault_and_moving_ones_clear_it(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A gateway that republishes one cached reading (new messages, the same numbers): a
    sensor_fault naming the stuck features once the run is long enough; the readings
    are not analysed meanwhile; the first reading that moves clears it."""
    records: list[dict[str, Any]] = []
    agent, task = await _agent(tmp_path, broker, records)
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            frozen = json.dumps({"z_velocity_mm_sec": 1.234, "z_max_ACC_G": 0.85})
            for _ in range(40):
                await c.publish("q/feat", frozen, qos=1)
                await asyncio.sleep(0.05)
                if _faults(records, "feat", "raised"):
                    break
            await _until(lambda: _faults(records, "feat", "raised"), 10)
            snap = await agent.snapshot()
            moving = json.dumps({"z_velocity_mm_sec": 1.251, "z_max_ACC_G": 0.87})
            await c.publish("q/feat", moving, qos=1)
            await _until(lambda: _faults(records, "feat", "cleared"), 10)
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)
    (raised,) = _faults(records, "feat", "raised")
    stuck = {"velocity_rms_mm_s:stuck", "accel_peak_g:stuck"}
    assert set(raised["evidence"]["implausible_values"]) == stuck
    assert "frozen" in raised["no_estimate_reason"]
    feat = {s["id"]: s for s in snap["sensors"]}["feat"]
    assert feat["stuck"] == ["z/accel_peak_g", "z/velocity_rms_mm_s"]
    assert feat["stuck_episodes"] == 2 and feat["bad_values"]["stuck"] >= 1
    assert snap["status"] == "degraded"  # frozen: the fan is not watched


async def test_a_stopped_machine_at_the_sensors_noise_floor_is_not_frozen(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A machine stopped for the night: the gateway sends the same noise-floor numbers
    (0.02 mm/s, 0.009 g) every message, under the asset's running floor (0.05 mm/s).
    The monitor takes a stop as no evidence anyway; a 'frozen' sensor_fault on every stop
    (raised before) would be a false alarm. The same values at a running level are
    frozen (test above)."""
    records: list[dict[str, Any]] = []
    agent, task = await _agent(tmp_path, broker, records)
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            rest = json.dumps({"z_velocity_mm_sec": 0.02, "z_max_ACC_G": 0.009})
            for _ in range(40):  # 2 s: past the rule's 0.5 s and every learned count
                await c.publish("q/feat", rest, qos=1)
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # twice bad_values_fault_s
            snap = await agent.snapshot()
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)
    feat = {s["id"]: s for s in snap["sensors"]}["feat"]
    assert feat["stuck"] == [] and feat["stuck_episodes"] == 0
    assert _faults(records, "feat", "raised") == []
