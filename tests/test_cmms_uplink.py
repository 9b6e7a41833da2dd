"""CMMS work orders through the whole chain, real processes only: `edge-sim modbus` (a
machine in zone C), `edge-agent run`, `edge-sim cmms`, and the CLI as an operator runs it.

The agent is killed with SIGKILL while the CMMS holds the answer to a work order it has
already opened; the CMMS then goes down, a repair is recorded, the CMMS comes back. The
machine's fault has exactly one work order with the mapped fields (its other findings
are notes on it); the repair opens none and ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from agent.demo import SimProcess
from agent.records import parse_ts
from agent.uplink import no_work_order
from tests.conftest import agent_process, free_port
from tests.test_delivery import until

pytestmark = [pytest.mark.network, pytest.mark.slow]

TOKEN = "wo-token"
LIFE_S = 4.0  # degrade: zone C at about 2.5 s, zone D at about 3.2 s (simulators.scenario)
CONFIG = """\
gateway: {{id: gw-wo, site: plant-a}}
assets:
  - id: press-7
    name: Press 7 main motor
    tier: 1
    machine: {{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}}
    planning_horizon_hours: 48
sensors:
  - id: m1
    asset: press-7
    modbus: {{host: 127.0.0.1, port: {modbus_port}, device_id: 1, timeout_s: 0.3}}
    poll_interval_s: 0.5
uplinks:
  - cmms:
      url: "{url}"
      token_file: cmms-token
      timeout_s: 5
      max_backoff_s: 1
      safety_margin_hours: 12
      mapping:
        assets: {{press-7: A-10023}}
        static: {{type: predictive, requested_by: edge-agent gw-wo}}
store: {{path: "{store}"}}
health: {{port: {health_port}}}
control: {{socket: "{socket}"}}
"""


async def _get(url: str) -> Any:
    try:
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=2),
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as s,
            s.get(url) as resp,
        ):
            return await resp.json()
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None  # not up (yet, or any more)


async def _uplink(health_port: int) -> dict[str, Any]:
    health = await _get(f"http://127.0.0.1:{health_port}/healthz")
    return dict(health["uplinks"][0]) if health else {}


def _laid_out(tmp_path: Path) -> tuple[int, int, Path, Path, str, Path]:
    """A test's CMMS and health ports, CMMS database, store, CMMS base URL and config path
    (the token file written beside it, 0600)."""
    cmms_port, health_port = free_port(), free_port()
    (tmp_path / "cmms-token").write_text(TOKEN + "\n")
    (tmp_path / "cmms-token").chmod(0o600)
    return (
        cmms_port, health_port, tmp_path / "cmms.db", tmp_path / "outbox.db",
        f"http://127.0.0.1:{cmms_port}", tmp_path / "agent.yaml",
    )  # fmt: skip


async def _hold_next_answer(base: str, **fault: Any) -> None:
    """The CMMS applies the next request (`on`: its kind) and holds its answer 30 s."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/admin/faults",
               json={"status": 502, "after_store": True, "delay_s": 30, **fault},
               headers={"Authorization": f"Bearer {TOKEN}"}) as r,
    ):  # fmt: skip
        assert r.status == 200


async def _delivered(base: str, health_port: int) -> tuple[Any, Any]:
    """Once the agent has delivered all it stored: the CMMS's work orders and stats."""
    await until(lambda: _drained(health_port), 30, "every work order delivered")
    return await _get(f"{base}/api/v1/work-orders"), await _get(f"{base}/api/v1/stats")


async def _stopped(agent: asyncio.subprocess.Process) -> int | None:
    """SIGTERM, then the agent's exit code (20 s at most)."""
    agent.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(agent.wait(), 20)


def _stored_after(code: int | None, logs: list[IO[bytes]], store: Path) -> list[dict[str, Any]]:
    """Every alert in the store, in seq order, once the agent exited 0 (its logs closed)."""
    for f in logs:
        f.close()
    assert code == 0
    with sqlite3.connect(store) as conn:
        return [json.loads(b) for (b,) in conn.execute("SELECT body FROM alerts ORDER BY seq")]


async def test_work_orders_survive_kill9_and_outage_without_duplicates(tmp_path: Path) -> None:
    cmms_port, health_port, cmms_db, store, base, config = _laid_out(tmp_path)
    logs = [(tmp_path / f"agent{i}.log").open("wb") for i in (1, 2)]
    async with SimProcess.modbus(["1:velocity=3.5"], 600.0) as modbus:
        config.write_text(
            CONFIG.format(
                modbus_port=modbus.info["port"], url=f"{base}/api/v1/work-orders",
                store=store, health_port=health_port, socket=tmp_path / "control.sock",
            )
        )  # fmt: skip
        async with SimProcess.cmms(cmms_db, TOKEN, cmms_port):
            # The next work order is opened, and its answer held back for 30 s.
            await _hold_next_answer(base)
            first = await agent_process(config, stdout=logs[0], stderr=logs[0])
            try:
                await until(lambda: _created_is(base, 1), 30, "the zone C alert opens a work order")
            finally:  # mid-delivery: the work order exists, the agent has no answer yet
                first.send_signal(signal.SIGKILL)
                await first.wait()
        # The CMMS is down; the agent comes back and retries, without an answer.
        second = await agent_process(config, stdout=logs[1], stderr=logs[1])
        try:
            await until(
                lambda: _uplink_at_least(health_port, "consecutive_failures", 2),
                30, "retries against the CMMS that is down",
            )  # fmt: skip
            repair = await _cli(config, "maintenance", "--asset", "press-7", "--note",
                                "drive-end bearing replaced")  # fmt: skip
            repair_id = repair[0]["alert_id"]
            # Both views of the store at once (each is an `edge-agent` start of its own).
            listed, lines = await asyncio.gather(
                _cli(config, "alerts"), _cli(config, "alerts", json_lines=False)
            )
            # The repair waits for the CMMS, which is down, like the interrupted finding:
            # it ends the machine's work order there (a finding after it opens a new one).
            shown = {r["alert_id"]: r for r in listed}
            assert shown[repair_id]["_deliveries"]["cmms"]["state"] == "pending"
            assert {r["_deliveries"]["cmms"]["state"] for r in shown.values()
                    if "cmms" in r["_deliveries"]} == {"pending"}  # fmt: skip
            assert any(repair_id in ln for ln in lines)
            async with SimProcess.cmms(cmms_db, TOKEN, cmms_port):
                listing, stats = await _delivered(base, health_port)
        finally:
            code = await _stopped(second)
    rows = _stored_after(code, logs, store)
    at = [r["alert_id"] for r in rows].index(repair_id)
    findings = [r for r in rows if no_work_order(r) is None]
    before = [r for r in findings if rows.index(r) < at]
    after = [r for r in findings if rows.index(r) > at]
    orders = listing["work_orders"]
    keys = [o["request_key"] for o in orders]
    # One work order for the machine's fault (its first finding; the other axis's are
    # notes on it), none twice, none for the repair; after the repair, a new one.
    assert keys == [r["alert_id"] for r in (before[:1] + after[:1])] and before
    notes = [n["request_key"] for n in orders[0]["notes"]]
    assert notes == [r["alert_id"] for r in before[1:]]
    assert stats["created"] == len(keys) and stats["conflicts"] == 0
    assert stats["replayed"] >= 1  # the request the kill interrupted came back as a retry
    # The first one, as the YAML maps it.
    raised, order = findings[0], orders[0]
    assert order["request_key"] == raised["alert_id"] and raised["severity"]["zone"] == "C"
    assert order["asset_id"] == "A-10023" and order["priority"] == "urgent"
    assert order["type"] == "predictive" and order["requested_by"] == "edge-agent gw-wo"
    assert order["title"] == "press-7 Press 7 main motor: zone C vibration - plan maintenance"
    detected = parse_ts(raised["detected_at"]).replace(microsecond=0)
    due = parse_ts(order["due_date"].replace("Z", ".000Z"))
    assert (due - detected).total_seconds() == 36 * 3600  # horizon 48 h - margin 12 h
    assert "Vibration: velocity RMS 3.5 mm/s, zone C" in order["description"]
    assert (
        f"Alert {raised['alert_id']} (severity raised) from gateway gw-wo at site plant-a"
        in (order["description"])
    )
    assert order["source"]["alert_id"] == raised["alert_id"]


async def _created_is(base: str, n: int) -> bool:
    stats = await _get(f"{base}/api/v1/stats")
    return bool(stats) and stats["created"] >= n


async def _drained(health_port: int) -> bool:
    health = await _get(f"http://127.0.0.1:{health_port}/healthz")
    if not health:
        return False
    up = health["uplinks"][0]
    return bool(health["store"]["pending"] == 0 and up["consecutive_failures"] == 0)


async def _cli(config: Path, *args: str, json_lines: bool = True) -> list[Any]:
    """`edge-agent COMMAND -c CONFIG ARGS [--json]` as an operator runs it; its lines."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agent.cli", args[0], "-c", str(config), *args[1:],
         *(["--json"] if json_lines else [])],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    return [json.loads(line) for line in lines] if json_lines else lines


async def _uplink_at_least(health_port: int, key: str, n: int) -> bool:
    return int((await _uplink(health_port)).get(key, 0)) >= n


async def test_a_bearing_going_c_then_d_is_one_work_order_raised_to_urgent_across_kill9(
    tmp_path: Path,
) -> None:
    """A degrading machine (edge-sim modbus `degrade`, 8 mm/s in LIFE_S) crosses zone C,
    then zone D: one severity episode per axis. Before: two work orders per axis (zone C
    high, zone D urgent) for one bearing. Now: the zone C order is updated to urgent. The
    agent is killed with SIGKILL after the CMMS applied the update and before its answer
    came (the CMMS holds the first update's answer, whenever it comes): the next agent
    re-sends it (the CMMS replays it), no second work order, no second note. The machine
    has one fault, seen on two axes (x, z): before, one work order per axis; now one,
    every later finding of either axis a note on it."""
    cmms_port, health_port, cmms_db, store, base, config = _laid_out(tmp_path)
    logs = [(tmp_path / f"agent{i}.log").open("wb") for i in (1, 2)]
    modbus_port = free_port()
    # The machine's simulator starts once the agent runs, so its life (zone C, then D)
    # begins with the agent polling, however long the agent took to start; the agent
    # meanwhile retries the device every 0.5 s at most (backoff_max_s).
    modbus = SimProcess(
        "modbus",
        ["modbus", "--host", "127.0.0.1", "--port", str(modbus_port), "--life-s", str(LIFE_S),
         "--device", "1:degrade"],
    )  # fmt: skip
    fast = (
        CONFIG.replace("tier: 1", "tier: 2")
        .replace("timeout_s: 0.3}}", "timeout_s: 0.08, backoff_max_s: 0.5}}")
        .replace("poll_interval_s: 0.5", "poll_interval_s: 0.1")
    )
    config.write_text(
        fast.format(
            modbus_port=modbus_port, url=f"{base}/api/v1/work-orders",
            store=store, health_port=health_port, socket=tmp_path / "control.sock",
        )
    )  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        first = await agent_process(config, stdout=logs[0], stderr=logs[0])
        stack.push_async_callback(_killed, first)
        await stack.enter_async_context(SimProcess.cmms(cmms_db, TOKEN, cmms_port))
        # The first update is applied, and its answer held back for 30 s.
        await _hold_next_answer(base, on="update")
        await until(lambda: _health_up(health_port), 30, "the agent runs")
        await stack.enter_async_context(modbus)
        await until(lambda: _stat_at_least(base, "updated", 1), 60,
                    "the other axis's finding updates the first one's work order")  # fmt: skip
        # Killed while that update's answer is held, once zone D is stored (its update
        # waits behind the held one).
        await until(lambda: _stored_zone_d(store), 60, "zone D reached")
        await _killed(first)
        # The machine's sensor is gone now: no new alert; what is stored is delivered.
        await modbus.stop()
        second = await agent_process(config, stdout=logs[1], stderr=logs[1])
        try:
            listing, stats = await _delivered(base, health_port)
        finally:
            code = await _stopped(second)
    rows = _stored_after(code, logs, store)
    story = [(r["sensor"]["channel"], r["kind"], r["state"], (r["severity"] or {}).get("zone"))
             for r in rows]  # fmt: skip
    findings = [r for r in rows if r["kind"] in ("severity", "trend")]
    assert not [r for r in findings if r["state"] == "cleared"], story  # never over
    channels = sorted({r["sensor"]["channel"] for r in rows if r["kind"] == "severity"})
    escalated = [r for r in findings if r["kind"] == "severity" and r["state"] == "escalated"]
    assert len(channels) == 2 and escalated, story  # both axes in zone C, one in D
    # One work order for the machine (its first finding); every later finding of either
    # axis is a note on it, once (none twice); tier 2: urgent once zone D is reached, due
    # at once (zone D's detection, or an earlier finding's due date).
    [order] = listing["work_orders"]
    assert order["request_key"] == findings[0]["alert_id"], story
    assert [n["request_key"] for n in order["notes"]] == [r["alert_id"] for r in findings[1:]]
    assert order["priority"] == "urgent"
    assert order["due_date"] <= escalated[0]["detected_at"][:19] + "Z"
    assert stats["conflicts"] == 0 and stats["update_replayed"] >= 1, stats


async def _stored_zone_d(store: Path) -> bool:
    """Whether the running agent's store holds a zone D escalation (read-only)."""

    def count() -> int:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as conn:
            return int(conn.execute(
                "SELECT count(*) FROM alerts WHERE kind = 'severity' AND "
                "json_extract(body, '$.state') = 'escalated'"
            ).fetchone()[0])  # fmt: skip

    try:
        return await asyncio.to_thread(count) > 0
    except sqlite3.Error:
        return False  # not created yet, or busy


async def _killed(agent: asyncio.subprocess.Process) -> None:
    """SIGKILL (once; a no-op for an agent gone)."""
    if agent.returncode is None:
        agent.send_signal(signal.SIGKILL)
        await agent.wait()


async def _health_up(health_port: int) -> bool:
    return bool(await _get(f"http://127.0.0.1:{health_port}/healthz"))


async def _severity_orders(base: str, n: int) -> bool:
    listing = await _get(f"{base}/api/v1/work-orders")
    if not listing:
        return False
    return sum(o["source"]["kind"] == "severity" for o in listing["work_orders"]) >= n


async def _stat_at_least(base: str, key: str, n: int) -> bool:
    stats = await _get(f"{base}/api/v1/stats")
    return bool(stats) and stats[key] >= n
