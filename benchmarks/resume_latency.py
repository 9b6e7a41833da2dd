"""Time from the backend's return to the first delivered alert, over repeated outages.

Everything runs as a plant runs it, as separate processes on loopback: `edge-agent run`
with the uplink's default settings (probe every 1 s while the backend is down, backoff up
to 30 s), `edge-sim modbus` (one healthy sensor) and `edge-sim backend`. Each outage:

1. the backend process is stopped (SIGTERM);
2. a few alerts are recorded at once through the agent's control socket (maintenance
   records), and then none: no new alert may cut the uplink's backoff short (the case of
   the issue);
3. after --outage-s (x0.8-1.2, seeded) the backend starts again on the same port and
   database; the time of its READY line is the return;
4. the backend is polled every 20 ms until an alert of that outage is stored: the time
   from the return to that moment is the resume latency (20 ms resolution).

The agent's own counters (from /healthz) say how hard it pressed the down backend: POST
attempts and probes (HEAD) during each outage. With --baseline the same run is repeated
with probe_interval_s 60 (no probe fires within an outage: backoff only, as before the
probe existed), side by side, for a ratio. Prints one JSON object.

    python benchmarks/resume_latency.py [--outages 10] [--outage-s 20] [--baseline]

Outages must be long enough for the backoff to grow (20 s: six or seven failed POSTs, a
wait of up to 16-30 s), so a run takes about 4 minutes (8 with --baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from agent.control import call
from agent.maintenance import OP
from tests.agent._configs import press_yaml

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
READY_TIMEOUT_S = 20.0
POLL_S = 0.02
RESUME_LIMIT_S = 60.0
ALERTS_PER_OUTAGE = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process; for the simulators, its READY line (address, time)."""

    def __init__(self, *args: str, log: Path) -> None:
        self.args = args
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}
        self.ready_at = 0.0

    async def start(self, *, wait_ready: bool = True) -> Proc:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, *self.args, stdout=asyncio.subprocess.PIPE, stderr=err,
                stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        if wait_ready:
            assert self.proc.stdout is not None
            async with asyncio.timeout(READY_TIMEOUT_S):
                while not (line := await self.proc.stdout.readline()).startswith(b"READY "):
                    if not line:
                        raise RuntimeError(f"{self.args} exited; see {self.log}")
            self.ready_at = time.monotonic()
            self.info = json.loads(line[6:])
        return self

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            async with asyncio.timeout(10):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def get_json(session: aiohttp.ClientSession, url: str, **kw: Any) -> Any:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=3), **kw) as resp:
        return await resp.json()


async def wait_healthy(session: aiohttp.ClientSession, health: str) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return dict(await get_json(session, health))
        await asyncio.sleep(0.1)
    raise RuntimeError("the agent's /healthz never answered")


async def uplink_counters(session: aiohttp.ClientSession, health: str) -> dict[str, int]:
    snap = await get_json(session, health)
    up = snap["uplinks"][0]
    return {"attempts": up["attempts_total"], "probes": up["probes_total"]}


async def run_mode(a: argparse.Namespace, tmp: Path, probe_s: float) -> dict[str, Any]:
    rng = random.Random(a.seed)
    await asyncio.to_thread(tmp.mkdir, parents=True, exist_ok=True)
    backend_port, health_port = free_port(), free_port()
    backend = Proc("-m", "simulators.cli", "backend", "--port", str(backend_port), "--db",
                   str(tmp / "backend.db"), "--token", TOKEN, log=tmp / "backend.log")  # fmt: skip
    modbus = Proc("-m", "simulators.cli", "modbus", "--port", "0", "--device", "1:healthy",
                  "--life-s", "3600", log=tmp / "modbus.log")  # fmt: skip
    await backend.start()
    await modbus.start()
    url = backend.info["url"]
    cfg = tmp / "agent.yaml"
    m1 = f"{{host: 127.0.0.1, port: {modbus.info['port']}, device_id: 1, timeout_s: 0.3}}"
    http = f'{{url: "{url}", token: {TOKEN}, probe_interval_s: {probe_s}}}'
    cfg.write_text(press_yaml("gw-bench", m1, tmp / "outbox.db", tmp / "control.sock",
                              poll_interval_s=1, uplinks=f"  - http: {http}\n",
                              health_port=health_port))  # fmt: skip
    agent = Proc("-m", "agent.cli", "run", "-c", str(cfg), log=tmp / "agent.log")
    await agent.start(wait_ready=False)
    health = f"http://127.0.0.1:{health_port}/healthz"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    outages: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession() as s:
            await wait_healthy(s, health)
            for k in range(a.outages):
                listing = await get_json(s, url, headers=headers, params={"after": "0"})
                last = listing["last_receipt"]
                before = await uplink_counters(s, health)
                await backend.stop()
                t_down = time.monotonic()
                for i in range(ALERTS_PER_OUTAGE):
                    args = {"asset": "press-7", "note": f"{k}.{i}"}
                    answer = await asyncio.to_thread(call, tmp / "control.sock", OP, args)
                    if not answer.get("ok"):
                        raise RuntimeError(f"the agent refused a repair: {answer}")
                await asyncio.sleep(
                    a.outage_s * rng.uniform(0.8, 1.2) - (time.monotonic() - t_down)
                )
                during = await uplink_counters(s, health)
                await backend.start()
                down_s = backend.ready_at - t_down
                first = None
                while time.monotonic() - backend.ready_at < RESUME_LIMIT_S:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                        page = await get_json(s, url, headers=headers, params={"after": str(last)})
                        if page["alerts"]:
                            first = time.monotonic() - backend.ready_at
                            break
                    await asyncio.sleep(POLL_S)
                outages.append({
                    "outage_s": round(down_s, 2),
                    "resume_s": None if first is None else round(first, 3),
                    "posts_during": during["attempts"] - before["attempts"],
                    "probes_during": during["probes"] - before["probes"],
                })  # fmt: skip
    finally:
        for p in (agent, modbus, backend):
            await p.stop()
    resumed = sorted(o["resume_s"] for o in outages if o["resume_s"] is not None)
    total_down = sum(o["outage_s"] for o in outages)
    return {
        "probe_interval_s": probe_s,
        "outages": outages,
        "resume_s": {
            "p50": round(statistics.median(resumed), 3) if resumed else None,
            "p95": round(_p95(resumed), 3) if resumed else None,
            "max": max(resumed) if resumed else None,
            "not_resumed": len(outages) - len(resumed),
        },
        "pressure_on_down_backend": {
            "posts_per_outage_s": round(sum(o["posts_during"] for o in outages) / total_down, 3),
            "probes_per_outage_s": round(sum(o["probes_during"] for o in outages) / total_down, 3),
        },
    }


def _p95(xs: list[float]) -> float:
    """Nearest-rank 95th percentile (of 10 samples: the largest)."""
    rank = max(1, -(-95 * len(xs) // 100))
    return xs[rank - 1]


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outages", type=int, default=10, help="outages to measure (bounded)")
    p.add_argument("--outage-s", type=float, default=20.0, help="mean outage length")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--baseline", action="store_true", help="also run with probe_interval_s 60")
    a = p.parse_args(argv)
    if not 1 <= a.outages <= 50 or not 0.5 <= a.outage_s <= 120:
        p.error("--outages 1..50, --outage-s 0.5..120")
    os.chdir(REPO)  # the children run python -m simulators.cli / agent.cli
    load = os.getloadavg()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        modes = {"default": await run_mode(a, Path(tmp) / "default", 1.0)}
        if a.baseline:
            modes["baseline_no_probe"] = await run_mode(a, Path(tmp) / "baseline", 60.0)
    out: dict[str, Any] = {
        "benchmark": "resume_latency",
        "python": platform.python_version(),
        "loadavg_1_5_15_at_start": [round(x, 2) for x in load],
        "settings": {
            "outages": a.outages,
            "outage_s": a.outage_s,
            "seed": a.seed,
            "alerts_per_outage": ALERTS_PER_OUTAGE,
            "poll_s": POLL_S,
        },
        **modes,
        "target": "p95 of resume_s under 2 s",
        "total_seconds": round(time.monotonic() - t0, 1),
    }
    if a.baseline and modes["baseline_no_probe"]["resume_s"]["p95"]:
        out["p95_ratio_baseline_over_default"] = round(
            modes["baseline_no_probe"]["resume_s"]["p95"] / modes["default"]["resume_s"]["p95"], 1
        )
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
