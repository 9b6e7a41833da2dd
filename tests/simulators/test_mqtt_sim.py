"""`edge-sim mqtt` and `edge-sim mosquitto` as a user runs them, checked at a real broker.

Each test subscribes to a mosquitto of its own, runs the simulator as a process and reads
what arrived: topics, MACs, payload fields, degradation, hostile fractions, FEMTO replay.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest

from agent.analysis.features import waveform_features
from simulators import ncd
from tests.mosquitto import Mosquitto

pytestmark = pytest.mark.network

MAC1, MAC2, MAC3 = ncd.mac(1), ncd.mac(2), ncd.mac(3)
RUN_TIMEOUT_S = 20.0


@dataclass
class Run:
    summary: dict[str, Any]
    messages: list[tuple[str, bytes]]
    ready: dict[str, Any]

    def json_on(self, topic_part: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.messages if topic_part in t]


@pytest.fixture
def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as m:
        yield m


async def edge_sim(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode()


async def run_sim(broker: Mosquitto, *args: str) -> Run:
    """Subscribe to ncd/#, run `edge-sim mqtt --json ARGS`, take every message it sent."""
    messages: list[tuple[str, bytes]] = []
    arrived = asyncio.Event()
    async with aiomqtt.Client("127.0.0.1", broker.port) as sub:
        await sub.subscribe("ncd/#", qos=1)
        sim = asyncio.create_task(edge_sim("mqtt", "--port", str(broker.port), "--json", *args))

        async def take() -> None:
            async for msg in sub.messages:
                messages.append((str(msg.topic), bytes(msg.payload)))  # type: ignore[arg-type]
                arrived.set()

        taker = asyncio.create_task(take())
        code, out, err = await sim
        assert code == 0, err
        lines = out.strip().splitlines()
        summary = json.loads(lines[-1])
        try:  # QoS 1 acked by the broker: what is left is on its way to us
            async with asyncio.timeout(5):
                while len(messages) < summary["published"]:
                    arrived.clear()
                    await arrived.wait()
        except TimeoutError:
            pass
        taker.cancel()
    ready = json.loads(lines[0].removeprefix("READY "))
    return Run(summary, messages, ready)


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_processed_readings_per_sensor_on_its_mac_topic(broker: Mosquitto) -> None:
    run = await run_sim(broker, "--sensors", "3", "--sensor", "3:dead", "--rate", "20",
                        "--count", "12")  # fmt: skip
    assert run.summary["published"] == 12 == run.summary["per_kind"]["processed"]
    assert run.summary["failed"] == 0
    assert [s["mac"] for s in run.ready["sensors"]] == [MAC1, MAC2, MAC3]
    topics = [t for t, _ in run.messages]
    assert topics.count(f"ncd/vibration/{MAC1}") == topics.count(f"ncd/vibration/{MAC2}") == 6
    assert f"ncd/vibration/{MAC3}" not in topics  # dead: never publishes
    now = datetime.now(UTC)
    for topic, payload in run.messages:
        rec = json.loads(payload)
        assert topic.endswith(rec["addr"])
        for axis in "xyz":
            assert 0.5 < rec[f"{axis}_velocity_mm_sec"] < 1.4  # healthy: zone A
            assert 0.0 < rec[f"{axis}_rms_ACC_G"] < rec[f"{axis}_max_ACC_G"]
            assert rec[f"{axis}_peak_one_Hz"] == pytest.approx(24.7)
        assert 40 < rec["temperature"] < 50
        assert rec["rssi"] < 0 and rec["battery"] > 3.0
        assert (
            rec["timestamp"].endswith("Z")
            and abs((now - _ts(rec["timestamp"])).total_seconds()) < 30
        )
    stamps = [json.loads(p)["timestamp"] for t, p in run.messages if t.endswith(MAC1)]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


async def test_nested_firmware_puts_readings_under_sensor_data(broker: Mosquitto) -> None:
    run = await run_sim(broker, "--nested", "--rate", "20", "--count", "2")
    for rec in run.json_on("vibration"):
        assert rec["addr"] == MAC1 and "timestamp" in rec and "x_velocity_mm_sec" not in rec
        assert 0.5 < rec["sensor_data"]["z_velocity_mm_sec"] < 1.4


async def test_degrading_sensor_rises_through_zones_b_c_d(broker: Mosquitto) -> None:
    # Group 2 rigid: B/C at 2.8 mm/s, C/D at 4.5; the bearing reaches 8 mm/s at --life-s.
    run = await run_sim(broker, "--sensor", "1:degrade", "--life-s", "2", "--rate", "20",
                        "--duration", "2.2")  # fmt: skip
    v = [r["z_velocity_mm_sec"] for r in run.json_on("vibration")]
    assert len(v) >= 35
    first_c = next(i for i, x in enumerate(v) if x > 2.8)
    first_d = next(i for i, x in enumerate(v) if x > 4.5)
    assert max(v[:10]) < 1.4  # healthy while the agent would learn its baseline
    assert 10 < first_c < first_d
    assert v[-1] > 7.0
    assert all(x < 4.5 for x in v[:first_c])  # no zone D before zone C


async def test_hostile_fractions_and_the_good_messages_untouched(broker: Mosquitto) -> None:
    run = await run_sim(broker, "--sensors", "4", "--flood", "--count", "1000",
                        "--malformed", "0.2", "--garbage", "0.1",
                        "--oversize-bytes", "300000")  # fmt: skip
    kinds = run.summary["per_kind"]
    assert run.summary["published"] == 1000 == len(run.messages)
    assert kinds["malformed"] == pytest.approx(200, abs=30)
    assert kinds["garbage"] == pytest.approx(100, abs=30)
    malformed = garbage = good = 0
    for _, payload in run.messages:
        try:
            rec = json.loads(payload)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, truncated, too deep
            malformed += 1
            continue
        if len(payload) >= 300000:
            malformed += 1
        elif _plausible(rec):
            good += 1
        else:
            garbage += 1
    assert (malformed, garbage, good) == (kinds["malformed"], kinds["garbage"], kinds["processed"])


def _plausible(rec: Any) -> bool:
    if not isinstance(rec, dict) or not isinstance(rec.get("addr"), str):
        return False
    try:
        age = (datetime.now(UTC) - _ts(rec["timestamp"])).total_seconds()
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    values = [rec.get(f"{a}_velocity_mm_sec") for a in "xyz"]
    finite = all(isinstance(x, float) and math.isfinite(x) and 0 < x < 100 for x in values)
    return finite and abs(age) < 60


@pytest.mark.parametrize("encoding", ["json", "int16-b64"])
async def test_waveform_snapshots_carry_the_velocity_of_the_sensor(
    broker: Mosquitto, encoding: str
) -> None:
    run = await run_sim(broker, "--rate", "0", "--waveform-rate", "10", "--count", "2",
                        "--encoding", encoding)  # fmt: skip
    snaps = run.json_on(f"ncd/waveform/{MAC1}")
    assert len(snaps) == 2 == run.summary["per_kind"]["waveform"]
    for snap in snaps:
        assert snap["odr_hz"] == 25600 and set(snap["axes"]) == {"x", "y", "z"}
        for axis, data in snap["axes"].items():
            if encoding == "json":
                samples = np.asarray(data)
            else:
                assert snap["encoding"] == "int16-b64"
                raw = np.frombuffer(base64.b64decode(data), dtype="<i2")
                samples = raw * snap["scale_g"]
            assert samples.shape == (2560,)
            v = waveform_features(samples, snap["odr_hz"])["velocity_rms_mm_s"]
            assert 0.6 < v < 1.5, (axis, v)  # a healthy machine, zone A


async def test_femto_recording_replayed_as_h_v_snapshots(
    broker: Mosquitto, femto_dir: Path
) -> None:
    run = await run_sim(broker, "--femto", str(femto_dir / "Bearing1_2"), "--speedup", "200",
                        "--count", "5")  # fmt: skip
    assert run.ready["femto"]["mac"] == MAC1 and run.ready["sensors"] == []
    snaps = run.json_on(f"ncd/waveform/{MAC1}")
    assert len(snaps) == 5 == run.summary["per_kind"]["femto"]
    with np.load(femto_dir / "Bearing1_2.npz") as data:
        acc, scale = data["acc"][:5], float(data["scale_g"])
    for i, snap in enumerate(snaps):
        assert snap["odr_hz"] == 25600 and set(snap["axes"]) == {"h", "v"}
        for k, ch in enumerate("hv"):
            np.testing.assert_allclose(snap["axes"][ch], acc[i, :, k] * scale, atol=1e-5)
    # One snapshot every 10 s, 200 times faster: 4 intervals of 50 ms at least.
    assert run.summary["seconds"] >= 0.2


async def test_mosquitto_subcommand_serves_a_broker_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.cli", "mosquitto", "--dir", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(15):
            line = await proc.stdout.readline()
        info = json.loads(line.decode().removeprefix("READY "))
        code, out, _ = await edge_sim("mqtt", "--port", str(info["port"]), "--count", "3",
                                      "--rate", "50")  # fmt: skip
        assert code == 0 and "published 3 messages" in out
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_mosquitto_subcommand_refuses_when_none_is_installed() -> None:
    env = {**os.environ, "EDGE_MOSQUITTO": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.cli", "mosquitto",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2 and out == b""
    assert err.decode().count("\n") == 1 and "mosquitto is not installed" in err.decode()


async def test_unreachable_broker_is_one_clear_line() -> None:
    from tests.conftest import free_port

    code, _, err = await edge_sim("mqtt", "--port", str(free_port()), "--count", "1",
                                  "--connect-timeout", "0.5")  # fmt: skip
    assert code == 1 and "cannot reach the broker at 127.0.0.1:" in err


FEMTO_DECODER = """\
# FEMTO/PRONOSTIA snapshots as edge-sim mqtt --femto publishes them: channels h and v.
name: femto-hv
format: waveform-json
timestamp: timestamp
key_field: addr
rate: odr_hz
axes: axes
encoding: encoding
scale: scale_g
axis_names: [h, v]
"""


@pytest.mark.femto
async def test_femto_replay_reaches_the_agents_feature_extraction(
    broker: Mosquitto, femto_dir: Path, tmp_path: Path
) -> None:
    """A recorded bearing over MQTT into `edge-agent run`: a decoder file of the user's for
    channels h and v, every snapshot analysed on both channels, nothing dropped."""
    from tests.conftest import agent_process, free_port

    (tmp_path / "decoders").mkdir()
    (tmp_path / "decoders" / "femto-hv.yaml").write_text(FEMTO_DECODER)
    health = free_port()
    (tmp_path / "agent.yaml").write_text(f"""\
gateway: {{id: femto-gw}}
decoders_dir: decoders
assets:
  - {{id: bench-1, machine: {{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1800}}}}
mqtt:
  - {{id: lab, host: 127.0.0.1, port: {broker.port}}}
sensors:
  - id: bearing1-2
    asset: bench-1
    channels: [h, v]
    mqtt: {{broker: lab, topic: "ncd/waveform/{MAC1}", decoder: femto-hv}}
store: {{path: "{tmp_path / "outbox.db"}"}}
health: {{port: {health}}}
control: {{socket: "{tmp_path / "c.sock"}"}}
""")  # fmt: skip
    agent = await agent_process(tmp_path / "agent.yaml", stderr=asyncio.subprocess.PIPE)
    try:
        await _metric_reaches(health, "edge_mqtt_broker_connected", 1, 30)  # subscribed
        code, out, err = await edge_sim("mqtt", "--port", str(broker.port), "--femto",
                                        str(femto_dir / "Bearing1_2"), "--speedup", "1000",
                                        "--count", "20")  # fmt: skip
        assert code == 0 and "femto 20" in out, err
        m = await _metric_reaches(health, "edge_readings_total", 40, 15)
        assert m["edge_readings_total"] == 40 and m.get("edge_mqtt_dropped_total", 0) == 0
        assert m["edge_mqtt_messages_total"] == 20
    finally:
        agent.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, agent_err = await agent.communicate()
    assert agent.returncode == 0, agent_err.decode()[-2000:]


async def _metric_reaches(port: int, name: str, value: float, within_s: float) -> dict[str, float]:
    """Scrape /metrics until `name` reaches `value` (bounded); the last scrape."""
    m: dict[str, float] = {}
    for _ in range(int(within_s / 0.2)):
        m = await _metrics(port)
        if m.get(name, 0.0) >= value:
            break
        await asyncio.sleep(0.2)
    return m


async def _metrics(port: int) -> dict[str, float]:
    """GET /metrics, summed over labels."""
    import aiohttp

    out: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
    except aiohttp.ClientError:
        return out
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            key = name.split("{", 1)[0]
            out[key] = out.get(key, 0.0) + float(value)
    return out


async def test_publisher_rides_out_a_broker_restart(broker: Mosquitto) -> None:
    """Like a gateway: the broker restarts mid-stream, the sensors keep publishing after it."""
    sim = asyncio.create_task(edge_sim("mqtt", "--port", str(broker.port), "--json",
                                       "--rate", "20", "--duration", "3"))  # fmt: skip
    await asyncio.sleep(1.2)
    await asyncio.to_thread(broker.restart)
    code, out, err = await sim
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and summary["reconnects"] == 1, err
    assert summary["published"] >= 30 and summary["failed"] <= 5  # ~60 due, a few lost
    assert "Traceback" not in err and "broker connection lost" in err
