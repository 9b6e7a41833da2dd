"""`edge-agent demo`: the whole chain on this machine, no setup.

Starts the Modbus sensor simulator, the portfolio backend simulator and the CMMS
simulator as separate processes (as a plant would have them), and when mosquitto is
installed a private MQTT broker with a wireless NCD-style sensor publishing to it; runs
the agent on config/demo.yaml against them, and tells the story as the backend receives it (and each
work order the CMMS opens): each alert in plain words, a planner who
confirms the case, a technician who replaces the bearing before the estimated failure,
and a closing summary per case from the backend's portfolio (whose page URL it prints).
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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from agent.analysis.severity import zone_table
from agent.config import Config, load_config
from agent.demo_crew import BackendView, Crew
from agent.demo_sims import SimProcess, Wireless, modbus_only_config, started
from agent.demo_story import LEGEND, case_summary, record_line
from agent.logs import setup_logging
from agent.runtime import Agent

STATUS_EVERY_S = 10.0


@contextlib.contextmanager
def _workdir(path: Path | None, keep: bool) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()  # the store and socket paths in demo.yaml must be absolute
    elif keep:
        yield Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    else:
        with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as tmp:
            yield Path(tmp)


def demo_config_path() -> Path:
    """The demo configuration shipped with the package (config/demo.yaml links to it)."""
    return Path(str(resources.files("agent").joinpath("demo.yaml")))


def demo_backend_config_path() -> Path:
    """The demo backend's asset figures (config/demo-backend.yaml links to it)."""
    return Path(str(resources.files("agent").joinpath("demo-backend.yaml")))


class _Display:
    """Story lines with the seconds since the start; raw records as JSON Lines if asked."""

    def __init__(self, out: TextIO, raw: TextIO | None) -> None:
        self.out, self.raw = out, raw
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        self.first_delivered_s: float | None = None
        self.delivered = 0
        self.work_orders = 0
        self.exited: SimProcess | None = None  # a simulator that exited on its own

    def line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=self.out, flush=True)

    def block(self, lines: Sequence[str]) -> None:
        for text in lines:
            print(f"          {text}", file=self.out, flush=True)

    def received(self, rec: dict[str, Any], story: str) -> None:
        self.delivered += 1
        if self.first_delivered_s is None:
            self.first_delivered_s = time.monotonic() - self.t0
        if self.raw is not None:
            print(json.dumps(rec, sort_keys=True), file=self.raw, flush=True)
        self.line(story)


async def _status_loop(agent: Agent, display: _Display, every_s: float) -> None:
    await agent.ready.wait()
    while True:
        await asyncio.sleep(every_s)
        snap = await agent.snapshot()
        worst: dict[str, dict[str, Any]] = {}
        for c in snap["channels"]:
            if c["asset"] not in worst or c["value"] > worst[c["asset"]]["value"]:
                worst[c["asset"]] = c
        machines = ", ".join(
            f"{a} {c['value']:.1f} mm/s (zone {c['zone']})" for a, c in sorted(worst.items())
        )
        display.line(
            f"watching: {machines or 'waiting for first readings'} | alerts stored "
            f"{snap['pipeline']['alerts_total']}, at the backend {display.delivered}"
        )


class _Feed:
    """The records the backend received, each told once, in the order it stored them."""

    def __init__(self, view: BackendView, config: Config, display: _Display) -> None:
        self.view, self.display = view, display
        self.tables = {a.id: zone_table(a.machine) for a in config.assets}
        self.horizons = {a.id: a.planning_horizon_hours for a in config.assets}
        self.last = 0

    async def told(self) -> list[dict[str, Any]]:
        """Tell the records stored since the last call; returns them."""
        records, self.last = await self.view.records_after(self.last)
        for rec in records:
            self.display.received(rec, record_line(rec, self.tables, self.horizons))
        return records


async def _watch_backend(feed: _Feed, crew: Crew, display: _Display) -> None:
    while True:
        records: list[dict[str, Any]] = []
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            records = await feed.told()
        for rec in records:
            try:
                await crew.on_record(rec)
            except (aiohttp.ClientError, TimeoutError) as exc:  # it tries again on the next
                display.line(f"the planner could not reach the backend: {exc!r}")
        await asyncio.sleep(0.5)


def _exited(sim: SimProcess) -> str:
    assert sim.proc is not None
    return f"the {sim.name} simulator (pid {sim.proc.pid}) exited"


async def _watch_sims(sims: Sequence[SimProcess], agent: Agent, display: _Display) -> None:
    """Stop the demo, saying which, when a simulator exits on its own: the story cannot go
    on honestly without it (no more readings, deliveries or work orders)."""
    waits = {asyncio.ensure_future(s.proc.wait()): s for s in sims if s.proc is not None}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    sim = display.exited = waits[next(iter(done))]
    assert sim.proc is not None
    display.line(
        f"{_exited(sim)} unexpectedly (exit status {sim.proc.returncode}): the demo stops here"
    )
    agent.stop()


def _due(wo: dict[str, Any]) -> str:
    """'19:04:06 UTC' on the day of detection, else '2026-12-02 19:03:46 UTC'."""
    due = str(wo.get("due_date") or "")
    if len(due) < 19:
        return "not set"
    same_day = due[:10] == str((wo.get("source") or {}).get("detected_at", ""))[:10]
    return f"{due[11:19]} UTC" if same_day else f"{due[:10]} {due[11:19]} UTC"


async def _watch_cmms(url: str, token: str, display: _Display) -> None:
    """One line per work order the CMMS opens (the agent's cmms uplink), and one each time
    the agent updates one (an escalation of its episode)."""
    seen: dict[str, Any] = {}  # work order id -> its updated_at when last shown
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as s:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with s.get(url) as resp:  # the demo's few orders: all of them each time
                    page = await resp.json()
                for wo in page["work_orders"]:
                    what = f"{wo['title']} (priority {wo['priority']}, due {_due(wo)})"
                    if wo["id"] not in seen:
                        display.work_orders += 1
                        seen[wo["id"]] = None
                        display.line(f"CMMS work order {wo['id']} opened: {what}")
                    if wo.get("updated_at") and seen[wo["id"]] != wo["updated_at"]:
                        seen[wo["id"]] = wo["updated_at"]
                        display.line(f"CMMS work order {wo['id']} updated: {what}")
            await asyncio.sleep(0.5)


async def _summary(view: BackendView, config: Config, display: _Display) -> None:
    if display.exited is not None and display.exited.name == "backend":
        display.line("no summary: the backend simulator is gone")
        return
    try:
        listing = await view.cases()
    except (aiohttp.ClientError, TimeoutError) as exc:
        display.line(f"no summary: the backend did not answer ({exc})")
        return
    display.line(f"summary: {listing['totals']['cases']} case(s) at the backend")
    cased = set()
    for case in listing["cases"]:
        cased.add(case["asset"]["id"])
        display.block(case_summary(case, display.t0_wall))
    for asset in config.assets:
        if asset.id not in cased:
            display.block([f"{asset.id} {asset.name} (tier {asset.tier}): no case, healthy"])


def _wireless_line(w: Wireless) -> str:
    assert w.sensor is not None and w.sensor.proc is not None
    assert w.broker is not None and w.broker.proc is not None
    return (
        f"a wireless vibration sensor (NCD style) on a healthy cooling water pump publishes its "
        f"readings over MQTT (edge-sim mqtt pid {w.sensor.proc.pid}) to a mosquitto broker the "
        f"demo started on 127.0.0.1:{w.port} (pid {w.broker.proc.pid}), which the agent "
        "subscribes to"
    )


def _no_wireless_line(w: Wireless) -> str:
    if "not installed" in w.reason:
        return (
            "mosquitto is not installed (Debian/Ubuntu: sudo apt install mosquitto), so the "
            "demo runs its Modbus sensors only, without the wireless MQTT sensor"
        )
    return f"no MQTT broker ({w.reason}), so the demo runs its Modbus sensors only"


def _kept(tmp: Path, display: _Display) -> None:
    display.line(
        f"demo files kept in {tmp}: outbox.db (the agent's store), backend.db (the backend's "
        "records, cases and confirmations), cmms.db (the work orders). Look at them again "
        "with:"
    )
    display.block(
        [
            f"edge-sim backend --db {tmp / 'backend.db'} --config {demo_backend_config_path()} "
            "--port 8080",
            "then open http://127.0.0.1:8080/portfolio",
            f"edge-sim cmms --db {tmp / 'cmms.db'} --port 8081",
            "then open http://127.0.0.1:8081/api/v1/work-orders",
        ]
    )


async def _demo(opts: DemoOptions, out: TextIO) -> int:
    display = _Display(sys.stderr if opts.json else out, out if opts.json else None)
    token = secrets.token_hex(16)
    with _workdir(opts.workdir, opts.keep) as tmp:
        async with (
            Wireless(tmp) as wireless,
            started(
                SimProcess.backend(tmp / "backend.db", token, demo_backend_config_path()),
                SimProcess.modbus(["1:degrade", "2:healthy"], opts.life_s),
                SimProcess.cmms(tmp / "cmms.db", token),
            ) as (backend, modbus, cmms),
        ):
            display.line(
                f"the agent watches a press motor whose bearing wears out (failure in about "
                f"{opts.life_s:.0f} s) and a healthy cooling fan (Modbus simulator pid "
                f"{modbus.proc.pid}), and forwards every alert to the maintenance backend "
                f"(pid {backend.proc.pid})"
            )
            mqtt = await wireless.ready()
            display.line(_wireless_line(wireless) if mqtt else _no_wireless_line(wireless))
            display.line(
                f"each early warning or alarm also becomes a work-order request to the plant's "
                f"CMMS (simulator pid {cmms.proc.pid})"
            )
            display.line(
                f"portfolio page (open it while the demo runs): {backend.info['portfolio']}"
            )
            env = {
                "EDGE_DEMO_DIR": str(tmp),
                "EDGE_DEMO_MODBUS_PORT": str(modbus.info["port"]),
                "EDGE_DEMO_BACKEND_URL": backend.info["url"],
                "EDGE_DEMO_TOKEN": token,
                "EDGE_DEMO_CMMS_URL": cmms.info["url"],
            }
            path = demo_config_path()
            if mqtt:
                env["EDGE_DEMO_MQTT_PORT"] = str(wireless.port)
            else:
                path = modbus_only_config(path, tmp / "demo-modbus-only.yaml")
            config = load_config(path, environ={**os.environ, **env})
            agent = Agent(config)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, agent.stop)
            # Printed once Ctrl-C stops the agent (and so still gives the summary): before,
            # a Ctrl-C in the ~50 ms after this line exited 130 with no summary.
            display.line(LEGEND)
            base = backend.info["url"].removesuffix("/v1/alerts")
            async with BackendView(base, token) as view:
                crew = Crew(view, agent, modbus.repair, display.line)
                feed = _Feed(view, config, display)
                run = asyncio.create_task(agent.run(), name="agent")
                helpers = [
                    asyncio.create_task(
                        _status_loop(agent, display, opts.status_every_s), name="demo-status"
                    ),
                    asyncio.create_task(
                        _watch_backend(feed, crew, display), name="demo-backend-watch"
                    ),
                    asyncio.create_task(crew.run(), name="demo-crew"),
                    asyncio.create_task(
                        _watch_cmms(cmms.info["url"], token, display), name="demo-cmms-watch"
                    ),
                    asyncio.create_task(
                        _watch_sims([backend, modbus, cmms, *wireless.running()], agent, display),
                        name="demo-sims-watch",
                    ),
                ]
                try:
                    if opts.duration_s is not None:
                        done, _ = await asyncio.wait({run}, timeout=opts.duration_s)
                        if not done:
                            agent.stop()
                    await run
                finally:
                    for t in helpers:
                        t.cancel()
                    await asyncio.gather(*helpers, return_exceptions=True)
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        loop.remove_signal_handler(sig)
                # What the agent delivered as it stopped (its last flush) is told too.
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    await feed.told()
                await _summary(view, config, display)
        if opts.keep or opts.workdir is not None:
            _kept(tmp, display)
    if display.exited is not None:
        display.line(
            f"done: stopped early because {_exited(display.exited)}; {display.delivered} alerts at "
            f"the backend, {display.work_orders} work order(s) in the CMMS"
        )
        return 1
    if display.first_delivered_s is None:
        display.line("done: no alert reached the backend (run longer: --duration 90)")
    else:
        display.line(
            f"done: {display.delivered} alerts at the backend, {display.work_orders} work "
            f"order(s) in the CMMS; first alert {display.first_delivered_s:.1f}s after start"
        )
    return 0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What `edge-agent demo` was asked for."""

    duration_s: float | None = None
    life_s: float = 60.0
    workdir: Path | None = None
    keep: bool = False
    json: bool = False
    status_every_s: float = STATUS_EVERY_S


def run_demo(opts: DemoOptions, out: TextIO | None = None) -> int:
    """Run the demo until Ctrl-C or `opts.duration_s`; returns the exit code."""
    setup_logging("WARNING", json_lines=False)
    return asyncio.run(_demo(opts, out or sys.stdout))
