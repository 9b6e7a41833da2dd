"""A frozen sensor (one exact value over and over: a transmitter stuck at its last value,
a gateway serving a cached register) is a sensor fault, not a healthy machine.

Real parts: FEMTO bearing recordings for the detector's false-alarm odds; the in-process
Modbus simulator on loopback serving a frozen register image to the real Agent (real
SQLite store), then moving values again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import ConfigError, load_config
from agent.health import render_metrics
from agent.runtime import Agent
from drivers.reading import VELOCITY_RMS, Reading
from drivers.stuck import StuckRule, StuckWatch
from simulators.modbus import Fault, ModbusSimServer, SimDevice
from simulators.scenario import Constant, Healthy

FEMTO = Path("/work/shared/data/femto")
T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def _rms(bearing: str) -> np.ndarray:
    """Per-snapshot RMS (g) of the horizontal axis: one reading every 10 s."""
    data = np.load(FEMTO / f"{bearing}.npz")
    acc = data["acc"][:, :, 0].astype(np.float64) * float(data["scale_g"])
    return np.sqrt((acc**2).mean(axis=1))


def _feed(watch: StuckWatch, values: list[float], start_s: float = 0.0) -> list[bool]:
    return [
        watch.observe(("x", "accel_rms_g"), v, start_s + 10.0 * i) for i, v in enumerate(values)
    ]


@pytest.mark.skipif(not FEMTO.exists(), reason="the FEMTO recordings are not on this machine")
@pytest.mark.parametrize("bearing", ["Bearing1_1", "Bearing3_2"])
def test_real_vibration_is_never_stuck_even_at_coarse_register_resolution(bearing: str) -> None:
    """FEMTO RMS at float resolution never repeats; rounded to 0.01 g (a register scaled
    /100) it repeats in about a fifth of consecutive pairs, in runs of up to 8: neither is
    frozen, however short the time rule."""
    rms = _rms(bearing)
    for values in (rms.astype(np.float32).tolist(), np.round(rms, 2).tolist()):
        watch = StuckWatch(StuckRule(min_readings=3, min_duration_s=0.0))
        assert not any(_feed(watch, values))
        assert watch.episodes == 0


@pytest.mark.skipif(not FEMTO.exists(), reason="the FEMTO recordings are not on this machine")
def test_a_coarse_register_that_freezes_is_stuck_then_clears_when_it_moves() -> None:
    """The same register frozen at its last value for 10 minutes: stuck once its run is
    longer than live data would reach by chance (more readings than the floor, learned
    from its repeats), not before the time rule; the first new value clears it, and the
    frozen stretch does not teach the watch that long runs are normal."""
    live = np.round(_rms("Bearing1_1")[:1000], 2).tolist()
    watch = StuckWatch(StuckRule(min_readings=3, min_duration_s=120.0))
    assert not any(_feed(watch, live))
    key = ("x", "accel_rms_g")
    needed = watch.needed(key)
    assert 8 < needed < 40  # its live runs reach 8; a frozen one is found within minutes
    frozen = [live[-1]] * 60
    seen = _feed(watch, frozen, start_s=10.0 * len(live))
    first = seen.index(True)
    tail = len(live) - next(i for i in range(len(live), 0, -1) if live[i - 1] != live[-1])
    assert first + 1 + tail >= needed  # the live run it froze on counts too
    assert all(seen[first:]) and watch.episodes == 1
    assert watch.stuck_now == ("x/accel_rms_g",)
    assert not watch.observe(key, live[-1] + 0.01, 10.0 * (len(live) + 61))
    assert watch.stuck_now == ()
    # the frozen run taught nothing: its value, back, needs no more than before
    assert not watch.observe(key, live[-1], 10.0 * (len(live) + 62))
    assert watch.needed(key) <= needed


def test_the_time_rule_and_zero() -> None:
    """Many equal readings within min_duration_s are not stuck (a fast poll of a slowly
    updating sensor); a value of exactly 0 is a machine at rest, never stuck."""
    watch = StuckWatch(StuckRule(min_readings=5, min_duration_s=60.0))
    assert not any(watch.observe(("z", "v"), 1.234, 0.5 * i) for i in range(100))  # 50 s
    assert watch.observe(("z", "v"), 1.234, 61.0)
    assert not any(watch.observe(("z", "w"), 0.0, 10.0 * i) for i in range(100))


def test_a_frozen_feature_is_left_out_and_its_reading_is_bad() -> None:
    """A stuck value never reaches the monitor as a healthy reading: flagged, left out, and
    the reading marked bad, as a saturated register is."""
    watch = StuckWatch(StuckRule(min_readings=3, min_duration_s=0.0))
    out: list[Reading] = []
    for i in range(30):
        at = T0 + timedelta(seconds=i)
        feats = {VELOCITY_RMS: 2.5, "temperature_c": 40.0 + i / 100}
        out, flags = watch.check([Reading("s", "z", at, feats, mono_s=float(i))])
    (last,) = out
    assert last.quality == "bad" and last.flags == ("velocity_rms_mm_s:stuck",)
    assert VELOCITY_RMS not in last.features and flags == ["velocity_rms_mm_s:stuck"]


def _yaml(tmp_path: Path, port: int, extra: str = "") -> Path:
    path = tmp_path / "agent.yaml"
    sensors = [
        f"  - {{id: s{i}, asset: m, modbus: {{host: 127.0.0.1, port: {port}, device_id: {i},"
        " timeout_s: 0.2}, poll_interval_s: 0.25, bad_values_fault_s: 0.5}"
        for i in (1, 2)
    ]
    path.write_text(
        "\n".join(
            [
                "gateway: {id: gw-stuck}",
                "assets:",
                "  - {id: m, tier: 1, machine: {standard: iso10816-3, group: 2,"
                " foundation: rigid, rpm: 1480}, alerting: {debounce: 1, baseline_readings: 10}}",
                "sensors:",
                *sensors,
                f'store: {{path: "{tmp_path / "o.db"}"}}',
                "health: {port: 0}",
                f'control: {{socket: "{tmp_path / "c.sock"}"}}',
                "sensor_faults: {stuck: {min_readings: 4, min_duration_s: 1}}",
                extra,
            ]
        )
    )
    return path


async def _until(done: Callable[[], bool], deadline: float) -> None:
    while time.monotonic() < deadline:
        if done():
            return
        await asyncio.sleep(0.2)


@pytest.mark.network
async def test_a_frozen_modbus_register_raises_a_sensor_fault_and_moving_values_clear_it(
    tmp_path: Path,
) -> None:
    """s1's registers freeze (the simulator serves one fixed image, as a gateway serving a
    cached register does); s2's move. s1 raises one sensor_fault naming its stuck
    features, shows them in status and /metrics; once its values move again, it clears."""
    frozen = SimDevice(1, Constant(), Fault())
    async with ModbusSimServer([frozen, SimDevice(2, Healthy(seed=2), Fault())]) as srv:
        records: list[dict[str, Any]] = []
        agent = Agent(load_config(_yaml(tmp_path, srv.port)), on_records=records.extend)
        task = asyncio.create_task(agent.run())

        def faults(state: str) -> list[dict[str, Any]]:
            return [r for r in records if r["kind"] == "sensor_fault" and r["state"] == state]

        try:
            deadline = time.monotonic() + 30
            await _until(lambda: bool(faults("raised")), deadline)
            snap = await agent.snapshot()
            frozen.scenario = Healthy(seed=1)  # the register moves again
            await _until(lambda: bool(faults("cleared")), deadline)
            after = await agent.snapshot()
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)
    (raised,) = faults("raised")
    assert raised["sensor"]["id"] == "s1"
    assert "velocity_rms_mm_s:stuck" in raised["evidence"]["implausible_values"]
    assert "frozen" in raised["no_estimate_reason"]
    by_id = {s["id"]: s for s in snap["sensors"]}
    assert "z/velocity_rms_mm_s" in by_id["s1"]["stuck"] and by_id["s2"]["stuck"] == []
    metrics = render_metrics(snap).decode()
    assert 'edge_sensor_bad_values_total{reason="stuck",sensor="s1"}' in metrics
    assert 'edge_sensor_stuck_episodes_total{sensor="s1"}' in metrics
    assert 'edge_sensor_stuck_values{sensor="s2"} 0.0' in metrics
    (cleared,) = faults("cleared")
    assert cleared["sensor"]["id"] == "s1"
    assert {s["id"]: s["stuck"] for s in after["sensors"]} == {"s1": [], "s2": []}


def test_check_refuses_an_unknown_feature_and_a_sensor_overrides_some_keys(
    tmp_path: Path,
) -> None:
    cfg = load_config(_yaml(tmp_path, 5020))
    rule = cfg.stuck_rule(cfg.sensors[0])
    assert rule is not None
    assert rule == StuckRule(4, 1.0, rule.features, at_rest_below_mm_s=0.05)  # its asset's
    path = _yaml(tmp_path, 5020)
    text = path.read_text().replace(
        "bad_values_fault_s: 0.5}", "bad_values_fault_s: 0.5, stuck: {min_duration_s: 600}}", 1
    )
    path.write_text(text)
    cfg = load_config(path)
    rule = cfg.stuck_rule(cfg.sensors[0])
    assert rule is not None and (rule.min_readings, rule.min_duration_s) == (4, 600.0)
    path.write_text(text.replace("min_duration_s: 600", "features: [velocity_rms]"))
    with pytest.raises(ConfigError, match="unknown feature 'velocity_rms'"):
        load_config(path)
    path.write_text(text.replace("min_duration_s: 600", "enabled: false"))
    assert load_config(path).stuck_rule(load_config(path).sensors[0]) is None


def test_status_names_a_frozen_sensor_and_does_not_count_it_ok(tmp_path: Path) -> None:
    from agent.inspect import _line

    cfg = load_config(_yaml(tmp_path, 5020))
    agent = {
        "status": "ok",
        "sensors": [
            {"id": "s1", "state": "ok", "stuck": ["z/velocity_rms_mm_s"]},
            {"id": "s2", "state": "ok", "stuck": []},
        ],
    }
    line = _line(cfg, agent, None, {})
    assert "sensor s1 frozen at one value (z/velocity_rms_mm_s)" in line
    assert "sensors 1/2 ok" in line


@dataclass(frozen=True, slots=True)
class _IdleAtCoarseVelocity:
    """A quiet machine whose velocity sits inside one register step (0.3 mm/s at 0.1 mm/s
    resolution: the same value for an hour), while its accelerations, kurtosis and crest
    factor, at finer resolution, move as live vibration does."""

    resolution_s = Healthy.resolution_s

    def sample(self, t_s: float) -> dict[str, dict[str, float]]:
        live = Healthy(seed=3).sample(t_s)
        for axis in ("z", "x"):
            live[axis] |= {VELOCITY_RMS: 0.3, "velocity_peak_mm_s": 0.5}
        return live


@pytest.mark.network
async def test_a_steady_coarse_value_on_a_live_sensor_is_not_stuck(tmp_path: Path) -> None:
    """s1's velocity never leaves one coarse register step on an idle machine while its
    other values move: a live sensor, analysed, no sensor_fault. s2 serves one frozen
    image (every value still): stuck and faulted. Before the check looked at the
    channel's other values, s1's velocity was dropped as frozen and s1 faulted too."""
    frozen = SimDevice(2, Constant(), Fault())
    async with ModbusSimServer([SimDevice(1, _IdleAtCoarseVelocity(), Fault()), frozen]) as srv:
        records: list[dict[str, Any]] = []
        agent = Agent(load_config(_yaml(tmp_path, srv.port)), on_records=records.extend)
        task = asyncio.create_task(agent.run())

        def raised() -> set[str]:
            return {
                r["sensor"]["id"]
                for r in records
                if r["kind"] == "sensor_fault" and r["state"] == "raised"
            }

        try:
            await _until(lambda: "s2" in raised(), time.monotonic() + 30)
            await asyncio.sleep(2.0)  # s1 has had 4 times the rule's 1 s since then
            snap = await agent.snapshot()
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)
    assert raised() == {"s2"}
    by_id = {s["id"]: s for s in snap["sensors"]}
    assert by_id["s1"]["stuck"] == [] and by_id["s1"]["stuck_episodes"] == 0
    assert "z/velocity_rms_mm_s" in by_id["s2"]["stuck"]


@dataclass(frozen=True, slots=True)
class _Refreshed:
    """A gateway that refreshes a wireless sensor's registers every ``every_s`` and serves
    the last measurement to every poll in between."""

    every_s: float

    @property
    def resolution_s(self) -> float:
        return self.every_s

    def sample(self, t_s: float) -> dict[str, dict[str, float]]:
        return Healthy(seed=4).sample(self.every_s * (t_s // self.every_s))


@pytest.mark.network
async def test_a_gateway_that_refreshes_slowly_does_not_flap(tmp_path: Path) -> None:
    """Registers refreshed every 7 s, polled every 0.25 s, against a 1 s rule: the channel
    stands still 7 s (28 polls, past the 21 a value needs before it has history) and
    moves, again and again. At most the first stretch is taken for a freeze (nothing is
    learned yet); then the agent knows the sensor's rhythm and raises nothing more.
    Before, every refresh raised a 'frozen' sensor_fault and cleared it."""
    device = SimDevice(1, _Refreshed(7.0), Fault())
    async with ModbusSimServer([device, SimDevice(2, Healthy(seed=2), Fault())]) as srv:
        records: list[dict[str, Any]] = []
        agent = Agent(load_config(_yaml(tmp_path, srv.port)), on_records=records.extend)
        task = asyncio.create_task(agent.run())
        try:
            await asyncio.sleep(23.0)  # three refreshes and more
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)
    raised = [r for r in records if r["kind"] == "sensor_fault" and r["state"] == "raised"]
    assert len(raised) <= 1


def test_a_wireless_sensor_refreshed_every_10_minutes_does_not_flap() -> None:
    """A gateway polled every 5 s serves a wireless sensor's measurement, refreshed every
    10 minutes: for 4 hours the first stretch at most is taken for a freeze, then never
    again; when the refreshes stop, the values are stuck within 3 hours (served-again
    repeats raise the learned repeat odds: later than a live sensor, never missed).
    Before, every refresh was 'frozen' after 300 s (half of all readings dropped, 24
    sensor_faults raised and cleared in the 4 hours)."""
    rng = np.random.default_rng(7)
    watch = StuckWatch(StuckRule())
    dropped, values = 0, {}
    for i in range(4 * 720 + 720):
        t = 5.0 * i
        if t % 600 == 0 and t < 4 * 3600:
            values = {VELOCITY_RMS: round(2 + rng.normal(0, 0.1), 3), "kurtosis": 3 + rng.random()}
        _, flags = watch.check([Reading("s", "z", T0 + timedelta(seconds=t), values, mono_s=t)])
        if t < 4 * 3600:
            dropped += bool(flags)
        elif flags:
            break
    assert dropped <= 300 / 5  # of the first stretch, once
    assert watch.episodes <= 4  # its 2 values then, and at the real freeze
    assert t - (4 * 3600 - 600) <= 3 * 3600  # since the last refresh: found, if late


@pytest.mark.network
async def test_a_restart_neither_clears_a_frozen_sensors_fault_nor_raises_it_anew(
    tmp_path: Path,
) -> None:
    """s1 is frozen and its sensor_fault raised; the agent restarts (same store). Its first
    readings after the restart cannot be judged (their run's start was before), but they
    are no sign that it answers again: the fault stays raised, and no new one is raised
    when the run is long enough again. When s1's values move, it clears. Before, the
    restart cleared it ('sensor answers again') and raised it again seconds later."""
    device = SimDevice(1, Constant(), Fault())
    async with ModbusSimServer([device, SimDevice(2, Healthy(seed=2), Fault())]) as srv:
        path = _yaml(tmp_path, srv.port)
        runs: list[list[dict[str, Any]]] = []
        for restart in (False, True):
            records: list[dict[str, Any]] = []
            runs.append(records)
            agent = Agent(load_config(path), on_records=records.extend)
            task = asyncio.create_task(agent.run())

            def faults(state: str, records: list[dict[str, Any]] = records) -> list[str]:
                return [
                    r["sensor"]["id"]
                    for r in records
                    if r["kind"] == "sensor_fault" and r["state"] == state
                ]

            try:
                if not restart:
                    await _until(lambda: bool(faults("raised")), time.monotonic() + 30)
                    continue
                await asyncio.sleep(8.0)  # 32 polls: past every count the watch learns anew
                during = list(records)
                device.scenario = Healthy(seed=1)
                await _until(lambda: bool(faults("cleared")), time.monotonic() + 20)
            finally:
                agent.stop()
                await asyncio.wait_for(task, 15)
    assert [r["state"] for r in runs[0] if r["kind"] == "sensor_fault"] == ["raised"]
    assert [r for r in during if r["kind"] == "sensor_fault"] == []
    assert [r["state"] for r in runs[1] if r["kind"] == "sensor_fault"] == ["cleared"]


def test_a_coarse_value_a_steady_machine_sits_on_is_judged_by_its_own_odds() -> None:
    """A velocity-only sensor at 0.1 mm/s steps on a steady machine (1.22 +- 0.02 mm/s,
    a message every 10 s): it reads 1.2 for minutes and 1.3 for a message now and then.
    The feature's average run (1.2's long ones and 1.3's single ones) understated how
    long 1.2 stays: taken for frozen 5 times in a week before; now never, by 1.2's own
    odds, and a real freeze after the week is still found within the hour."""
    rng = np.random.default_rng(3)
    watch = StuckWatch(StuckRule())
    week = 7 * 8640
    for i in range(week + 360):
        t = 10.0 * i
        value = round(1.22 + rng.normal(0, 0.02), 1) if i < week else 1.2
        _, flags = watch.check([Reading("s", "z", T0, {VELOCITY_RMS: value}, mono_s=t)])
        if i < week:
            assert not flags, f"live reading {i} taken for frozen"
        elif flags:
            break
    assert flags and 10.0 * (i - week) < 3600
