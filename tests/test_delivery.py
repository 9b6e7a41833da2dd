"""Delivery through the whole agent: two uplinks (HTTP and MQTT 5 over TLS), a store file
replaced and damaged under the running agent, dead letters requeued by an operator.

Real parts: `edge-sim modbus` and `edge-sim backend` processes, our own mosquitto with TLS,
the agent in-process on a real SQLite file, the CLI as a user runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from string import Template
from typing import Any

import aiohttp
import jsonschema
import pytest

from agent.config import load_config
from agent.demo import SimProcess
from agent.health import render_metrics
from agent.maintenance import MaintenanceRequest
from agent.runtime import Agent
from agent.store import read_only
from tests.mosquitto import Collector, Mosquitto, make_certs

pytestmark = [pytest.mark.network, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "agent" / "schemas" / "alert-v1.json").read_text())
TOKEN = "delivery-token"
GW = "gw-d"
HEAD = Template("""\
gateway: {id: $gw}
assets:
  - id: press-7
    tier: 1
    machine: {standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}
sensors:
  - id: m1
    asset: press-7
    modbus: {host: 127.0.0.1, port: $modbus_port, device_id: 1, timeout_s: 0.3}
    poll_interval_s: 0.5
store: {path: "$store"}
health: {port: 0}
control: {socket: "$socket"}
uplinks:
  - name: portfolio
    http: {url: "$url", token: $token, timeout_s: 2, max_backoff_s: 1}
""")
MQTT = Template("""\
  - name: broker
    mqtt:
      host: 127.0.0.1
      port: $port
      tls: {ca_file: "$ca"}
      timeout_s: 2
      max_backoff_s: 5
summaries: {interval_s: 1}
""")


@pytest.fixture
async def sims(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async with (
        SimProcess.backend(tmp_path / "backend.db", TOKEN) as backend,
        SimProcess.modbus(["1:healthy"], 600.0) as modbus,
    ):
        yield {"url": backend.info["url"], "modbus_port": modbus.info["port"]}


def config_file(tmp_path: Path, sims: dict[str, Any], extra: str = "") -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        HEAD.substitute(
            gw=GW,
            modbus_port=sims["modbus_port"],
            store=tmp_path / "outbox.db",
            socket=tmp_path / "control.sock",
            url=sims["url"],
            token=TOKEN,
        )
        + extra
    )
    return path


class Running:
    """The agent in-process, stopped cleanly (bounded) at the end of the block."""

    def __init__(self, config: Path) -> None:
        self.agent = Agent(load_config(config))
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Agent:
        self.task = asyncio.create_task(self.agent.run())
        async with asyncio.timeout(15):
            await self.agent.ready.wait()
        return self.agent

    async def __aexit__(self, *exc: object) -> None:
        self.agent.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 20)


async def backend(url: str, path: str = "") -> Any:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s,
        s.get(url.replace("/v1/alerts", path) if path else url) as resp,
    ):
        return await resp.json()


async def until(cond: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def repairs(agent: Agent, n: int, note: str) -> list[str]:
    """n alerts acknowledged by the agent (maintenance records); their ids."""
    ids = []
    for i in range(n):
        request = MaintenanceRequest(asset="press-7", note=f"{note} {i}")
        [rec] = await agent.maintenance(request, {"via": "test"})
        ids.append(rec["alert_id"])
    return ids


async def test_two_uplinks_one_down_both_complete_without_loss(
    tmp_path: Path, sims: dict[str, Any]
) -> None:
    certs = await asyncio.to_thread(make_certs, tmp_path / "certs")
    broker = Mosquitto(tmp_path / "broker", certs=certs)
    await asyncio.to_thread(broker.start)
    collector = Collector(broker, f"edge-agent/{GW}/#")
    await collector.subscribe()
    await asyncio.to_thread(broker.stop)  # the MQTT uplink is down from the start
    cfg = config_file(tmp_path, sims, MQTT.substitute(port=broker.port, ca=certs.ca))
    try:
        async with Running(cfg) as agent:
            ids = []
            for _ in range(4):  # alerts keep coming while the broker stays down
                ids += await repairs(agent, 5, "down")
                await asyncio.sleep(1.0)
            want = set(ids)

            async def portfolio_has_all() -> bool:
                return want <= {a["alert_id"] for a in (await backend(sims["url"]))["alerts"]}

            await until(
                portfolio_has_all, 10, "the current uplink delivers while the other is down"
            )
            snap = await agent.snapshot()
            up = {u["name"]: u for u in snap["uplinks"]}
            assert up["portfolio"]["backlog"]["pending"] == 0
            assert up["broker"]["backlog"]["pending"] == len(ids)  # visible, per uplink
            assert up["broker"]["state"] in ("probing", "backoff")
            assert up["broker"]["consecutive_failures"] >= 1
            assert snap["store"]["pending"] == len(ids)  # kept until the broker has them
            await asyncio.to_thread(broker.start)

            async def all_complete() -> bool:
                stats = await agent.outbox.stats()
                return stats.pending == 0 and stats.uplinks["broker"].pending_summaries == 0

            await until(all_complete, 15, "both uplinks complete after the broker is back")
            metrics = render_metrics(await agent.snapshot()).decode()
        seen = await collector.collect(want, topics=frozenset({f"edge-agent/{GW}/summary"}))
    finally:
        await asyncio.to_thread(broker.stop)
    assert want <= seen  # every alert through the broker too, at least once
    topics = {t for t, _ in collector.messages}
    assert f"edge-agent/{GW}/maintenance" in topics and f"edge-agent/{GW}/summary" in topics
    stats = await backend(sims["url"], "/v1/stats")
    assert stats["duplicates"] == 0  # the broker's outage cost the portfolio nothing
    summaries = await backend(sims["url"], "/v1/summaries")
    assert summaries["stored"] >= 2
    rec = summaries["summaries"][0]
    assert rec["schema"] == "edge-agent/summary/v1" and rec["sensor"]["id"] == "m1"
    assert rec["channels"]["z"]["features"]["velocity_rms_mm_s"]["max"] > 0
    assert 'edge_uplink_pending{uplink="broker"} 0.0' in metrics
    assert 'edge_uplink_delivered_total{uplink="portfolio"}' in metrics


async def test_store_replaced_then_damaged_under_the_running_agent(
    tmp_path: Path, sims: dict[str, Any]
) -> None:
    store = tmp_path / "outbox.db"
    async with Running(config_file(tmp_path, sims)) as agent:
        ids = await repairs(agent, 5, "before")
        junk = tmp_path / "restore.db"
        junk.write_bytes(b"an old backup restored over the live store\n" * 100)
        os.replace(junk, store)  # `mv` while the agent runs
        ids += await repairs(agent, 5, "after mv")
        with store.open("r+b") as f:
            f.write(b"\0" * 100)  # the header overwritten in place
        ids += await repairs(agent, 5, "after damage")

        async def delivered() -> bool:
            got = (await backend(sims["url"]))["alerts"]
            faults = [a for a in got if a["kind"] == "gateway_fault"]
            return set(ids) <= {a["alert_id"] for a in got} and len(faults) == 2

        await until(delivered, 15, "every acknowledged alert and two gateway_fault alerts")
        snap = await agent.snapshot()
    alerts = (await backend(sims["url"]))["alerts"]
    faults = [a for a in alerts if a["kind"] == "gateway_fault"]
    assert [f["evidence"]["fault"] for f in faults] == ["store_replaced", "store_corrupt"]
    for f in faults:
        jsonschema.validate(f, SCHEMA)
        assert f["asset"]["id"] == GW and f["severity"]["level"] == "critical"
    assert snap["store"]["quarantined_total"] == 2 and snap["pipeline"]["store_faults_total"] == 2
    seqs = [a["seq"] for a in alerts]
    assert len(seqs) == len(set(seqs))  # no seq reused across the recoveries
    kept = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.glob("outbox.db.*")))
    assert any(n.startswith("outbox.db.replaced-") for n in kept), kept
    assert any(n.startswith("outbox.db.corrupt-") for n in kept), kept


async def test_a_store_found_corrupt_at_start_is_reported_as_a_gateway_fault(
    tmp_path: Path, sims: dict[str, Any]
) -> None:
    (tmp_path / "outbox.db").write_bytes(b"left by a power cut mid-write\n" * 300)
    async with Running(config_file(tmp_path, sims)):

        async def reported() -> bool:
            got = (await backend(sims["url"]))["alerts"]
            return any(a["kind"] == "gateway_fault" for a in got)

        await until(reported, 10, "a gateway_fault alert at the backend")
    [fault] = [a for a in (await backend(sims["url"]))["alerts"] if a["kind"] == "gateway_fault"]
    jsonschema.validate(fault, SCHEMA)
    assert fault["evidence"]["fault"] == "store_quarantined_at_start"
    kept = await asyncio.to_thread(Path(fault["evidence"]["moved_to"]).read_bytes)
    assert kept.startswith(b"left by a power cut")  # kept aside, byte for byte


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_a_dead_letter_is_listed_and_requeued_by_the_operator(
    tmp_path: Path, sims: dict[str, Any]
) -> None:
    cfg = config_file(tmp_path, sims)
    async with Running(cfg) as agent, aiohttp.ClientSession() as s:
        admin = sims["url"].replace("/v1/alerts", "/admin/faults")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        # A refusal of that alert itself (too large on its own): dead-lettered at once. A
        # 400 or 422 could be the endpoint's and is held until an alert behind it arrives.
        fault = {"status": 413, "body": "alert too large"}
        async with s.post(admin, json=fault, headers=auth) as resp:
            assert resp.status == 200
        [dead_id] = await repairs(agent, 1, "refused once")

        async def dead_lettered() -> bool:
            return (await agent.outbox.stats()).uplinks["portfolio"].dead_lettered == 1

        await until(dead_lettered, 10, "the refused alert is dead-lettered")
        human = await asyncio.to_thread(cli, "alerts", "-c", str(cfg), "--dead-letter")
        assert f"{dead_id} (alert) refused by portfolio: HTTP 413" in human.stdout
        out = await asyncio.to_thread(cli, "alerts", "-c", str(cfg), "--dead-letter", "--json")
        [line] = [json.loads(x) for x in out.stdout.splitlines()]
        assert (line["uplink"], line["id"]) == ("portfolio", dead_id)
        assert line["reason"].startswith("HTTP 413") and line["record"]["alert_id"] == dead_id
        bad = await asyncio.to_thread(cli, "requeue", "-c", str(cfg), "--uplink", "nope")
        assert bad.returncode == 2 and "configured uplinks: portfolio" in bad.stderr
        done = await asyncio.to_thread(cli, "requeue", "-c", str(cfg), "--id", dead_id, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["id"] == dead_id

        async def at_backend() -> bool:
            got = (await backend(sims["url"]))["alerts"]
            return dead_id in {a["alert_id"] for a in got}

        await until(at_backend, 15, "the requeued alert reaches the backend")
    empty = await asyncio.to_thread(cli, "alerts", "-c", str(cfg), "--dead-letter")
    assert empty.returncode == 0 and empty.stdout == ""
    again = await asyncio.to_thread(cli, "requeue", "-c", str(cfg), "--all")
    assert again.returncode == 1 and "no matching dead letter" in again.stderr
    with read_only(tmp_path / "outbox.db") as view:
        [rq] = view.requeues(10)
    assert (rq["id"], rq["uplink"], rq["reason"]) == (dead_id, "portfolio", line["reason"])
    assert rq["by"].startswith("cli")
    with sqlite3.connect(tmp_path / "outbox.db") as conn:
        assert conn.execute(
            "SELECT count(*) FROM alerts WHERE delivered_at IS NULL"
        ).fetchone() == (0,)
