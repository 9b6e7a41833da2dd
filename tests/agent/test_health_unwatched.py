"""/healthz says "degraded" while a sensor answers but its machine is not watched: frozen
at one value (drivers.stuck), or only implausible values for as long as raises its
sensor_fault. A stopped machine, or a sensor still learning its baseline, is not degraded.

Real parts: the in-process Modbus simulator on loopback, the real Agent (real SQLite
store), /healthz over HTTP, and `edge-agent status` asking it.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import load_config
from agent.health import render_metrics
from agent.inspect import status
from agent.runtime import Agent
from simulators.modbus import Fault, ModbusSimServer, SimDevice
from simulators.scenario import Constant, Healthy, Sample

_REST_SCALE = {"velocity": 0.02, "accel": 0.25}  # of a running machine's amplitudes


@dataclass(frozen=True, slots=True)
class AtRest:
    """A stopped machine: velocity at the sensor's noise floor (0.02 mm/s, under
    machine.running_above_mm_s), the floor's ambient acceleration; noisy, as a real one."""

    seed: int = 3
    resolution_s = Healthy.resolution_s

    def sample(self, t_s: float) -> Sample:
        # Amplitudes noisy at their floor (a coarse register must not repeat them for
        # long); kurtosis and crest factor as a running machine's (plausible, not scaled).
        noisy = Healthy(seed=self.seed, noise=0.3).sample(t_s)
        calm = Healthy(seed=self.seed).sample(t_s)
        out: Sample = {}
        for ch, feats in calm.items():
            out[ch] = dict(feats)
            for k, v in noisy[ch].items():
                scale = _REST_SCALE.get(k.split("_")[0].replace("hf", "accel"))
                if scale is not None:
                    out[ch][k] = v * scale
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _yaml(tmp_path: Path, port: int) -> Path:
    sensors = [
        f"  - {{id: s{i}, asset: m{i}, modbus: {{host: 127.0.0.1, port: {port}, device_id: {i},"
        " timeout_s: 0.2}, poll_interval_s: 0.25, bad_values_fault_s: 0.5}"
        for i in (1, 2, 3)
    ]
    assets = [
        f"  - {{id: m{i}, tier: 1, machine: {{standard: iso10816-3, group: 2,"
        " foundation: rigid, rpm: 1480}, alerting: {debounce: 1, baseline_readings: 100000}}"
        for i in (1, 2, 3)
    ]
    path = tmp_path / "agent.yaml"
    path.write_text(
        "\n".join(
            [
                "gateway: {id: gw-unwatched}",
                "assets:",
                *assets,
                "sensors:",
                *sensors,
                f'store: {{path: "{tmp_path / "o.db"}"}}',
                f"health: {{port: {_free_port()}}}",
                f'control: {{socket: "{tmp_path / "c.sock"}"}}',
                "sensor_faults: {stuck: {min_readings: 4, min_duration_s: 1}}",
            ]
        )
    )
    return path


async def _until(done: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await done():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {within_s} s: {what}")


@pytest.mark.network
async def test_a_frozen_or_garbage_sensor_degrades_healthz_a_stopped_or_learning_one_not(
    tmp_path: Path,
) -> None:
    """Before: s1 frozen at one value (its sensor_fault raised) left /healthz 200 "ok" and
    `status` printed "agent running, ok: sensor s1 frozen ...": a monitor checking /healthz
    was never told. Now it is 503 "degraded" while s1 is frozen, and again while s1 answers
    only NaN (its fault raised after bad_values_fault_s), and `status` says DEGRADED with
    the reason; s2 learning its baseline and s3 at rest (stopped) leave it "ok"."""
    s1 = SimDevice(1, Healthy(seed=1), Fault())
    devices = [s1, SimDevice(2, Healthy(seed=2), Fault()), SimDevice(3, AtRest(), Fault())]
    async with ModbusSimServer(devices) as srv:
        cfg = load_config(_yaml(tmp_path, srv.port))
        agent = Agent(cfg, on_records=lambda _: None)
        task = asyncio.create_task(agent.run())
        url = f"http://127.0.0.1:{cfg.health.port}/healthz"
        seen: dict[str, Any] = {}

        async def healthz() -> dict[str, Any]:
            await asyncio.sleep(1.1)  # past the shared snapshot's age
            async with aiohttp.ClientSession() as s, s.get(url) as r:
                body = dict(await r.json())
                body["_http"] = r.status
                return body

        def line() -> str:
            out = io.StringIO()
            status(cfg, out)
            return out.getvalue()

        async def calm() -> bool:
            """All three answer; s2 learns, s3 stands still: nothing is wrong."""
            body = seen["body"] = await healthz()
            views = {c["sensor"]: c for c in body["channels"] if c["channel"] == "z"}
            states = {s["id"]: s["state"] for s in body["sensors"]}
            return (
                states == dict.fromkeys(("s1", "s2", "s3"), "ok")
                and views.get("s2", {}).get("learning_state") == "learning"
                and views.get("s3", {}).get("stopped") is True
            )

        async def unwatched(key: str) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                body = seen["body"] = await healthz()
                s = next(s for s in body["sensors"] if s["id"] == "s1")
                return bool(s[key]) if key == "stuck" else s.get("bad_for_s", 0) >= 1.0

            return check

        try:
            await _until(calm, 20, "s1..s3 answering, s2 learning, s3 stopped")
            calm_body, calm_line = seen["body"], await asyncio.to_thread(line)
            assert calm_body["status"] == "ok", calm_body["sensors"]
            s1.scenario = Constant()  # frozen: the gateway serves one cached image
            await _until(await unwatched("stuck"), 20, "s1 judged stuck")
            frozen_body, frozen_line = seen["body"], await asyncio.to_thread(line)
            s1.scenario = Healthy(seed=1)
            await _until(calm, 20, "s1 moving again")
            s1.fault = Fault("nan")  # answers garbage only
            await _until(await unwatched("bad_for_s"), 20, "s1 answering NaN for 1 s")
            nan_body, nan_line = seen["body"], await asyncio.to_thread(line)
            s1.fault = Fault()
            await _until(calm, 20, "s1 answering plausible values again")
            back_body = seen["body"]
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)

    for body in (calm_body, back_body):  # a stopped machine and a learning one: ok
        assert (body["_http"], body["status"]) == (200, "ok"), body["sensors"]
    assert "agent running, ok;" in calm_line and "sensors 3/3 ok" in calm_line

    assert (frozen_body["_http"], frozen_body["status"]) == (503, "degraded")
    assert "agent running, DEGRADED: sensor s1 frozen at one value (" in frozen_line
    assert "sensors 2/3 ok" in frozen_line

    assert (nan_body["_http"], nan_body["status"]) == (503, "degraded")
    s1_nan = next(s for s in nan_body["sensors"] if s["id"] == "s1")
    assert s1_nan["stuck"] == [] and s1_nan["implausible_fault"] is True
    assert "agent running, DEGRADED: sensor s1 answers only implausible values" in nan_line
    assert "sensors 2/3 ok" in nan_line
    # /metrics has no gauge of the status: it renders as before
    assert b"degraded" not in render_metrics(frozen_body)
