"""Operator commands: one human line (JSON with --json), non-zero when the agent is not
reached or not ours, one-line errors for bad arguments, never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.cli import main as agent_main
from agent.config import Control, Health, ModbusTcp, load_config
from agent.control import ControlServer
from agent.health import HealthServer
from agent.identity import agent_identity
from agent.runtime import Agent
from agent.store import store_lock
from simulators.cli import main as sim_main
from tests.agent._configs import press_config, write_yaml
from tests.conftest import free_port


def write_config(tmp_path: Path, *, host: str = "127.0.0.1", port: int | None = None) -> Path:
    """press_config with a sensor nobody answers, a health port and a control socket."""
    dead = ModbusTcp(host="127.0.0.1", port=free_port(), timeout_s=0.2)
    config = press_config(tmp_path)
    config = config.model_copy(
        update={
            "sensors": (config.sensors[0].model_copy(update={"modbus": dead}),),
            "health": Health(
                host=host, port=free_port() if port is None else port, expose=host != "127.0.0.1"
            ),
            "control": Control(socket=tmp_path / "c.sock"),
        }
    )
    return write_yaml(config, tmp_path / "agent.yaml")


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, main: Callable[[list[str]], int] = agent_main) -> Ran:
    """The command as a user runs it, in this process (sys.argv aside, nothing differs)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return Ran(code, out.getvalue(), err.getvalue())


def one_line_error(proc: Ran) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@contextlib.asynccontextmanager
async def running_agent(cfg: Path) -> AsyncIterator[Agent]:
    agent = Agent(load_config(cfg))
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(10):
            await agent.ready.wait()
        yield agent
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)


async def test_status_of_a_running_agent_is_one_line_or_json(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    async with running_agent(cfg) as agent:
        for _ in range(100):  # up to 10 s for the dead sensor's first failures
            if agent.pollers[0].status.state != "starting":
                break
            await asyncio.sleep(0.1)
        human = await asyncio.to_thread(cli, "status", "-c", str(cfg))
        as_json = await asyncio.to_thread(cli, "status", "--json", "-c", str(cfg))
    assert human.returncode == 0, human
    assert human.stdout.count("\n") == 1
    assert human.stdout.startswith("gw-t: agent running, DEGRADED: m1 (127.0.0.1:")
    assert "sensors 0/1 ok" in human.stdout
    report = json.loads(as_json.stdout)
    assert report["agent"]["agent"]["gateway"] == "gw-t"
    assert report["store"]["last_seq"] is not None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "nothing listens at http://127.0.0.1:{port}/healthz (connection refused)"),
        ("no-such-gateway.invalid", "cannot resolve no-such-gateway.invalid"),
    ],
)
def test_status_without_an_agent_says_why_and_exits_1(
    tmp_path: Path, host: str, expected: str
) -> None:
    port = free_port()
    cfg = write_config(tmp_path, host=host, port=port)
    proc = cli("status", "-c", str(cfg))
    assert proc.returncode == 1
    why = expected.format(port=port)
    assert proc.stdout == f"gw-t: agent NOT reachable: {why}; no store yet at {tmp_path}/o.db\n"


def test_status_with_a_random_port_cannot_find_the_agent(tmp_path: Path) -> None:
    proc = cli("status", "-c", str(write_config(tmp_path, port=0)))
    assert proc.returncode == 1 and "health.port is 0 (a random port)" in proc.stdout


async def _impostor(identity: dict[str, Any]) -> dict[str, Any]:
    return {"gateway": identity["gateway"], "agent": identity, "status": "ok", "sensors": []}


@pytest.mark.parametrize("who", ["other-gateway", "other-store", "re-created-store"])
async def test_status_refuses_an_answer_from_another_agent(tmp_path: Path, who: str) -> None:
    """Another user's program (or another agent) took the health port first."""
    cfg = write_config(tmp_path)
    config = load_config(cfg)
    async with running_agent(cfg):  # creates the store, then frees the port again
        pass
    identity = agent_identity(config, "2020-01-01T00:00:00.000Z")
    identity |= {
        "other-gateway": {"gateway": "gw-elsewhere"},
        "other-store": {"store": "/var/lib/other/outbox.db"},
        "re-created-store": {},
    }[who]
    async with HealthServer(lambda: _impostor(identity), port=config.health.port) as fake:
        assert fake.error is None
        proc = await asyncio.to_thread(cli, "status", "-c", str(cfg))
    assert proc.returncode == 1
    assert f"the process at http://127.0.0.1:{config.health.port}/healthz is not this " in (
        proc.stdout
    )
    assert {
        "other-gateway": "it is the agent of gateway 'gw-elsewhere', not 'gw-t'",
        "other-store": "it runs on store /var/lib/other/outbox.db",
        "re-created-store": "its store was created at 2020-01-01T00:00:00.000Z",
    }[who] in proc.stdout


async def test_maintenance_refuses_an_impostor_on_the_control_socket(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    config = load_config(cfg)
    impostor = agent_identity(config, None) | {"gateway": "gw-elsewhere"}

    async def accept(_args: object, _peer: object) -> dict[str, Any]:
        return {"records": []}

    with store_lock(config.store.path):  # "the agent is running"
        async with ControlServer(
            config.control.socket,
            group=None,
            identity=lambda: impostor,
            handlers={"maintenance": accept},
        ):
            proc = await asyncio.to_thread(cli, "maintenance", "-c", str(cfg), "--asset", "press-7")
        missing = await asyncio.to_thread(cli, "maintenance", "-c", str(cfg), "--asset", "press-7")
    assert proc.returncode == 1
    assert one_line_error(proc) == (
        f"maintenance not recorded: the process on {config.control.socket} is not this "
        "configuration's agent: it is the agent of gateway 'gw-elsewhere', not 'gw-t'"
    )
    assert missing.returncode == 1
    assert one_line_error(missing) == (
        "maintenance not recorded: cannot reach the running agent: no control socket at "
        f"{config.control.socket}"
    )


async def test_maintenance_names_who_asked(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    offline = await asyncio.to_thread(
        cli, "maintenance", "-c", str(cfg), "--asset", "press-7", "--note", "DE bearing"
    )
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.startswith("maintenance on press-7 recorded into the store as gw-t-")
    async with running_agent(cfg):
        online = await asyncio.to_thread(
            cli, "maintenance", "--json", "-c", str(cfg), "--asset", "press-7"
        )
    assert online.returncode == 0, online.stderr
    record = json.loads(online.stdout)
    asked = record["evidence"]["requested_by"]
    assert asked["via"] == "control socket"
    # The kernel's word (SO_PEERCRED) for the process that ran the command: this one.
    assert (asked["uid"], asked["user"], asked["pid"]) == (os.getuid(), "root", os.getpid())
    alerts = await asyncio.to_thread(cli, "alerts", "--json", "-n", "5", "-c", str(cfg))
    stored = [json.loads(line) for line in alerts.stdout.splitlines()]
    assert [r["evidence"]["requested_by"]["via"] for r in stored] == [
        "control socket",
        "store (agent stopped)",
    ]


def test_alerts_prints_one_line_per_alert(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    assert cli("maintenance", "-c", str(cfg), "--asset", "press-7").returncode == 0
    proc = cli("alerts", "-c", str(cfg))
    assert proc.returncode == 0
    (line,) = proc.stdout.splitlines()
    assert " maintenance cleared press-7 m1/* ; pending" in line.replace("*;", "* ;")


def test_alerts_shows_a_damaged_record_and_lists_the_others(tmp_path: Path) -> None:
    # A bad sector inside one record's text (valid UTF-8, no longer JSON): the operator's
    # listing used to fail whole with a ValueError traceback.
    import sqlite3

    cfg = write_config(tmp_path)
    for _ in range(2):
        assert cli("maintenance", "-c", str(cfg), "--asset", "press-7").returncode == 0
    store = load_config(cfg).store.path
    with contextlib.closing(sqlite3.connect(store)) as conn, conn:
        conn.execute("UPDATE alerts SET body = '{\"kind\": \"mainte}]}]' WHERE seq = "
                     "(SELECT MIN(seq) FROM alerts)")  # fmt: skip
    proc = cli("alerts", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    newest, damaged = proc.stdout.splitlines()
    assert " maintenance cleared press-7 " in newest
    assert "damaged record text" in damaged
    rows = [json.loads(x) for x in cli("alerts", "--json", "-c", str(cfg)).stdout.splitlines()]
    assert rows[1]["record"]["text"].startswith('{"kind": "mainte')


LIMIT = "edge-agent alerts: argument -n/--limit:"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["alerts", "-n", "-1"], f"{LIMIT} must be at least 1, got -1"),
        (["alerts", "-n", "0"], f"{LIMIT} must be at least 1, got 0"),
        (["alerts", "-n", "ten"], f"{LIMIT} expected a whole number"),
        (["run", "--log-level", "verbose"], "edge-agent run: argument --log-level: unknown"),
        (["stats"], "edge-agent: argument command: invalid choice: 'stats'"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = cli(*args, "-c", str(write_config(tmp_path)))
    assert proc.returncode == 2
    assert one_line_error(proc).startswith(message)


def test_edge_sim_bad_log_level_is_one_line() -> None:
    proc = cli("--log-level", "verbose", "modbus", main=sim_main)
    assert proc.returncode == 2
    assert one_line_error(proc).startswith(
        "edge-sim: argument --log-level: unknown log level 'verbose'"
    )


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, b'{"error": "no such page"}', "answered HTTP 404: no such page"),
        (200, b"<html>router login</html>", "answered HTTP 200 without a JSON document"),
        (200, b"[" * 100_000 + b"]" * 100_000, "answered HTTP 200 without a JSON document"),
    ],
)
async def test_status_names_what_answered_instead(
    tmp_path: Path, status: int, body: bytes, expected: str
) -> None:
    port = free_port()

    async def answer(_request: web.Request) -> web.Response:
        return web.Response(status=status, body=body)

    app = web.Application()
    app.router.add_get("/healthz", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        proc = await asyncio.to_thread(cli, "status", "-c", str(write_config(tmp_path, port=port)))
    finally:
        await runner.cleanup()
    assert proc.returncode == 1
    assert f"http://127.0.0.1:{port}/healthz {expected}" in proc.stdout


OUTSIDER = 61_234  # a uid in systemd's dynamic range, in no group
SYSTEM_PYTHON = "/usr/bin/python3"  # an unprivileged uid can run it
_COPYCAT = """
import http.server, sys
body = sys.stdin.buffer.read()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

_as_outsider = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists(SYSTEM_PYTHON),
    reason="needs root, setpriv and /usr/bin/python3 to act as another user",
)


async def _serve_as_outsider(port: int, body: bytes) -> asyncio.subprocess.Process:
    """Another user (OUTSIDER) serving `body` to every GET on `port`, once it listens (up
    to 10 s); the caller kills it."""
    as_outsider = ["setpriv", f"--reuid={OUTSIDER}", f"--regid={OUTSIDER}", "--clear-groups"]
    server = await asyncio.create_subprocess_exec(
        *as_outsider, SYSTEM_PYTHON, "-c", _COPYCAT, str(port), stdin=asyncio.subprocess.PIPE
    )
    try:
        assert server.stdin is not None
        server.stdin.write(body)
        server.stdin.close()
        for _ in range(100):  # up to 10 s to listen
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            await asyncio.sleep(0.1)
    except BaseException:
        server.kill()
        await server.wait()
        raise
    return server


@_as_outsider
async def test_status_refuses_another_user_serving_the_agents_own_identity(
    tmp_path: Path,
) -> None:
    """Any local user reads the agent's identity in /healthz; one who takes the port while
    the agent restarts (the agent then runs on without it) served it back with "ok", and
    `status` said "agent running, ok" whatever the sensors did. Now the owner of the
    listening socket must be the agent's user (or root)."""
    cfg = write_config(tmp_path)
    port = load_config(cfg).health.port
    async with running_agent(cfg):
        real = await asyncio.to_thread(cli, "status", "--json", "-c", str(cfg))
    copied = json.loads(real.stdout)["agent"] | {"status": "ok", "sensors": []}
    copycat = await _serve_as_outsider(port, json.dumps(copied).encode())
    try:
        proc = await asyncio.to_thread(cli, "status", "-c", str(cfg))
    finally:
        copycat.kill()
        await copycat.wait()
    assert proc.returncode == 1, proc
    assert "agent running" not in proc.stdout
    assert f"it runs as uid {OUTSIDER}, the agent as uid 0" in proc.stdout, proc.stdout


@_as_outsider
async def test_a_health_port_held_at_start_is_taken_back_and_status_says_why_meanwhile(
    tmp_path: Path,
) -> None:
    """Before, an agent started while another user held its health port tried once, logged
    it, and never served /healthz until restarted; status could only say "its log says why".
    Now the agent keeps trying, takes the port once it is free, and notes why meanwhile in
    its store, where status reads it."""
    cfg = write_config(tmp_path)
    port = load_config(cfg).health.port
    holder = await _serve_as_outsider(port, b"{}")
    try:
        async with running_agent(cfg) as agent:
            held = await asyncio.to_thread(cli, "status", "-c", str(cfg))
            holder.kill()
            await holder.wait()
            for _ in range(150):  # up to 15 s: the retries back off from 1 s
                if agent.health is not None and agent.health.port == port:
                    break
                await asyncio.sleep(0.1)
            back = await asyncio.to_thread(cli, "status", "-c", str(cfg))
        stopped = await asyncio.to_thread(cli, "status", "-c", str(cfg))
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
    assert held.returncode == 1, held
    assert (
        f"its health endpoint is not served (cannot listen on 127.0.0.1:{port}: Address "
        f"already in use, held by uid {OUTSIDER}), retrying" in held.stdout
    ), held.stdout
    assert back.returncode == 0 and "agent running" in back.stdout, back
    assert stopped.returncode == 1 and "health endpoint" not in stopped.stdout, stopped
