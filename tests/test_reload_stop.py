"""A reload racing a shutdown, on real parts: the agent in this process (as
tests/agent/test_reload_mqtt.py runs it) with a Modbus simulator, a mosquitto, a backend
simulator and its own store; `edge-agent reload`'s client, the raw control socket and
SIGHUP's handler as the requesters; `Agent.stop` is what SIGTERM calls.

Every round starts the agent on one file, writes the other (a poller stopped and one
started, the MQTT link replaced, the uplink rebuilt), then asks for the reload and the
stop in one ordering. Each round: the stop ends within a bound, no task of the agent is
left, and the reload was either applied (before the stop stopped anything) or refused
with "agent is stopping". Maintenance records flow all along; at the end every one the
agent acknowledged is in the store, and the store and the backend hold the same alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.demo_sims import SimProcess, started
from agent.reload_client import request_reload
from agent.runtime import Agent
from tests.agent.test_reload_mqtt import until
from tests.mosquitto import Mosquitto
from tests.test_reload import _backend, _flow

pytestmark = [pytest.mark.network, pytest.mark.slow]

TOKEN = "race-token"
MACHINE = {"standard": "iso10816-3", "group": 2, "foundation": "rigid", "rpm": 1480}
STOP_BOUND_S = 10.0  # the agent's own bounds: settle 8 s at worst, then 2 + 2 s; here ~1 s
FLOWING = 3  # records the agent acknowledged in a round before its race begins
STOPPING = "agent is stopping"
REFUSAL = f"the {STOPPING}; it reads the file when it starts"
# (who goes first, pause before the other): the reload arrives, then the stop after the
# pause (refused while it reads the file; applied when it got further); the stop, then a
# request on a connection made before it; SIGHUP and the stop in one loop step. (Gone:
# 0.15 s after the reload and 0.2 s after the stop, in 6 runs on a loaded machine always
# the outcome of their neighbours, 0.05 or 0.3 s and 0.02 s: one agent start-up each.)
ORDERINGS = [
    ("arrival", 0.0),  # the stop in the very step the request arrives: always refused
    ("reload", 0.0),  # refused: the file is being read
    ("reload", 0.01),  # applied, often still applying (the stop waits for it)
    ("reload", 0.05),
    ("reload", 0.3),  # the file read by then: applied
    ("apply-pollers", 0.0),  # the stop as the reload's old poller ends (mid-apply)
    ("apply-mqtt", 0.0),  # the stop as the reload's old MQTT link ends (mid-apply)
    ("stop", 0.0),  # refused by the reload
    ("stop", 0.02),  # refused by the socket as it closes
    ("sighup", 0.0),
    ("sighup-after-stop", 0.0),
]


def version(d: dict[str, Any], n: int) -> dict[str, Any]:
    """The configuration in two versions: sensor m2 or m3 beside m1 and q1, another MQTT
    keepalive (the broker link is replaced) and uplink batch size (the uplink rebuilt)."""
    modbus = [("m1", 1), ("m2" if n == 0 else "m3", 2 if n == 0 else 3)]
    sensors: list[dict[str, Any]] = [
        {
            "id": sid,
            "asset": "press-7",
            "modbus": {
                "host": "127.0.0.1",
                "port": d["modbus"],
                "device_id": unit,
                "timeout_s": 0.3,
            },
            "poll_interval_s": 0.5,
        }
        for sid, unit in modbus
    ]
    sensors.append({
        "id": "q1", "asset": "fan-9", "channels": ["z"],
        "mqtt": {"broker": "plant", "topic": "ncd/vibration/q1", "decoder": "ncd-processed"},
    })  # fmt: skip
    return {
        "gateway": {"id": "gw-race"},
        "assets": [{"id": a, "tier": 1, "machine": MACHINE} for a in ("press-7", "fan-9")],
        "mqtt": [{"id": "plant", "host": "127.0.0.1", "port": d["mqtt"], "keepalive_s": 30 + n}],
        "sensors": sensors,
        "uplinks": [
            {
                "name": "portfolio",
                "http": {
                    "url": d["backend"],
                    "token_file": str(d["dir"] / "token"),
                    "timeout_s": 2,
                    "max_backoff_s": 1,
                    "batch_size": 20 + n,
                },
            }
        ],
        "store": {"path": str(d["dir"] / "outbox.db")},
        "health": {"port": 0},
        "control": {"socket": str(d["dir"] / "control.sock")},
    }


def write(d: dict[str, Any], n: int) -> None:
    tmp = d["config"].with_suffix(".new")
    tmp.write_text(json.dumps(version(d, n)))  # JSON is YAML
    tmp.replace(d["config"])


class _Arrivals(logging.Handler):
    """Sets an event when the agent logs that a reload request arrived (and stops the
    agent right there, when asked to); notes when a reload was applied."""

    def __init__(self, stop_at_arrival: Any = None) -> None:
        super().__init__()
        self.arrived = asyncio.Event()
        self.stop_at_arrival = stop_at_arrival
        self.applied_at: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("reload requested by"):
            if self.stop_at_arrival is not None:
                self.stop_at_arrival()
            self.arrived.set()
        elif text.startswith("configuration reloaded"):
            self.applied_at = time.monotonic()


def _client(config: Path) -> tuple[int, str, str]:
    """`edge-agent reload -c CONFIG` as the command runs it: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = request_reload(config, out, err)
    return code, out.getvalue(), err.getvalue()


def _late_request(sock: Path, config: Path, connected: threading.Event, go: threading.Event,
                  pause_s: float) -> dict[str, Any]:  # fmt: skip
    """A reload whose connection is made before the stop and whose request follows it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(sock))
        connected.set()
        go.wait(30)
        time.sleep(pause_s)
        line = json.dumps({"op": "reload", "args": {"config": os.path.realpath(config)}})
        with contextlib.suppress(BrokenPipeError):  # answered already: read it below
            s.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return dict(json.loads(data))


async def _round(d: dict[str, Any], n: int, first: str, pause_s: float) -> dict[str, Any]:
    """One agent from start to stop with a reload to version 1-n racing the stop."""
    write(d, n)
    agent = Agent(load_config(d["config"]), config_path=d["config"])
    assert agent.reloader is not None
    arrivals = _Arrivals(agent.stop if first == "arrival" else None)
    logger = logging.getLogger("agent.reload")
    level = logger.level
    logger.setLevel(logging.INFO)  # "reload requested by" is an info line
    logger.addHandler(arrivals)
    before = asyncio.all_tasks()
    run = asyncio.create_task(agent.run(), name="test-agent")
    ended: list[float] = []
    run.add_done_callback(lambda _: ended.append(time.monotonic()))
    stop_flow = asyncio.Event()
    ours: set[asyncio.Task[Any]] = {run}
    try:
        async with asyncio.timeout(10):
            await agent.ready.wait()
        flow = asyncio.create_task(_flow(d, d["accepted"], stop_flow), name="test-flow")
        ours.add(flow)
        had = len(d["accepted"])
        # Records flow while the link connects and the first polls come (spread over 1 s
        # by the agent): the race starts with all of them under way.
        async with asyncio.timeout(10):
            await until(lambda: agent.mqtt.links[0].connected)
            await until(lambda: all(p.last_ok_at is not None for p in agent.pollers))
            await until(lambda: len(d["accepted"]) >= had + FLOWING)
        write(d, 1 - n)
        outcome: dict[str, Any] = {"first": first, "pause_s": pause_s}
        stopped_at = time.monotonic()
        if first.startswith("apply-"):  # the stop fires as the reload stops an old task
            name = "mqtt[plant]" if first == "apply-mqtt" else f"poll[{'m2' if n == 0 else 'm3'}]"
            old = next(t for t in asyncio.all_tasks() if t.get_name() == name)

            def stop_now(_: object) -> None:
                nonlocal stopped_at
                stopped_at = time.monotonic()
                agent.stop()

            old.add_done_callback(stop_now)
        if first in ("reload", "arrival") or first.startswith("apply-"):
            client = asyncio.create_task(asyncio.to_thread(_client, d["config"]), name="test-cli")
            ours.add(client)
            async with asyncio.timeout(10):
                await arrivals.arrived.wait()
            if first == "arrival":
                stopped_at = time.monotonic()
            if first == "reload":
                await asyncio.sleep(pause_s)
                stopped_at = time.monotonic()
                agent.stop()
            code, out, err = await asyncio.wait_for(client, 30)
            outcome.update(code=code, out=out, err=err)
        elif first == "stop":
            connected, go = threading.Event(), threading.Event()
            late = asyncio.create_task(asyncio.to_thread(
                _late_request, d["dir"] / "control.sock", d["config"], connected, go, pause_s
            ), name="test-late")  # fmt: skip
            ours.add(late)
            await asyncio.to_thread(connected.wait, 10)
            stopped_at = time.monotonic()
            agent.stop()
            go.set()
            answer = await asyncio.wait_for(late, 30)
            outcome.update(code=0 if answer["ok"] else 1, out="", err=answer.get("error", ""))
        else:  # SIGHUP's handler and SIGTERM's, in one step of the loop, in either order
            stopped_at = time.monotonic()
            if first == "sighup":
                agent.reloader.on_signal()
                agent.stop()
            else:
                agent.stop()
                agent.reloader.on_signal()
        await asyncio.wait_for(asyncio.shield(run), STOP_BOUND_S)
        outcome["stop_s"] = round(ended[0] - stopped_at, 4)
        # Applied after the stop was asked for: the stop waited for it (settle).
        outcome["settled"] = arrivals.applied_at is not None and arrivals.applied_at > stopped_at
        # Nothing of the agent's outlives its run: pollers, links, reloads, handlers.
        left = asyncio.all_tasks() - before - ours - {asyncio.current_task()}
        outcome["left"] = sorted(t.get_name() for t in left)
        counters = agent.reloader.counters
        outcome["reloads"] = (counters.reloads_total, counters.reload_failures_total)
        outcome["pollers"] = len(agent.sensors.pollers)
        outcome["sensors"] = [s.id for s in agent.config.sensors]
        outcome["wanted"] = [s["id"] for s in version(d, 1 - n)["sensors"]]
        return outcome
    finally:
        stop_flow.set()
        logger.removeHandler(arrivals)
        logger.setLevel(level)
        agent.stop()
        for task in ours:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 30)


async def _final_delivery(d: dict[str, Any], n: int) -> None:
    """Run the agent until the backend holds every stored alert (bounded)."""
    write(d, n)
    agent = Agent(load_config(d["config"]), config_path=d["config"])
    run = asyncio.create_task(agent.run())
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            at, _ = await _backend(d["backend"], TOKEN)
            if len(at) >= len(_stored(d)):
                break
            await asyncio.sleep(0.2)
    finally:
        agent.stop()
        await asyncio.wait_for(run, STOP_BOUND_S)


def _stored(d: dict[str, Any]) -> set[str]:
    with contextlib.closing(sqlite3.connect(d["dir"] / "outbox.db")) as conn:
        return {r[0] for r in conn.execute("SELECT alert_id FROM alerts")}


async def test_a_reload_racing_a_stop_is_applied_before_it_or_refused(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        async with started(
            SimProcess.backend(tmp_path / "backend.db", TOKEN),
            SimProcess.modbus(["1:healthy", "2:healthy", "3:healthy"], 600.0),
        ) as (backend, sim):
            d: dict[str, Any] = {
                "dir": tmp_path, "config": tmp_path / "agent.yaml", "mqtt": broker.port,
                "modbus": sim.info["port"], "backend": backend.info["url"], "accepted": {},
            }  # fmt: skip
            (tmp_path / "token").write_text(TOKEN)
            (tmp_path / "token").chmod(0o600)
            outcomes = []
            for i, (first, pause_s) in enumerate(ORDERINGS):
                outcomes.append(await _round(d, i % 2, first, pause_s))
            await _final_delivery(d, len(ORDERINGS) % 2)
            at_backend, _ = await _backend(d["backend"], TOKEN)
    stored = _stored(d)
    print(json.dumps([{k: v for k, v in o.items() if k not in ("out", "err")} for o in outcomes]))
    for o in outcomes:
        assert o["stop_s"] < STOP_BOUND_S, o
        assert o["left"] == [], o
        assert o["pollers"] == 0, o
        client = o["first"] not in ("stop", "sighup", "sighup-after-stop")
        if o["first"].startswith("apply-"):  # the stop waited for the reload under way
            assert o["code"] == 0 and o["settled"], o
        if client and o["code"] == 0:  # applied before the stop stopped anything
            assert o["out"].startswith("reloaded ") and o["reloads"] == (1, 0), o
            assert o["sensors"] == o["wanted"], o
        elif client:  # refused with the one reason, on one line; nothing changed
            assert o["code"] == 1 and o["reloads"] == (0, 1), o
            assert o["err"].splitlines() == [f"reload refused, nothing changed: {REFUSAL}"], o
            assert o["sensors"] != o["wanted"], o
        elif o["first"] == "stop":  # refused by the reload, or by the socket as it closed
            assert o["code"] == 1 and STOPPING in o["err"] and "\n" not in o["err"], o
            assert o["reloads"][0] == 0, o
        else:  # SIGHUP after the stop began: refused, and said so in the counters
            assert o["reloads"] == (0, 1), o
    # Both outcomes were seen (the orderings are chosen so).
    by = {(o["first"], o["pause_s"]): o for o in outcomes}
    assert by["arrival", 0.0]["code"] == 1 and by["reload", 0.3]["code"] == 0, outcomes
    # No alert lost: every acknowledged record is stored, and all stored reached the backend.
    assert len(d["accepted"]) >= 20, len(d["accepted"])
    assert set(d["accepted"]) <= stored
    assert set(at_backend) == stored, (len(at_backend), len(stored))
