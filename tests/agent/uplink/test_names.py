"""Uplink names across configuration changes, on real parts: configuration files loaded as
the agent loads them, its store file (outbox_for), its delivery loops (build_uplinks), and
two backend simulators on loopback.

The store keeps each uplink's delivery state under its name, so a name must stay with its
backend when other uplinks are removed or added.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agent.config import load_config
from agent.store import Outbox, outbox_for
from agent.uplink import build_uplinks
from simulators.backend import BackendServer
from tests.agent.store._drafts import draft
from tests.agent.uplink._running import Running, until
from tests.conftest import free_port

TOKEN = "names-token"
N = 12


def config_text(tmp: Path, uplinks: list[tuple[str | None, str]]) -> str:
    """A configuration with these (name, url) http uplinks, in this order."""
    lines = []
    for name, url in uplinks:
        head = f"  - name: {name}\n    http:" if name else "  - http:"
        lines.append(
            f'{head} {{url: "{url}", token: {TOKEN}, timeout_s: 0.5, max_backoff_s: 0.3, '
            "probe_interval_s: 0.1}\n"
        )
    return (
        "gateway: {id: gw-01}\n"
        "assets:\n  - id: press-7\n"
        "    machine: {standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}\n"
        "sensors:\n  - {id: m1-de, asset: press-7, modbus: {host: 127.0.0.1}}\n"
        f"uplinks:\n{''.join(lines)}"
        f'store: {{path: "{tmp}/outbox.db"}}\n'
    )


async def run_config(
    path: Path,
    done: Callable[[Outbox], Awaitable[bool]],
    *,
    append: int = 0,
) -> None:
    """Start as the agent does on `path` (its store, its uplinks), append `append` alerts,
    deliver until `done`, stop."""
    config = load_config(path)
    async with outbox_for(config) as ob:
        if append:
            await ob.append([draft(i=i) for i in range(append)])
        async with contextlib.AsyncExitStack() as stack:
            for d in build_uplinks(config, ob):
                await stack.enter_async_context(Running(d))
            await until(lambda: done(ob))


def pending(name: str, want: int) -> Callable[[Outbox], Awaitable[bool]]:
    async def check(ob: Outbox) -> bool:
        return (await ob.stats()).uplinks[name].pending == want

    return check


def all_delivered() -> Callable[[Outbox], Awaitable[bool]]:
    async def check(ob: Outbox) -> bool:
        s = await ob.stats()
        return all(u.pending == 0 for u in s.uplinks.values() if u.configured)

    return check


async def received(backend: BackendServer) -> list[str]:
    return sorted(a["alert"]["alert_id"] for a in await backend.alerts())


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="positional names lose alerts")
async def test_removing_the_first_of_two_unnamed_uplinks_loses_nothing(tmp_path: Path) -> None:
    """Backend 1 is down, so every alert waits for it; the operator takes its uplink out of
    the configuration (restart), then puts it back once backend 1 works (restart): backend
    1 must still get every alert, backend 2 each alert once."""
    path = tmp_path / "agent.yaml"
    port1 = free_port()
    url1 = f"http://127.0.0.1:{port1}/v1/alerts"
    async with BackendServer(db=tmp_path / "b2.db", token=TOKEN) as b2:
        path.write_text(config_text(tmp_path, [(None, url1), (None, b2.url)]))
        await run_config(path, pending("http-2", 0), append=N)
        # Backend 1 down: all N wait for it (as http-1).
        path.write_text(config_text(tmp_path, [(None, b2.url)]))
        await run_config(path, all_delivered())
        async with BackendServer(port=port1, db=tmp_path / "b1.db", token=TOKEN) as b1:
            path.write_text(config_text(tmp_path, [(None, b2.url), (None, url1)]))
            await run_config(path, all_delivered())
            await asyncio.sleep(0.5)  # anything still under way arrives
            got1, got2 = await received(b1), await received(b2)
            stats2 = await b2.stats()
    assert len(got1) == N, f"backend 1 got {len(got1)} of {N} alerts"
    assert len(got2) == N and stats2["duplicates"] == 0, (
        f"backend 2 was sent {stats2['duplicates']} duplicate(s)"
    )
