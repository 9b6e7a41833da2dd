"""CMMS work orders after an outage: only findings wait for the CMMS, each opens one.

The agent's pieces in this process, as the runtime builds them from a configuration
(outbox_for, build_uplinks): an `http` uplink to the portfolio backend and a `cmms` uplink,
both pointed at loopback ports where nothing listens yet. --count alerts are appended in
batches of 100: two in five are findings (a severity alert raised in zone C, a trend alert
escalated with a time-to-failure estimate), the others a clear, a sensor fault and a
repair. Then, as separate processes (as a plant has them): `edge-sim backend` starts, and
once it has everything, `edge-sim cmms`, whose first --lost answers are lost after the
work order was created (502 after_store), so the agent must retry them.

Measured: what waits for each uplink during the outage; whether the non-findings are
complete as soon as the portfolio has them (the CMMS still down); the drain of the work
orders (time, work orders/s, one POST each) beside the portfolio's (alerts/s, batches of
100); and at the CMMS: one work order per finding, none for anything else, the lost
answers replayed, never a second work order. Prints one JSON object.

    python benchmarks/cmms_drain.py [--count 5000] [--lost 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import Config
from agent.demo import SimProcess
from agent.records import AlertDraft, AssetRef, SensorRef, Severity, TimeToFailure
from agent.store import outbox_for
from agent.uplink import build_uplinks

T0 = datetime(2026, 11, 21, 8, 15, 2, 123000, tzinfo=UTC)
TOKEN = "bench-token"
POLL_S = 0.05
VELOCITY = "velocity_rms_mm_s"
STANDARD = "ISO 10816-3 group 2 rigid"


def draft(i: int) -> AlertDraft:
    """Alert i of the mix: findings at i % 5 in (0, 1), then a clear, a fault, a repair."""
    tier = 1 + i % 3
    asset = AssetRef(f"asset-{i % 50}", f"Asset {i % 50}", tier)
    sensor = SensorRef("m1-de", "z", "modbus")
    at = T0 + timedelta(seconds=i)
    feats = {"features": {VELOCITY: 3.1, "accel_rms_g": 0.41, "kurtosis": 5.8}}
    kind = i % 5
    if kind == 0:
        sev = Severity("warning", "C", STANDARD, VELOCITY, 3.1, 2.8)
        return AlertDraft(asset, sensor, "severity", "raised", at, sev, evidence=feats)
    if kind == 1:
        ttf = TimeToFailure(40.0, 30.0, 60.0, VELOCITY, 4.5, "bayes-exponential")
        sev = Severity("critical", "B", "time to failure under the planning horizon",
                       "time_to_failure_hours", 40.0, 168.0)  # fmt: skip
        return AlertDraft(asset, sensor, "trend", "escalated", at, sev, time_to_failure=ttf,
                          evidence=feats)  # fmt: skip
    if kind == 2:
        sev = Severity("info", "B", STANDARD, VELOCITY, 2.0, 2.52)
        return AlertDraft(asset, sensor, "severity", "cleared", at, sev, evidence=feats)
    if kind == 3:
        sev = Severity("warning", None, "sensor health", "poll_failures", 5.0, 5.0)
        return AlertDraft(asset, sensor, "sensor_fault", "raised", at, sev, evidence={})
    return AlertDraft(asset, sensor, "maintenance", "cleared", at, None,
                      evidence={"note": "bearing replaced"})  # fmt: skip


def free_port() -> int:
    """A loopback port nothing listens on (bound, read, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_config(tmp: Path, http_port: int, cmms_port: int) -> Config:
    """A portfolio uplink and a CMMS uplink, as an integrator writes them."""
    machine = {"standard": "iso10816-3", "group": 2, "foundation": "rigid", "rpm": 1480}
    common = {"token": TOKEN, "timeout_s": 5.0, "max_backoff_s": 2.0}
    base = "http://127.0.0.1"
    wo_url = f"{base}:{cmms_port}/api/v1/work-orders"
    return Config.model_validate(
        {
            "gateway": {"id": "bench", "site": "plant-a"},
            "assets": [
                {"id": f"asset-{k}", "tier": 1 + k % 3, "machine": machine} for k in range(50)
            ],
            "sensors": [{"id": "s", "asset": "asset-0", "modbus": {"host": "127.0.0.1"}}],
            "uplinks": [
                {"name": "portfolio", "http": {**common, "url": f"{base}:{http_port}/v1/alerts"}},
                {"name": "cmms", "cmms": {**common, "url": wo_url}},
            ],
            "store": {"path": str(tmp / "outbox.db"), "max_bytes": 1 << 34},
        }
    )


async def seconds_until(cond: Callable[[], Awaitable[bool]], limit_s: float) -> float | None:
    """Seconds until `cond()` held (polled), or None if not within limit_s."""
    t0 = time.monotonic()
    while (waited := time.monotonic() - t0) < limit_s:
        if await cond():
            return waited
        await asyncio.sleep(POLL_S)
    return None


async def _get(s: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with s.get(url, params=params) as resp:
        return await resp.json()


async def work_orders(s: aiohttp.ClientSession, base: str, limit: int) -> list[dict[str, Any]]:
    """Every work order the CMMS holds, in creation order (bounded paging)."""
    out: list[dict[str, Any]] = []
    after = 0
    for _ in range(limit // 1000 + 2):
        page = await _get(s, f"{base}/api/v1/work-orders", after=str(after))
        if not page["work_orders"]:
            break
        out.extend(page["work_orders"])
        after = page["last_seq"]
    return out


def _sim(kind: str, port: int, db: Path) -> SimProcess:
    args = ["--host", "127.0.0.1", "--port", str(port), "--db", str(db), "--token", TOKEN]
    return SimProcess(kind, [kind, *args])


async def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    http_port, cmms_port = free_port(), free_port()
    config = bench_config(tmp, http_port, cmms_port)
    load_before = os.getloadavg()
    async with outbox_for(config) as ob:
        uplinks = build_uplinks(config, ob)
        tasks = [asyncio.create_task(u.run(), name=f"uplink[{u.name}]") for u in uplinks]
        try:
            t0 = time.monotonic()
            for start in range(0, a.count, 100):
                await ob.append([draft(i) for i in range(start, min(a.count, start + 100))])
            append_s = time.monotonic() - t0
            findings = sum(1 for i in range(a.count) if i % 5 in (0, 1))
            outage = await ob.stats()
            result: dict[str, Any] = {
                "outage": {
                    "appended": a.count,
                    "findings": findings,
                    "append_s": round(append_s, 2),
                    "pending_portfolio": outage.uplinks["portfolio"].pending,
                    "pending_cmms": outage.uplinks["cmms"].pending,
                }
            }
            async with _sim("backend", http_port, tmp / "backend.db"):

                async def portfolio_done() -> bool:
                    return (await ob.stats()).uplinks["portfolio"].pending == 0

                waited = await seconds_until(portfolio_done, a.max_seconds)
                after = await ob.stats()
                result["portfolio_drain"] = {
                    "seconds": None if waited is None else round(waited, 2),
                    "alerts_per_s": None if not waited else round(a.count / waited),
                    "incomplete_alerts_after": after.pending,
                    "only_findings_wait_for_the_cmms": after.pending == findings,
                }
            cmms_proc = _sim("cmms", cmms_port, tmp / "cmms.db")
            async with (
                cmms_proc,
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s,
            ):
                base = f"http://127.0.0.1:{cmms_port}"
                async with s.post(f"{base}/admin/faults", json={
                    "status": 502, "after_store": True, "count": a.lost}) as resp:  # fmt: skip
                    assert resp.status == 200, await resp.text()
                t1 = time.monotonic()

                async def cmms_done() -> bool:
                    return (await ob.stats()).uplinks["cmms"].pending == 0

                waited = await seconds_until(cmms_done, a.max_seconds)
                stats = await _get(s, f"{base}/api/v1/stats")
                orders = await work_orders(s, base, a.count)
                drain_s = time.monotonic() - t1
            with sqlite3.connect(tmp / "outbox.db") as conn:
                wanted = {
                    r[0] for r in conn.execute(
                        "SELECT alert_id FROM alerts WHERE kind IN ('severity', 'trend') "
                        "AND json_extract(body, '$.state') IN ('raised', 'escalated')")
                }  # fmt: skip
            keys = [o["request_key"] for o in orders]
            status = next(u.status for u in uplinks if u.name == "cmms")
            result["cmms_drain"] = {
                "seconds": None if waited is None else round(waited, 2),
                "work_orders_per_s": None if not waited else round(findings / waited),
                "created": stats["created"],
                "replayed": stats["replayed"],
                "conflicts": stats["conflicts"],
                "lost_answers_injected": a.lost,
                "one_per_finding": sorted(keys) == sorted(wanted) and len(set(keys)) == len(keys),
                "failures_seen_by_the_agent": status.failures_total,
                "delivered_total": status.delivered_total,
                "skipped_total": status.skipped_total,
                "with_listing_s": round(drain_s, 2),
            }
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    result["python"] = platform.python_version()
    result["sqlite"] = sqlite3.sqlite_version
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=5000, help="alerts appended during the outage")
    p.add_argument("--lost", type=int, default=20, help="work orders whose answer is lost")
    p.add_argument("--max-seconds", type=float, default=120.0, help="bound on each drain")
    p.add_argument("--dir", type=Path, default=None, help="where the databases go")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        # store.path must be absolute: --dir may be given relative
        print(json.dumps(asyncio.run(run(a, Path(tmp).resolve())), indent=2))


if __name__ == "__main__":
    main()
