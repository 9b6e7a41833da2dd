"""Operator commands on awkward stores and input: a large store, a newer agent's store, a
limit beyond SQLite, a note longer than the agent keeps. Real store files, the real CLI."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import yaml

from agent.config import load_config
from agent.control import call
from agent.inspect import alerts
from agent.maintenance import MAX_NOTE_CHARS
from agent.store import outbox_for
from tests.agent.store._drafts import draft
from tests.agent.test_operator_commands import cli, one_line_error, running_agent, write_config


class _Sink(io.TextIOBase):
    """stdout that keeps only a count: the test measures the command, not its output."""

    lines = 0

    def write(self, s: str) -> int:
        self.lines += s.count("\n")
        return len(s)


def _fill(cfg: Path, n: int, *, refused_by: str | None = None) -> None:
    """n alerts through the real Outbox; all dead-lettered by `refused_by` if named."""

    async def fill() -> None:
        async with outbox_for(load_config(cfg)) as ob:
            for i in range(0, n, 500):
                await ob.append([draft(1, i + j, asset="press-7") for j in range(500)])
                if refused_by is not None:
                    items = await ob.next_batch(refused_by, 500)
                    await ob.dead_letter(refused_by, items, "HTTP 422: schema")

    asyncio.run(fill())


def _peak(run: Callable[[], int]) -> tuple[int, int]:
    """(exit code, peak bytes traced while it ran)."""
    tracemalloc.start()
    try:
        code = run()
        return code, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _with_uplink(cfg: Path) -> Path:
    data = yaml.safe_load(cfg.read_text())
    data["uplinks"] = [{"name": "portfolio", "http": {"url": "http://127.0.0.1:9/v1/alerts"}}]
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def test_alerts_with_a_large_limit_prints_as_it_reads(tmp_path: Path) -> None:
    # 100,000 alerts with -n 100000 took 645 MB (all read, then printed) on a gateway that
    # may have 512 MB; `| head -1` waited 5 s for its line. Now a page at a time.
    cfg = write_config(tmp_path)
    _fill(cfg, 3000)
    out = _Sink()
    code, peak = _peak(lambda: alerts(load_config(cfg), out, io.StringIO(), 3000, as_json=True))
    assert code == 0
    assert out.lines == 3000
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MB for 3000 alerts"


def test_dead_letters_with_a_large_limit_print_as_they_read(tmp_path: Path) -> None:
    # 100,000 dead letters with -n 100000 took 548 MB: every record decoded, then sorted.
    cfg = _with_uplink(write_config(tmp_path))
    _fill(cfg, 3000, refused_by="portfolio")
    out = _Sink()
    code, peak = _peak(
        lambda: alerts(load_config(cfg), out, io.StringIO(), 3000, as_json=True, dead_letter=True)
    )
    assert code == 0
    assert out.lines == 3000
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MB for 3000 dead letters"
    newest = cli("alerts", "--dead-letter", "--json", "-n", "2", "-c", str(cfg))
    rows = [json.loads(line) for line in newest.stdout.splitlines()]
    assert [(r["uplink"], r["reason"], r["class"]) for r in rows] == [
        ("portfolio", "HTTP 422: schema", "alert")
    ] * 2
    assert rows[0]["dead_lettered_at"] >= rows[1]["dead_lettered_at"]


def test_alerts_newest_first_across_pages(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    _fill(cfg, 1000)
    proc = cli("alerts", "--json", "-n", "450", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    ids = [json.loads(line)["alert_id"] for line in proc.stdout.splitlines()]
    assert len(ids) == len(set(ids)) == 450
    assert ids == sorted(ids, reverse=True)


def test_a_limit_beyond_sqlite_is_a_usage_error(tmp_path: Path) -> None:
    proc = cli("alerts", "-n", str(10**21), "-c", str(write_config(tmp_path)))
    assert proc.returncode == 2
    assert one_line_error(proc).startswith(
        "edge-agent alerts: argument -n/--limit: must be at most 1000000000"
    )


def test_read_commands_refuse_a_newer_agents_store(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    _fill(cfg, 1)
    path = load_config(cfg).store.path
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 3")
    before = path.read_bytes()
    for args in (["alerts"], ["alerts", "--dead-letter"]):
        proc = cli(*args, "-c", str(cfg))
        assert proc.returncode == 1
        assert "has schema v3, newer than this edge-agent knows (v2)" in one_line_error(proc)
    status = cli("status", "-c", str(cfg))
    assert "has schema v3, newer than this edge-agent knows" in status.stdout
    assert path.read_bytes() == before


def test_a_note_too_long_is_refused_not_cut(tmp_path: Path) -> None:
    # The running agent kept the first 1000 characters and said "recorded"; with the agent
    # stopped the whole note went in. Now both refuse, and nothing is recorded.
    cfg = write_config(tmp_path)
    note = "x" * (MAX_NOTE_CHARS + 1)
    proc = cli("maintenance", "-c", str(cfg), "--asset", "press-7", "--note", note)
    assert proc.returncode == 2
    assert one_line_error(proc) == (
        "maintenance not recorded: --note: the note has 1001 characters, at most 1000 are "
        "allowed; shorten it (the work order can hold the rest)"
    )
    assert not load_config(cfg).store.path.exists()


async def test_the_control_socket_refuses_a_note_too_long(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    config = load_config(cfg)
    async with running_agent(cfg):
        args = {"asset": "press-7", "note": "y" * (MAX_NOTE_CHARS + 1)}
        answer = await asyncio.to_thread(call, config.control.socket, "maintenance", args)
    assert answer["ok"] is False
    assert answer["error"].startswith("the note has 1001 characters, at most 1000")
    listed = await asyncio.to_thread(cli, "alerts", "--json", "-c", str(cfg))
    assert [json.loads(x)["kind"] for x in listed.stdout.splitlines()] == []
