"""The systemd watchdog is fed only while the agent can do its job."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import Control
from agent.control import call
from agent.runtime import Agent
from agent.sdnotify import SystemdNotifier
from agent.watchdog import WatchdogLimits
from tests.agent._configs import press_config


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket recording (arrival time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.got: list[tuple[float, str]] = []
        asyncio.get_running_loop().add_reader(self.sock, self.drain)

    def drain(self) -> list[tuple[float, str]]:
        while self.sock.fileno() != -1:
            try:
                self.got.append((time.monotonic(), self.sock.recv(4096).decode()))
            except BlockingIOError:
                break
        return self.got

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock)
        self.sock.close()

    def pings_since(self, t: float) -> int:
        return sum(1 for at, m in self.drain() if m == "WATCHDOG=1" and at >= t)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: WatchdogLimits
) -> AsyncIterator[tuple[Agent, NotifySocket]]:
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ticks every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    config = press_config(tmp_path).model_copy(
        update={"control": Control(socket=tmp_path / "c.sock")}
    )
    agent = Agent(config, watchdog=limits)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(10):
            await agent.ready.wait()
        yield agent, notify
    finally:
        agent.stop()
        await asyncio.wait_for(task, 20)
        notify.close()


async def _wait_for_pings(notify: NotifySocket, since: float, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while notify.pings_since(since) < n:
        assert time.monotonic() < deadline, f"fewer than {n} pings: {notify.drain()[-5:]}"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_wedged_store_writer_stops_the_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holds the store's write lock: the writer waits in SQLite's busy
    handler (5 s) exactly as it would on a hung disk, and systemd must see no ping."""
    limits = WatchdogLimits(max_writer_busy_s=1.0, tick_s=0.1)
    async with running(tmp_path, monkeypatch, limits) as (agent, notify):
        await _wait_for_pings(notify, time.monotonic(), 3, timeout_s=5)
        blocker = sqlite3.connect(tmp_path / "o.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the write lock
        locked_at = time.monotonic()
        try:
            write = asyncio.create_task(
                asyncio.to_thread(call, tmp_path / "c.sock", "maintenance", {"asset": "press-7"})
            )
            await asyncio.sleep(3.0)  # the writer is 3 s into a batch that takes 5 s
            snap = await agent.snapshot()
            await asyncio.sleep(3.0)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        answer = await write
        await _wait_for_pings(notify, time.monotonic(), 3, timeout_s=15)  # live again
    pings = [at for at, m in notify.drain() if m == "WATCHDOG=1" and at >= locked_at]
    longest_gap = max(b - a for a, b in itertools.pairwise(pings))
    # One 5 s batch past a 1 s bound: about 4 s without a ping (0.1 s otherwise).
    assert longest_gap >= 3.0, longest_gap
    assert snap["status"] == "degraded"
    assert "store writer has been on one batch" in snap["process"]["hung"]
    assert snap["process"]["store_writer_busy_seconds"] > 1.0
    messages = [r.getMessage() for r in caplog.records if r.name == "agent.watchdog"]
    assert any("stops pinging systemd" in m for m in messages), messages
    assert any("is live again" in m for m in messages), messages
    # The event was not lost: refused while the store was locked, or stored after.
    assert answer["ok"] or "unwritable" in answer["error"]


async def test_an_event_loop_far_behind_is_not_pinged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    limits = WatchdogLimits(max_loop_lag_s=0.5, tick_s=0.1)
    async with running(tmp_path, monkeypatch, limits) as (_agent, notify):
        await _wait_for_pings(notify, time.monotonic(), 2, timeout_s=5)
        time.sleep(1.0)  # noqa: ASYNC251 -- the point: a blocking call stalls the loop
        await asyncio.sleep(0.05)
        await _wait_for_pings(notify, time.monotonic(), 2, timeout_s=5)
    assert any(
        "event loop ran" in r.getMessage() and "late" in r.getMessage()
        for r in caplog.records
        if r.name == "agent.watchdog"
    )


def test_watchdog_settings_meant_for_another_process_are_ignored() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert SystemdNotifier(env).watchdog_s == 30.0
    assert SystemdNotifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_s == 30.0
    assert SystemdNotifier({**env, "WATCHDOG_PID": "1"}).watchdog_s is None
    assert SystemdNotifier({**env, "WATCHDOG_USEC": "0"}).watchdog_s is None
