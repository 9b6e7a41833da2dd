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

from agent.config import ConfigError, load_config
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


def write(path: Path, uplinks: list[tuple[str | None, str]]) -> Path:
    path.write_text(config_text(path.parent, uplinks))
    return path


def test_several_unnamed_uplinks_of_a_kind_are_refused_where_they_stand(tmp_path: Path) -> None:
    """Names by position (http-1, http-2) moved to another backend when an uplink was
    removed or inserted: before this check, the scenario below with unnamed uplinks gave
    backend 1 none of its 12 alerts (counted delivered) and backend 2 each alert 3 times."""
    urls = ["https://a.example/v1", "https://b.example/v1", "https://c.example/v1"]
    path = write(tmp_path / "agent.yaml", [(None, urls[0]), ("b", urls[1]), (None, urls[2])])
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert [(i.line, i.column, i.path) for i in e.value.issues] == [
        (8, 5, "uplinks[0]"),
        (11, 5, "uplinks[2]"),
    ]
    assert all(
        "several http uplinks (lines 8, 9, 11): give each a `name:`" in i.message
        and "name one `http` to keep the state of the former single unnamed http uplink"
        in i.message
        for i in e.value.issues
    )
    # The one uplink of its kind may stay unnamed: named by its kind, as before.
    assert load_config(write(path, [(None, "https://a.example/v1")])).uplink_names() == ("http",)


async def test_removing_a_named_uplink_and_adding_it_back_loses_nothing(tmp_path: Path) -> None:
    """Backend 1 is down, so every alert waits for it; the operator takes its uplink out of
    the configuration (restart), then puts it back, last, once backend 1 works (restart):
    backend 1 still gets every alert, backend 2 each alert once."""
    port1 = free_port()
    url1 = f"http://127.0.0.1:{port1}/v1/alerts"
    path = tmp_path / "agent.yaml"
    async with BackendServer(db=tmp_path / "b2.db", token=TOKEN) as b2:
        write(path, [("b1", url1), ("b2", b2.url)])
        await run_config(path, pending("b2", 0), append=N)
        write(path, [("b2", b2.url)])  # b1's N undelivered alerts stay in the store
        await run_config(path, all_delivered())
        async with BackendServer(port=port1, db=tmp_path / "b1.db", token=TOKEN) as b1:
            write(path, [("b2", b2.url), ("b1", url1)])
            await run_config(path, all_delivered())
            await asyncio.sleep(0.5)  # a request still under way would arrive now
            got1, got2 = await received(b1), await received(b2)
            stats1, stats2 = await b1.stats(), await b2.stats()
    assert len(got1) == N and stats1["duplicates"] == 0, (len(got1), stats1)
    assert got2 == got1 and stats2["duplicates"] == 0, stats2


async def test_the_single_unnamed_uplink_named_by_its_kind_keeps_its_state(
    tmp_path: Path,
) -> None:
    """A site with one unnamed http uplink (its backend down, N alerts waiting) adds a
    second: the check asks for names; naming the first `http`, as it advises, keeps its
    backlog, so its backend gets every alert once; the new one gets the backlog too."""
    port1 = free_port()
    url1 = f"http://127.0.0.1:{port1}/v1/alerts"
    path = tmp_path / "agent.yaml"
    async with BackendServer(db=tmp_path / "b2.db", token=TOKEN) as b2:
        write(path, [(None, url1)])
        await run_config(path, pending("http", N), append=N)
        write(path, [(None, url1), (None, b2.url)])
        with pytest.raises(ConfigError, match="name one `http` to keep the state"):
            load_config(path)
        async with BackendServer(port=port1, db=tmp_path / "b1.db", token=TOKEN) as b1:
            write(path, [("http", url1), ("backup", b2.url)])
            await run_config(path, all_delivered())
            await asyncio.sleep(0.5)
            got1, got2 = await received(b1), await received(b2)
            stats1, stats2 = await b1.stats(), await b2.stats()
    assert len(got1) == N and got2 == got1
    assert stats1["duplicates"] == stats2["duplicates"] == 0
