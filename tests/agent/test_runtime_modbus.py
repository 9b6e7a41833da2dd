"""The running agent against misbehaving Modbus devices: every fault kind ends in a quality
flag or a sensor_fault alert, never in a severity or trend alert; shutdown under load is
bounded and nothing is read after it.

Real parts: the in-process simulator on loopback, the real Agent with a real SQLite store,
a profiles folder with integrator profiles (float32 and int16 registers).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.health import render_metrics
from agent.runtime import Agent
from simulators.modbus import Fault, ModbusSimServer, SimDevice
from simulators.scenario import Constant

pytestmark = [pytest.mark.network, pytest.mark.slow]

FLOAT_PROFILE = """\
name: site-float
model: integrator test sensor, float32 registers
document: "this test"
table: input
registers:
  - {address: 0, type: float32, word_order: little, unit: mm/s, feature: velocity_rms_mm_s,
     channel: z, valid: [0, 50]}
  - {address: 2, type: float32, word_order: little, unit: g, feature: accel_rms_g, channel: z,
     valid: [0, 20]}
  - {address: 4, type: int16, scale: 0.01, unit: mm/s, feature: velocity_rms_mm_s, channel: x,
     valid: [0, 50], sentinels: [0x8000]}
"""

# device id -> (scenario values, fault, what the agent must report)
CASES: dict[int, tuple[dict[str, float], Fault, str]] = {
    1: ({}, Fault(), "ok"),
    2: ({}, Fault("ffff"), "bad:sentinel"),
    3: ({}, Fault("zero"), "bad:all_zero"),
    4: ({"velocity_rms_mm_s": 55.0}, Fault(), "bad:out_of_range"),  # valid: 0-50
    5: ({}, Fault("exception", code=2), "error:exception_2"),
    6: ({}, Fault("short"), "error:byte_count"),
    7: ({}, Fault("garbled"), "error:byte_count"),
    8: ({}, Fault("wrong_id"), "error:wrong_device"),
    9: ({}, Fault("dead"), "error:timeout"),
    # A railed or clipped sensor: one code under the uint16 full scale (65.534 mm/s) and
    # under the int16 over-range mark in a 0-20 g row (32.766 g). (0x7FFE in a velocity row
    # is a real 32.766 mm/s: the QM30VT2 reads to 46.)
    10: ({"accel_peak_g": 32.766}, Fault(), "bad:saturated"),
    11: ({"velocity_rms_mm_s": 65.534}, Fault(), "bad:saturated"),
}
FLOAT_CASES: dict[int, tuple[dict[str, float], Fault, str]] = {
    1: ({}, Fault(), "ok"),
    2: ({}, Fault("nan"), "bad:not_finite"),
    3: ({"velocity_rms_mm_s": -5.0}, Fault(), "bad:out_of_range"),
}


def config_text(tmp_path: Path, port: int, float_port: int) -> str:
    sensors = []
    for i in CASES:
        sensors.append(
            f"  - {{id: q{i}, asset: m, modbus: {{host: 127.0.0.1, port: {port}, device_id: {i},"
            " timeout_s: 0.2, backoff_max_s: 1}, poll_interval_s: 0.25, bad_values_fault_s: 1}"
        )
    for i in FLOAT_CASES:
        sensors.append(
            f"  - {{id: f{i}, asset: m, modbus: {{host: 127.0.0.1, port: {float_port}, "
            f"device_id: {i}, profile: site-float, timeout_s: 0.2}}, poll_interval_s: 0.25, "
            "bad_values_fault_s: 1}"
        )
    return "\n".join(
        [
            "gateway: {id: gw-faults}",
            "assets:",
            "  - {id: m, tier: 1, machine: {standard: iso10816-3, group: 2, foundation: rigid,"
            " rpm: 1480}, alerting: {debounce: 1, baseline_readings: 10}}",
            "sensors:",
            *sensors,
            f'store: {{path: "{tmp_path / "o.db"}"}}',
            "health: {port: 0}",
            f'control: {{socket: "{tmp_path / "c.sock"}"}}',
            "profiles_dir: profiles",
        ]
    )


def devices(cases: dict[int, tuple[dict[str, float], Fault, str]]) -> list[SimDevice]:
    return [SimDevice(i, Constant(values), fault) for i, (values, fault, _) in cases.items()]


async def test_every_fault_kind_ends_in_a_flag_or_a_sensor_fault(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "site-float.yaml").write_text(FLOAT_PROFILE)
    async with (
        ModbusSimServer(devices(CASES)) as srv,
        ModbusSimServer(devices(FLOAT_CASES), profile=_float_profile(tmp_path)) as fsrv,
    ):
        cfg_path = tmp_path / "agent.yaml"
        cfg_path.write_text(config_text(tmp_path, srv.port, fsrv.port))
        records: list[dict[str, Any]] = []
        agent = Agent(load_config(cfg_path), on_records=records.extend)
        task = asyncio.create_task(agent.run())
        try:
            deadline = time.monotonic() + 20
            expected_faults = {f"q{i}" for i, c in CASES.items() if c[2] != "ok"} | {
                f"f{i}" for i, c in FLOAT_CASES.items() if c[2] != "ok"
            }
            while time.monotonic() < deadline:
                raised = {r["sensor"]["id"] for r in records if r["kind"] == "sensor_fault"}
                if raised >= expected_faults:
                    break
                await asyncio.sleep(0.2)
            snap = await agent.snapshot()
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)
    by_id = {s["id"]: s for s in snap["sensors"]}
    for prefix, cases in (("q", CASES), ("f", FLOAT_CASES)):
        for i, (_, _, want) in cases.items():
            s = by_id[f"{prefix}{i}"]
            kind, _, reason = want.partition(":")
            if kind == "ok":
                assert s["state"] == "ok" and not s["bad_values"] and not s["errors_by_kind"], s
            elif kind == "bad":
                assert s["bad_values"].get(reason, 0) >= 1, (want, s)
                assert s["state"] == "ok"  # it answers; what it says is garbage
            else:
                assert s["errors_by_kind"].get(reason, 0) >= 1, (want, s)
    faults = [r for r in records if r["kind"] == "sensor_fault"]
    raised = {r["sensor"]["id"] for r in faults if r["state"] == "raised"}
    assert raised == expected_faults, raised
    garbage = [r for r in faults if r["severity"]["metric"] == "implausible_values_seconds"]
    assert {r["sensor"]["id"] for r in garbage} == {"q2", "q3", "q4", "q10", "q11", "f2", "f3"}
    assert all(r["evidence"]["implausible_values"] for r in garbage)
    # Garbage never reaches severity or trend: the only such alerts could come from the
    # healthy devices, and those run at 1 mm/s (zone A).
    assert [r for r in records if r["kind"] in ("severity", "trend")] == []
    metrics = render_metrics(snap).decode()
    assert 'edge_sensor_bad_values_total{reason="sentinel",sensor="q2"}' in metrics
    assert 'edge_sensor_poll_errors_by_kind_total{kind="timeout",sensor="q9"}' in metrics
    json.dumps(snap)  # /healthz serialises it


def _float_profile(tmp_path: Path):
    from drivers.profiles import load_profile_file

    path = tmp_path / "profiles" / "site-float.yaml"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(FLOAT_PROFILE)
    return load_profile_file(path)


async def test_stop_under_load_is_bounded_and_reads_nothing_after(tmp_path: Path) -> None:
    n = 150
    async with ModbusSimServer([SimDevice(i, Constant()) for i in range(1, n + 1)]) as srv:
        sensors = "\n".join(
            f"  - {{id: s{i}, asset: m, modbus: {{host: 127.0.0.1, port: {srv.port}, "
            f"device_id: {i}, timeout_s: 0.04}}, poll_interval_s: 0.05}}"
            for i in range(1, n + 1)
        )
        cfg_path = tmp_path / "agent.yaml"
        cfg_path.write_text(
            "gateway: {id: gw-stop}\nassets:\n  - {id: m, machine: {standard: iso10816-3, "
            "group: 2, foundation: rigid, rpm: 1480}}\nsensors:\n"
            f'{sensors}\nstore: {{path: "{tmp_path / "o.db"}"}}\nhealth: {{port: 0}}\n'
            f'control: {{socket: "{tmp_path / "c.sock"}"}}\n'
        )
        agent = Agent(load_config(cfg_path))
        task = asyncio.create_task(agent.run())
        async with asyncio.timeout(10):
            await agent.ready.wait()
        await asyncio.sleep(1.5)
        requests_before = sum(srv.requests.values())
        assert requests_before > n  # polling at full speed
        started = time.monotonic()
        agent.stop()
        await asyncio.wait_for(task, 10)
        stop_s = time.monotonic() - started
        await asyncio.sleep(0.3)
        after = sum(srv.requests.values())
        await asyncio.sleep(0.5)
        assert sum(srv.requests.values()) == after, "a poller kept polling after the agent stopped"
    assert stop_s < 3.0, stop_s
