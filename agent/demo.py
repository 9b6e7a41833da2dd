"""`edge-agent demo`: the whole chain on this machine, no setup.

Starts the Modbus sensor simulator and the portfolio backend simulator as separate
processes (as a plant would have them), runs the agent on config/demo.yaml against them,
and prints a live status and every alert as the backend receives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from agent.config import load_config
from agent.logs import setup_logging
from agent.runtime import Agent

READY_TIMEOUT_S = 20.0


class SimProcess:
    """A simulator child process that announces its address with one READY line."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name, self.args = name, args
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}

    @classmethod
    def backend(cls, db: Path, token: str) -> SimProcess:
        """`edge-sim backend` on a free loopback port, storing into `db`."""
        args = ["--host", "127.0.0.1", "--port", "0", "--db", str(db), "--token", token]
        return cls("backend", ["backend", *args])

    @classmethod
    def modbus(cls, devices: Sequence[str], life_s: float) -> SimProcess:
        """`edge-sim modbus` on a free loopback port; devices like "1:degrade", "2:dead"."""
        args = ["--host", "127.0.0.1", "--port", "0", "--life-s", str(life_s)]
        for d in devices:
            args += ["--device", d]
        return cls("modbus", ["modbus", *args])

    async def __aenter__(self) -> SimProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "simulators.cli",
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"{self.name} simulator exited before it was ready")
                    if line.startswith(b"READY "):
                        self.info = json.loads(line[6:])
                        break
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(5):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as tmp:
            yield Path(tmp)


def demo_config_path() -> Path:
    """The demo configuration shipped with the package (config/demo.yaml links to it)."""
    return Path(str(resources.files("agent").joinpath("demo.yaml")))


def _duration(hours: float) -> str:
    """A readable duration: the demo's machine fails in seconds, a plant's in days."""
    seconds = hours * 3600.0
    if seconds < 120:
        return f"{seconds:.0f} s"
    if hours < 2:
        return f"{seconds / 60:.0f} min"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


class _Display:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.first_delivered_s: float | None = None
        self.delivered = 0

    def line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=self.out, flush=True)

    def backend_alert(self, rec: dict[str, Any]) -> None:
        self.delivered += 1
        if self.first_delivered_s is None:
            self.first_delivered_s = time.monotonic() - self.t0
        sev = rec.get("severity") or {}
        ttf = rec.get("time_to_failure")
        outlook = (
            f"time to failure {_duration(ttf['hours'])} [{_duration(ttf['lower_hours'])} to "
            f"{_duration(ttf['upper_hours'])}] ({ttf['model']})"
            if ttf
            else f"no estimate: {rec.get('no_estimate_reason')}"
        )
        self.line(
            f"BACKEND received {rec['alert_id']}: {rec['kind']} {rec['state']} "
            f"{rec['asset']['id']} ({rec['asset']['name']}) {rec['sensor']['id']}/"
            f"{rec['sensor']['channel']} zone {sev.get('zone')} {sev.get('level')} "
            f"{sev.get('metric')}={sev.get('value')} threshold {sev.get('threshold')} "
            f"[{sev.get('standard')}] detected {rec['detected_at']}; {outlook}"
        )


async def _status_loop(agent: Agent, display: _Display) -> None:
    await agent.ready.wait()
    while True:
        snap = await agent.snapshot()
        chans = "  ".join(
            f"{c['asset']}/{c['channel']} {c['value']:.2f} mm/s {c['zone']}"
            for c in sorted(snap["channels"], key=lambda c: (c["asset"], c["channel"]))
        )
        store = snap["store"]
        sensors = " ".join(f"{s['id']}:{s['state']}" for s in snap["sensors"])
        display.line(
            f"{chans or 'waiting for first readings'} | sensors {sensors} | alerts stored "
            f"{snap['pipeline']['alerts_total']}, pending {store.get('pending')}, "
            f"at backend {display.delivered}"
        )
        await asyncio.sleep(2.0)


async def _backend_watch(url: str, token: str, display: _Display) -> None:
    seen: set[str] = set()
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=3)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as resp:
                    body = await resp.json()
                for rec in body.get("alerts", []):
                    if rec["alert_id"] not in seen:
                        seen.add(rec["alert_id"])
                        display.backend_alert(rec)
            await asyncio.sleep(0.5)


async def _demo(duration_s: float | None, life_s: float, workdir: Path | None, out: TextIO) -> int:
    display = _Display(out)
    token = secrets.token_hex(16)
    with _workdir(workdir) as tmp:
        display.line(f"demo files in {tmp}")
        async with (
            SimProcess.backend(tmp / "backend.db", token) as backend,
            SimProcess.modbus(["1:degrade", "2:healthy"], life_s) as modbus,
        ):
            display.line(f"backend simulator at {backend.info['url']} (pid {backend.proc.pid})")
            display.line(
                f"modbus simulator at 127.0.0.1:{modbus.info['port']} (pid {modbus.proc.pid}): "
                f"device 1 = degrading press motor (fails in ~{life_s:.0f}s), "
                "device 2 = healthy fan"
            )
            env = {
                "EDGE_DEMO_DIR": str(tmp),
                "EDGE_DEMO_MODBUS_PORT": str(modbus.info["port"]),
                "EDGE_DEMO_BACKEND_URL": backend.info["url"],
                "EDGE_DEMO_TOKEN": token,
            }
            config = load_config(demo_config_path(), environ={**os.environ, **env})
            agent = Agent(config)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, agent.stop)
            run = asyncio.create_task(agent.run(), name="agent")
            helpers = [
                asyncio.create_task(_status_loop(agent, display), name="demo-status"),
                asyncio.create_task(
                    _backend_watch(backend.info["url"], token, display), name="demo-backend-watch"
                ),
            ]
            try:
                if duration_s is not None:
                    done, _ = await asyncio.wait({run}, timeout=duration_s)
                    if not done:
                        agent.stop()
                await run
            finally:
                for t in helpers:
                    t.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
    if display.first_delivered_s is not None:
        display.line(
            f"done: {display.delivered} alerts at the backend; first one "
            f"{display.first_delivered_s:.1f}s after start"
        )
    else:
        display.line("done: no alert reached the backend (run longer: --duration 90)")
    return 0


def run_demo(
    *,
    duration_s: float | None = None,
    life_s: float = 60.0,
    workdir: Path | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the demo until Ctrl-C or `duration_s`; returns the exit code."""
    setup_logging("WARNING", json_lines=False)
    return asyncio.run(_demo(duration_s, life_s, workdir, out or sys.stdout))
