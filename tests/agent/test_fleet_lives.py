"""The fleet teaches itself: `maintenance --replaced` stores a completed life per asset class,
later priors of the class use it, and `status` shows it (real SQLite files, the real CLI)."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.analysis.monitor import Monitor
from agent.analysis.reliability import FleetLife
from agent.cli import main
from agent.config import load_config
from agent.store import Outbox, outbox_for
from drivers.reading import Reading
from tests.agent.store._drafts import draft

CONFIG = """\
gateway: {{id: gw-t}}
assets:
  - id: press-7
    machine: {{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}}
    reliability: {{class: bearing-6204, lives_hours: [900], age_hours: 500}}
  - id: press-8
    machine: {{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}}
    reliability: {{class: bearing-6204, age_hours: 40}}
sensors:
  - {{id: m1, asset: press-7, modbus: {{host: 127.0.0.1, port: 5020}}}}
  - {{id: m2, asset: press-8, modbus: {{host: 127.0.0.1, port: 5021}}}}
store: {{path: {db}}}
health: {{port: 0}}
"""


async def test_lives_are_stored_with_their_record_once_and_survive_a_reopen(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    life = FleetLife(120.5, True, "press-7", "2026-11-24T04:00:00.000Z")
    async with Outbox(db, gateway_id="gw-t", max_bytes=1 << 30, first_seq=1) as ob:
        assert await ob.fleet_lives() == {}
        (rec,) = await ob.append([draft()], {"k": "v"}, [("bearing-6204", life)])
        await ob.append([draft(1)], None, [("bearing-6204", life)])  # a retried write
    async with Outbox(db, gateway_id="gw-t", max_bytes=1 << 30) as ob:
        assert await ob.fleet_lives() == {"bearing-6204": [life]}
    assert rec["seq"] == 1


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """Two assets of one class; the store in tmp_path/o.db."""
    file = tmp_path / "c.yaml"
    file.write_text(CONFIG.format(db=tmp_path / "o.db"))
    return file


def test_replaced_twice_offline_then_status_shows_the_class_history(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["maintenance", "--json", "-c", str(cfg), "--asset", "press-7"]
    assert main([*args, "--replaced", "--note", "DE bearing seized"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["evidence"]["replacement"] == {
        "replaced": "failed", "class": "bearing-6204", "completed_life_hours": 500.0,
        "fleet_lives": 1,
    }  # fmt: skip
    # press-8's part (40 h old), replaced while sound: a suspension of the same class.
    assert main([*args[:-1], "press-8", "--replaced", "healthy"]) == 0
    second = json.loads(capsys.readouterr().out)["evidence"]["replacement"]
    assert second["replaced"] == "healthy" and second["completed_life_hours"] == 40.0
    assert second["fleet_lives"] == 2
    with pytest.raises(SystemExit) as bad:  # argparse: one line naming the valid choices
        main(["maintenance", "-c", str(cfg), "--asset", "press-7", "--replaced", "x"])
    assert bad.value.code == 2 and "choose from 'failed', 'healthy'" in capsys.readouterr().err

    assert main(["status", "-c", str(cfg)]) == 1  # the agent is stopped: exit 1, and the store
    assert (
        capsys.readouterr()
        .out.rstrip()
        .endswith("; fleet history: bearing-6204 1 life (+1 replaced healthy)")
    )
    assert main(["status", "--json", "-c", str(cfg)]) == 1
    fleet = json.loads(capsys.readouterr().out)["fleet"]
    cls = fleet["classes"]["bearing-6204"]
    assert cls["failed_lives_hours"] == [500.0] and len(cls["replaced_healthy_hours"]) == 1
    # Both assets of the class use the stored life; press-8 has no configured lives at all.
    assert "1 life in the fleet history" in fleet["assets"]["press-7"]["prior"]
    assert fleet["assets"]["press-8"]["prior"].endswith(
        "1 life in the fleet history, 1 replaced while healthy"
    )
    median = (500.0**1.5 + 40.0**1.5) ** (1 / 1.5)  # one failure, exposure of both lives
    assert fleet["assets"]["press-8"]["median_life_hours"] == pytest.approx(median, rel=0.01)


def test_status_reads_a_store_from_before_fleet_lives(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["maintenance", "-c", str(cfg), "--asset", "press-8"]) == 0
    with sqlite3.connect(cfg.parent / "o.db") as conn:  # an older agent's store: no such table
        conn.execute("DROP TABLE fleet_lives")
    capsys.readouterr()
    assert main(["status", "--json", "-c", str(cfg)]) == 1  # the agent is stopped
    fleet = json.loads(capsys.readouterr().out)["fleet"]
    assert fleet["classes"] == {} and fleet["assets"]["press-8"]["prior"] is None


def test_a_replacement_recorded_twice_within_a_minute_adds_one_life(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator who runs the command again (it seemed to hang, a script retried) must
    not add a failed life of one second to the class: press-8's prior would halve."""
    args = ["maintenance", "--json", "-c", str(cfg), "--asset", "press-7", "--replaced"]
    assert main(args) == 0 and main(args) == 0
    first, second = (json.loads(x) for x in capsys.readouterr().out.splitlines())
    assert first["evidence"]["replacement"]["completed_life_hours"] == 500.0
    again = second["evidence"]["replacement"]
    assert again["completed_life_hours"] is None and again["fleet_lives"] == 1
    assert "recorded twice" in again["life_not_recorded"]
    with sqlite3.connect(cfg.parent / "o.db") as conn:
        assert conn.execute("SELECT life_hours FROM fleet_lives").fetchall() == [(500.0,)]
    assert main(["status", "--json", "-c", str(cfg)]) == 1
    fleet = json.loads(capsys.readouterr().out)["fleet"]
    assert fleet["assets"]["press-8"]["median_life_hours"] == pytest.approx(500.0, rel=0.01)


def test_a_replacement_corrected_within_a_minute_replaces_its_life(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--replaced healthy` corrected at once by `--replaced failed`: the first entry stayed
    (a suspension where the part had failed: the class's prior too long); the correction
    now replaces it, in the store and in `status`. A later replacement is a new life."""
    args = ["maintenance", "--json", "-c", str(cfg), "--asset", "press-7", "--replaced"]
    assert main([*args, "healthy"]) == 0 and main([*args, "failed"]) == 0
    first, second = (json.loads(x) for x in capsys.readouterr().out.splitlines())
    assert first["evidence"]["replacement"]["replaced"] == "healthy"
    fixed = second["evidence"]["replacement"]
    assert fixed["completed_life_hours"] == 500.0 and fixed["fleet_lives"] == 1
    assert "as healthy: its life is now counted as failed" in fixed["corrects"]
    with sqlite3.connect(cfg.parent / "o.db") as conn:
        rows = conn.execute("SELECT life_hours, failed FROM fleet_lives").fetchall()
    assert rows == [(500.0, 1)]
    assert main(["status", "-c", str(cfg)]) == 1  # the agent is stopped
    assert capsys.readouterr().out.rstrip().endswith("; fleet history: bearing-6204 1 life")

    async def later() -> dict[str, Any]:  # the new part fails 100 h later: a second life
        config = load_config(cfg)
        async with outbox_for(config) as ob:
            m = Monitor(config, state=await ob.load_state(), fleet=await ob.fleet_lives())
            u = m.maintenance(
                "press-7", datetime.now(UTC) + timedelta(hours=100), "", replaced="failed"
            )
            (record,) = await ob.append(u.drafts, u.state, u.lives)
            return dict(record["evidence"]["replacement"])

    again = asyncio.run(later())
    assert again["completed_life_hours"] == pytest.approx(100.0, abs=0.01)
    assert again["fleet_lives"] == 2 and "corrects" not in again
    with sqlite3.connect(cfg.parent / "o.db") as conn:
        assert len(conn.execute("SELECT 1 FROM fleet_lives").fetchall()) == 2


def test_implausible_stored_lives_are_ignored_and_said_so(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store written before lives were bounded (age_hours 1e308 was accepted) can hold a
    life of inf or 1e300 h: the prior overflowed, `status` died with an internal error and
    the records' bounds were NaN (every alert of the class unstorable)."""
    assert main(["maintenance", "-c", str(cfg), "--asset", "press-7", "--replaced"]) == 0
    with sqlite3.connect(cfg.parent / "o.db") as conn:
        conn.executemany(
            "INSERT INTO fleet_lives (class, asset, life_hours, failed, ended_at) "
            "VALUES ('bearing-6204', 'press-8', ?, 1, ?)",
            [(float("inf"), "2026-01-01T00:00:00.000Z"), (1e300, "2026-01-02T00:00:00.000Z")],
        )
    capsys.readouterr()
    assert main(["status", "--json", "-c", str(cfg)]) == 1  # the agent is stopped
    out = capsys.readouterr().out
    fleet = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))["fleet"]
    cls = fleet["classes"]["bearing-6204"]
    assert cls["failed_lives_hours"] == [500.0] and cls["ignored_lives"] == 2
    prior = fleet["assets"]["press-8"]["prior"]
    assert prior.endswith("1 life in the fleet history (2 implausible lives ignored)")
    assert fleet["assets"]["press-8"]["median_life_hours"] == pytest.approx(500.0, rel=0.01)
    assert main(["status", "-c", str(cfg)]) == 1
    assert capsys.readouterr().out.rstrip().endswith("; fleet history: bearing-6204 1 life")
    # The running agent's records: finite bounds that the store takes.

    async def zone_c() -> dict[str, Any]:
        config = load_config(cfg)
        async with outbox_for(config) as ob:
            m = Monitor(config, state=await ob.load_state(), fleet=await ob.fleet_lives())
            at, records = datetime.now(UTC), []
            for i in range(20):  # zone C, past the debounce
                r = Reading("m2", "z", at + timedelta(seconds=i), {"velocity_rms_mm_s": 3.5})
                u = m.update(r)
                records += await ob.append(u.drafts, u.state, u.lives)
            assert records, "no zone C record"
            return records[-1]

    ttf = asyncio.run(zone_c())["time_to_failure"]
    assert ttf is not None and ttf["model"] == "reliability-prior"
    assert all(math.isfinite(ttf[k]) for k in ("hours", "lower_hours", "upper_hours"))


def test_status_stays_one_readable_line_with_many_classes(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """10,000 lives over 300 classes (a site's years of replacements, classes since
    renamed): the one-line status names the configured class and a count of the rest, not
    8,000 characters of them; --json still lists every class."""
    assert main(["maintenance", "-c", str(cfg), "--asset", "press-7", "--replaced"]) == 0
    with sqlite3.connect(cfg.parent / "o.db") as conn:
        conn.executemany(
            "INSERT INTO fleet_lives (class, asset, life_hours, failed, ended_at) "
            "VALUES (?, 'press-7', ?, 1, ?)",
            [(f"old-{i % 300}", 100.0 + i, f"2025-01-01T{i:08d}") for i in range(10_000)],
        )
    capsys.readouterr()
    assert main(["status", "-c", str(cfg)]) == 1  # the agent is stopped
    line = capsys.readouterr().out.rstrip()
    assert line.endswith(
        "; fleet history: bearing-6204 1 life, and 300 classes no asset uses (status --json)"
    ), line
    assert len(line) < 400
    assert main(["status", "--json", "-c", str(cfg)]) == 1
    assert len(json.loads(capsys.readouterr().out)["fleet"]["classes"]) == 301
