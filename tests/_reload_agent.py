"""The agent as `edge-agent run` for the reload tests (tests/test_reload.py): two
backends, two Modbus simulators, a configuration written as an editor saves it, and ways to
look at the running agent from outside (/healthz, /metrics, its log, its connections)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from agent.demo import SimProcess
from agent.demo_sims import started
from tests.conftest import agent_process, free_port

TOKEN = "reload-token"
TOKEN_B = "rotated-token"  # backend B takes only this one
POLL_S = 0.5
OUTSIDER = 61_234  # a uid in systemd's dynamic range, in no group
# Lets an unprivileged uid run this machine's Python, which lives under /root (0700), as
# tools/check_install_notes.py does; a gateway's Python is /usr/bin/python3.
REVEAL_PYENV = (
    "d=$(mktemp -d); mount --bind /root/.pyenv $d; "
    "mount -t tmpfs -o mode=0755 tmpfs /root; mkdir /root/.pyenv; "
    "mount --bind $d /root/.pyenv; "
)


def sensor(sid: str, asset: str, port: int, unit: int, poll_s: float = POLL_S) -> str:
    timeout_s = min(0.3, 0.75 * poll_s)  # the configuration wants it shorter than the poll
    return (
        f"  - id: {sid}\n    asset: {asset}\n"
        f"    modbus: {{host: 127.0.0.1, port: {port}, device_id: {unit}, "
        f"timeout_s: {timeout_s:g}}}\n"
        f"    poll_interval_s: {poll_s}\n"
    )


def uplink(name: str, url: str, token_file: str = "token") -> str:
    """One http uplink entry of the agent's YAML."""
    return (
        f'  - name: {name}\n    http: {{url: "{url}", token_file: {token_file}, timeout_s: 2, '
        "max_backoff_s: 1, batch_size: 20}\n"
    )


def config_text(
    d: dict[str, Any],
    sensors: list[str],
    *,
    url: str,
    extra: str = "",
    buses: str = "",
    uplinks: str | None = None,
) -> str:
    """The agent's YAML: press-7 (the machine whose baseline must survive), fan-9 (where the
    flows record repairs), the given sensors, one http uplink named portfolio to `url`
    (`uplinks`: these entries instead)."""
    machine = "{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}"
    assets = "".join(
        f"  - id: {a}\n    tier: 1\n    machine: {machine}\n"
        f"    alerting: {{baseline_readings: 10{extra if a == 'press-7' else ''}}}\n"
        for a in ("press-7", "fan-9")
    )
    return (
        "gateway: {id: gw-rl}\n"
        f"assets:\n{assets}"
        f"sensors:\n{''.join(sensors)}"
        f"uplinks:\n{uplink('portfolio', url) if uplinks is None else uplinks}"
        f'store: {{path: "{d["dir"]}/outbox.db"}}\n'
        f"health: {{port: {d['health']}}}\n{buses}"
        f'control: {{socket: "{d["dir"]}/control.sock"}}\n'
    )


@contextlib.asynccontextmanager
async def running(
    workdir: Path,
    *,
    link: bool = False,
    devices: Sequence[str] = (),
    first: Callable[[dict[str, Any]], list[str]] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Two backends (A, B), two Modbus simulators, the agent on A with m1, m2 (simulator 1)
    and m3 (simulator 2); link: agent.yaml is a symlink to v1.yaml (as a deployment tool
    that swaps a link to the release makes it); devices: more devices of simulator 1 (units
    past 3, e.g. "5:velocity=12"), started with the rest instead of one more simulator;
    first: adds its sensors to d["sensors"] and names those the agent starts with (a
    start instead of a reload to add them)."""
    async with started(
        SimProcess.backend(workdir / "a.db", TOKEN),
        SimProcess.backend(workdir / "b.db", TOKEN_B),
        SimProcess.modbus(["1:healthy", "2:healthy", "3:healthy", *devices], 600.0),
        SimProcess.modbus(["1:healthy", "2:healthy"], 600.0),
    ) as (a, b, m, m_other):
        d: dict[str, Any] = {
            "dir": workdir, "health": free_port(), "a": a.info["url"], "b": b.info["url"],
            "port": m.info["port"], "other_port": m_other.info["port"],
            "config": workdir / "agent.yaml", "log": workdir / "agent.log",
        }  # fmt: skip
        d["sensors"] = {
            "m1": sensor("m1", "press-7", d["port"], 1),
            "m2": sensor("m2", "fan-9", d["port"], 2),
            "m3": sensor("m3", "fan-9", d["other_port"], 1),
            "m4": sensor("m4", "press-7", d["port"], 3),
            **{
                f"g{n}": f"  - id: g{n}\n    asset: fan-9\n    modbus: {{bus: gw, device_id: {n}, "
                f"timeout_s: 0.3}}\n    poll_interval_s: {POLL_S}\n"
                for n in (1, 2)
            },
        }
        token = workdir / "token"
        token.write_text(TOKEN)
        token.chmod(0o600)
        write(d, ["m1", "m2", "m3"] if first is None else first(d), url=d["a"])
        if link:
            d["config"].replace(workdir / "v1.yaml")
            d["config"].symlink_to(workdir / "v1.yaml")
        with d["log"].open("wb") as log:
            proc = await agent_process(d["config"], stderr=log, stdout=asyncio.subprocess.DEVNULL)
            d["proc"] = proc
            try:
                await until(d, lambda h: all(s["last_ok_age_s"] is not None for s in h["sensors"]))
                yield d
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    assert await asyncio.wait_for(proc.wait(), 30) == 0


def write(
    d: dict[str, Any],
    sensors: list[str],
    *,
    url: str,
    extra: str = "",
    buses: str = "",
    uplinks: str | None = None,
) -> None:
    text = config_text(
        d, [d["sensors"][s] for s in sensors], url=url, extra=extra, buses=buses, uplinks=uplinks
    )
    tmp = d["config"].with_suffix(".new")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(d["config"])  # as an editor saves: the agent never reads half a file


async def healthz(d: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
        s.get(f"http://127.0.0.1:{d['health']}/healthz") as r,
    ):
        return dict(await r.json())


async def metrics(d: dict[str, Any]) -> dict[str, float]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
        s.get(f"http://127.0.0.1:{d['health']}/metrics") as r,
    ):
        text = await r.text()
    return {
        k: float(v)
        for k, _, v in (ln.partition(" ") for ln in text.splitlines())
        if k.startswith("edge_reload")
    }


async def until(d: dict[str, Any], pred: Any, limit_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while True:
        with contextlib.suppress(OSError, aiohttp.ClientError, ValueError):
            h = await healthz(d)
            if pred(h):
                return h
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit_s} s")
        await asyncio.sleep(0.1)


def by_id(h: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in h["sensors"]}


async def reload_cmd(d: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agent.cli", "reload", "-c", str(d["config"]), *extra],
        capture_output=True,
        text=True,
        timeout=90,
    )


def established_to(port: int) -> int:
    """TCP connections on this machine established to 127.0.0.1:port (the agent's polls)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                remote, state = line.split()[2], line.split()[3]
                n += int(remote.rsplit(":", 1)[1], 16) == port and state == "01"
    return n


def log_lines(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for ln in d["log"].read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(ln))
    return out


def gateway_bus(d: dict[str, Any], settle_s: float) -> str:
    port = d["other_port"]
    return f"buses:\n  - id: gw\n    tcp: {{host: 127.0.0.1, port: {port}, settle_s: {settle_s}}}\n"
