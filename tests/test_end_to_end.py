"""The whole chain on loopback: simulator processes -> agent -> store -> backend.

Real parts only: `edge-sim modbus` and `edge-sim backend` run as processes (as the demo
starts them), the agent runs in-process on a real SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from agent.config import load_config
from agent.demo import SimProcess
from agent.demo_sims import started
from agent.runtime import Agent
from agent.store import StoreInUseError
from tests.conftest import agent_process, free_port

pytestmark = [pytest.mark.network, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "agent" / "schemas" / "alert-v1.json").read_text())
TOKEN = "test-token-123"
# The bearing degrades from the simulator's start (no healthy first quarter: these tests
# learn no baseline) and fails in 9 s: zone C after ~4.5 s, D after ~6.6 s, ~2 s apart.
LIFE_S = 9.0
DEGRADING = "1:degrade,onset=0"
# For the tests that need an alert, not a degradation: a machine in zone C from the start,
# raised after the debounce (~1.5 s) instead of ~6 s into the bearing's life.
IN_ZONE_C = "1:velocity=3.5"

CONFIG = """\
gateway: {{id: gw-e2e}}
assets:
  - id: press-7
    name: Press 7 main motor
    tier: 1
    machine: {{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}}
    alerting: {{debounce: 3, hysteresis: 0.1}}
  - id: fan-3
    name: Fan 3
    tier: 2
    machine: {{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}}
sensors:
  - id: m1-de
    asset: press-7
    modbus: {{host: 127.0.0.1, port: {modbus_port}, device_id: 1, timeout_s: 0.3}}
    poll_interval_s: 0.5
  - id: fan-3-de
    asset: fan-3
    modbus: {{host: 127.0.0.1, port: {modbus_port}, device_id: 2, timeout_s: 0.3}}
    poll_interval_s: 0.5
uplinks:
  - http: {{url: "{backend_url}", token: "{token}", timeout_s: 2, max_backoff_s: 1}}
store: {{path: "{store}", max_bytes: 64MiB}}
health: {{port: {health_port}}}
control: {{socket: "{control}"}}
"""


@pytest.fixture
async def sims(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """The backend and the Modbus simulator: press-7's device DEGRADING, or (parametrised
    indirectly) the spec given."""
    press = getattr(request, "param", DEGRADING)
    async with started(
        SimProcess.backend(tmp_path / "backend.db", TOKEN),
        SimProcess.modbus([press, "2:healthy"], LIFE_S),
    ) as (backend, modbus):
        yield {"backend": backend.info, "modbus": modbus.info}


def write_config(tmp_path: Path, sims: dict[str, Any], health_port: int = 0) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        CONFIG.format(
            modbus_port=sims["modbus"]["port"],
            backend_url=sims["backend"]["url"],
            token=TOKEN,
            store=tmp_path / "outbox.db",
            health_port=health_port,
            control=tmp_path / "control.sock",
        )
    )
    return path


async def backend_alerts(url: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s,
        s.get(url) as resp,
    ):
        resp.raise_for_status()
        return list((await resp.json())["alerts"])


async def wait_for(url: str, pred: Any, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    alerts: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        alerts = await backend_alerts(url)
        if pred(alerts):
            return alerts
        await asyncio.sleep(0.3)
    raise AssertionError(f"backend never satisfied the condition; it has {alerts}")


async def run_agent(config_path: Path) -> tuple[Agent, asyncio.Task[None]]:
    agent = Agent(load_config(config_path))
    task = asyncio.create_task(agent.run())
    async with asyncio.timeout(10):
        await agent.ready.wait()
    return agent, task


def cli(*args: str) -> str:
    """Run `edge-agent ARGS` as a user would; its stdout."""
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def severity_states(alerts: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (a["state"], a["severity"]["zone"])
        for a in alerts
        if a["asset"]["id"] == "press-7" and a["sensor"]["channel"] == "z"
    ]


async def test_degrading_machine_reaches_backend_as_zone_c_then_d(
    tmp_path: Path, sims: dict[str, Any]
) -> None:
    agent, task = await run_agent(write_config(tmp_path, sims))
    try:
        url = sims["backend"]["url"]
        alerts = await wait_for(
            url, lambda a: ("escalated", "D") in severity_states(a), timeout_s=40
        )
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)
    z = [a for a in alerts if a["asset"]["id"] == "press-7" and a["sensor"]["channel"] == "z"]
    assert [(a["state"], a["severity"]["zone"]) for a in z][:2] == [
        ("raised", "C"),
        ("escalated", "D"),
    ]
    raised = z[0]
    jsonschema.validate(raised, SCHEMA)
    assert raised["gateway_id"] == "gw-e2e"
    assert raised["asset"] == {"id": "press-7", "name": "Press 7 main motor", "tier": 1}
    assert raised["sensor"] == {"id": "m1-de", "channel": "z", "transport": "modbus"}
    assert raised["severity"]["level"] == "warning"
    assert raised["severity"]["threshold"] == 2.8
    assert 2.8 <= raised["severity"]["value"] < 4.5
    assert raised["severity"]["value"] == raised["evidence"]["features"]["velocity_rms_mm_s"]
    assert z[1]["severity"]["value"] >= 4.5
    assert raised["alert_id"] == f"gw-e2e-{raised['seq']:012d}"
    # The healthy fan never alerts.
    assert not [a for a in alerts if a["asset"]["id"] == "fan-3"]
    for a in alerts:
        jsonschema.validate(a, SCHEMA)


async def test_restart_neither_resends_as_new_nor_reuses_a_seq(
    tmp_path: Path, sims: dict[str, Any]
) -> None:
    cfg = write_config(tmp_path, sims)
    url = sims["backend"]["url"]
    agent, task = await run_agent(cfg)
    try:
        await wait_for(url, lambda a: ("raised", "C") in severity_states(a), timeout_s=40)
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)
    before = await backend_alerts(url)
    max_seq = max(a["seq"] for a in before)

    # The machine is still in zone C or D: a forgetful agent would raise again.
    agent, task = await run_agent(cfg)
    try:
        after = await wait_for(
            url, lambda a: ("escalated", "D") in severity_states(a), timeout_s=40
        )
        await asyncio.sleep(2.0)  # more readings in zone D: nothing new may be sent
        after = await backend_alerts(url)
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)
    states = severity_states(after)
    assert states.count(("raised", "C")) == 1, states
    assert [s for s in states if s[0] == "raised"] == [("raised", "C")], states
    new = [a for a in after if a["alert_id"] not in {b["alert_id"] for b in before}]
    assert new and all(a["seq"] > max_seq for a in new)
    seqs = [a["seq"] for a in after]
    assert len(seqs) == len(set(seqs))


@pytest.mark.parametrize("sims", [IN_ZONE_C], indirect=True)
async def test_health_metrics_and_cli_views_of_a_running_agent(
    tmp_path: Path, sims: dict[str, Any]
) -> None:
    cfg = write_config(tmp_path, sims)
    agent, task = await run_agent(cfg)
    try:
        await wait_for(
            sims["backend"]["url"], lambda a: ("raised", "C") in severity_states(a), timeout_s=40
        )
        assert agent.health is not None
        base = f"http://127.0.0.1:{agent.health.port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/healthz") as resp:
                health = await resp.json()
            async with s.get(f"{base}/metrics") as resp:
                metrics = await resp.text()
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)
    assert health["gateway"] == "gw-e2e"
    assert {s["id"]: s["state"] for s in health["sensors"]} == {"m1-de": "ok", "fan-3-de": "ok"}
    assert health["store"]["last_seq"] >= 1
    assert health["pipeline"]["readings_total"] > 0
    assert 'edge_sensor_polls_total{sensor="m1-de"}' in metrics
    assert "edge_store_pending" in metrics
    assert 'edge_channel_alert_level{asset="press-7",channel="z",sensor="m1-de"} 1.0' in metrics

    # The CLI reads the same store after the agent stopped.
    out = await asyncio.to_thread(cli, "alerts", "--json", "-c", str(cfg))
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines and lines[-1]["state"] == "raised" and lines[-1]["_delivered_at"]
    stopped = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agent.cli", "status", "--json", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stopped.returncode == 1, stopped  # the agent is not reachable: say so
    status = json.loads(stopped.stdout)
    assert status["store"]["pending"] == 0 and status["store"]["delivered"] >= 1


def test_sigterm_flushes_and_exits_cleanly(tmp_path: Path) -> None:
    """`edge-agent run` under a service manager: SIGTERM -> exit 0, store intact."""

    async def scenario() -> tuple[int, str]:
        async with started(
            SimProcess.backend(tmp_path / "b.db", TOKEN),
            SimProcess.modbus([IN_ZONE_C, "2:healthy"], LIFE_S),
        ) as (b, m):
            cfg = write_config(tmp_path, {"backend": b.info, "modbus": m.info})
            proc = await agent_process(cfg, stderr=asyncio.subprocess.PIPE)
            await wait_for(b.info["url"], lambda a: len(a) >= 1, timeout_s=40)
            proc.terminate()
            _, err = await asyncio.wait_for(proc.communicate(), 20)
            return int(proc.returncode or 0), err.decode()

    code, err = asyncio.run(scenario())
    assert code == 0, err[-2000:]
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(rec["msg"] == "agent stopped cleanly" for rec in logs), err[-2000:]
    assert all(rec["level"] not in ("ERROR", "CRITICAL") for rec in logs), err[-2000:]


async def test_dead_sensor_raises_a_fault_and_does_not_stall_the_others(tmp_path: Path) -> None:
    async with started(
        SimProcess.backend(tmp_path / "b.db", TOKEN),
        SimProcess.modbus([DEGRADING, "2:dead"], LIFE_S),
    ) as (b, m):
        cfg = write_config(tmp_path, {"backend": b.info, "modbus": m.info})
        agent, task = await run_agent(cfg)
        try:
            alerts = await wait_for(
                b.info["url"],
                lambda a: (
                    ("escalated", "D") in severity_states(a)
                    and any(x["kind"] == "sensor_fault" for x in a)
                ),
                timeout_s=40,
            )
            snap = await agent.snapshot()
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)
    faults = [a for a in alerts if a["kind"] == "sensor_fault"]
    assert [(f["sensor"]["id"], f["state"], f["asset"]["id"]) for f in faults] == [
        ("fan-3-de", "raised", "fan-3")
    ]
    jsonschema.validate(faults[0], SCHEMA)
    sensors = {s["id"]: s for s in snap["sensors"]}
    assert sensors["fan-3-de"]["state"] == "backoff"
    assert sensors["m1-de"]["state"] == "ok"
    # The live sensor kept its 0.5 s cadence beside the dead one (at most a few misses).
    uptime = snap["uptime_s"]
    assert sensors["m1-de"]["polls_total"] >= (uptime / 0.5) * 0.8, (uptime, sensors["m1-de"])
    assert snap["status"] == "degraded"


@pytest.mark.parametrize("sims", [IN_ZONE_C], indirect=True)
async def test_maintenance_while_running_and_while_stopped(
    tmp_path: Path, sims: dict[str, Any]
) -> None:
    cfg = write_config(tmp_path, sims, health_port=free_port())
    url = sims["backend"]["url"]
    agent, task = await run_agent(cfg)
    try:
        await wait_for(url, lambda a: ("raised", "C") in severity_states(a), timeout_s=40)
        # A second agent on the same store is refused: two writers would mix up seqs.
        with pytest.raises(StoreInUseError):
            await Agent(load_config(cfg)).run()
        out = await asyncio.to_thread(
            cli,
            "maintenance",
            "--json",
            "-c",
            str(cfg),
            "--asset",
            "press-7",
            "--note",
            "DE bearing",
            "--replaced",
        )
        online = json.loads(out)
        await wait_for(url, lambda a: any(x["kind"] == "maintenance" for x in a), timeout_s=20)
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)
    jsonschema.validate(online, SCHEMA)
    assert (online["kind"], online["asset"]["id"]) == ("maintenance", "press-7")
    assert "DE bearing" in json.dumps(online["evidence"])
    # The replacement reached the running agent; no age is configured, so no life is kept.
    assert online["evidence"]["replacement"]["replaced"] == "failed"
    assert "life_not_recorded" in online["evidence"]["replacement"]

    # Stopped agent: the event goes straight into the store and is delivered on next start.
    out = await asyncio.to_thread(cli, "maintenance", "--json", "-c", str(cfg), "--asset", "fan-3")
    offline = json.loads(out)
    assert offline["seq"] > online["seq"]
    agent, task = await run_agent(cfg)
    try:
        alerts = await wait_for(
            url, lambda a: offline["alert_id"] in {x["alert_id"] for x in a}, timeout_s=20
        )
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)
    assert [a["asset"]["id"] for a in alerts if a["kind"] == "maintenance"] == ["press-7", "fan-3"]
