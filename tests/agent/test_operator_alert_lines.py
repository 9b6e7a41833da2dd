"""`edge-agent alerts`: one line per alert, in words; real store files, the real CLI."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from agent.config import load_config
from agent.records import Severity
from agent.store import outbox_for
from tests.agent.store._drafts import draft
from tests.agent.test_operator_commands import cli, write_config


def test_an_alert_without_a_zone_is_listed_without_one(tmp_path: Path) -> None:
    """A trend alert whose record has no ISO zone was listed as "zone None warning"."""
    cfg = write_config(tmp_path)
    unzoned = Severity(
        "warning", None, "departure from the learned baseline", "health_index", 0.31, 0.2
    )
    records = [
        dataclasses.replace(draft(1, 0, asset="press-7"), kind="trend", severity=unzoned),
        draft(1, 1, asset="press-7"),  # zone C, as the drafts have it
    ]

    async def fill() -> None:
        async with outbox_for(load_config(cfg)) as ob:
            await ob.append(records)

    asyncio.run(fill())
    ran = cli("alerts", "-c", str(cfg))
    assert ran.returncode == 0, ran.stderr
    trend, severity = sorted(ran.stdout.splitlines(), key=lambda line: " trend " in line)[::-1]
    assert " trend raised press-7 m1-de/z warning; " in trend
    assert "None" not in ran.stdout
    assert " severity raised press-7 m1-de/z zone C warning; " in severity


def test_an_empty_listing_says_so(tmp_path: Path) -> None:
    """`alerts` and `alerts --dead-letter` on a store with none printed nothing at all: an
    integrator could not tell an empty store from a command that did nothing."""
    cfg = write_config(tmp_path)

    async def fill() -> None:
        async with outbox_for(load_config(cfg)):
            pass

    asyncio.run(fill())
    store = load_config(cfg).store.path
    ran = cli("alerts", "-c", str(cfg))
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "", f"no alerts in the store {store}\n")
    ran = cli("alerts", "-c", str(cfg), "--dead-letter")
    assert (ran.returncode, ran.stdout) == (0, "")
    assert ran.stderr == f"no dead letters in the store {store}\n"
    ran = cli("alerts", "-c", str(cfg), "--json")
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "", "")
