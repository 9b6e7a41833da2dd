"""`edge-agent requeue --all` beside a running agent: short transactions, not one long one."""

from __future__ import annotations

import asyncio
import io
import sqlite3
import threading
from pathlib import Path

import yaml

from agent.config import load_config
from agent.requeue import EXIT_INTERRUPTED, requeue
from agent.store import REQUEUE_CHUNK, Outbox, outbox_for, store_lock
from tests.agent.store._drafts import draft
from tests.agent.test_operator_commands import write_config

N = 2 * REQUEUE_CHUNK + 1  # three transactions


def _config_with_store(tmp_path: Path, db: Path) -> Path:
    """The operator commands' config, with one HTTP uplink (nothing listens: never sent)."""
    cfg = write_config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["store"]["path"] = str(db)
    data["uplinks"] = [{"name": "portfolio", "http": {"url": "http://127.0.0.1:9/v1/alerts"}}]
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _dead(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM outbound WHERE state = 2").fetchone()[0])
    finally:
        conn.close()


async def _dead_letters(ob: Outbox, uplink: str) -> list[str]:
    await ob.append([draft(i=i) for i in range(N)])
    return await ob.dead_letter(uplink, await ob.next_batch(uplink, N), "HTTP 401")


class _Out(io.StringIO):
    """The requeue's standard output; `on_line(n)` runs as line n (from 1) is printed."""

    def __init__(self, on_line: object) -> None:
        super().__init__()
        self.lines = 0
        self._on_line = on_line

    def write(self, s: str) -> int:
        if s.strip():
            self.lines += 1
            self._on_line(self.lines)  # type: ignore[operator]
        return super().write(s)


async def test_requeue_all_lets_the_agents_writes_in_between_its_transactions(
    tmp_path: Path,
) -> None:
    """150k dead letters requeued beside the running agent held SQLite's write lock for
    one whole transaction (2.5 s on a fast disk; above ~300k the agent's writes waited past
    their 5 s busy timeout and failed). Now each REQUEUE_CHUNK rows are committed and
    printed before the next begin: an alert the agent stores while the first chunk is
    printed is stored then, and the result is exact (every dead letter, once)."""
    db = tmp_path / "outbox.db"
    config = load_config(_config_with_store(tmp_path, db))
    [uplink] = config.uplink_names()
    loop = asyncio.get_running_loop()
    seen: dict[str, object] = {}
    with store_lock(db):  # as the running agent holds it
        async with outbox_for(config) as ob:
            dead = await _dead_letters(ob, uplink)

            def on_line(n: int) -> None:
                if n != 1:
                    return
                # Between the first chunk's commit and the next: the agent writes now.
                stored = asyncio.run_coroutine_threadsafe(ob.append([draft(i=N)]), loop)
                seen["agent_stored"] = stored.result(timeout=30)
                seen["still_dead"] = _dead(db)

            out, err = _Out(on_line), io.StringIO()
            code = await asyncio.to_thread(lambda: requeue(config, out, err, ids=None, uplink=None))
            assert code == 0, err.getvalue()
            requeues = await ob.requeues(limit=N + 10)
            waiting = await ob.next_batch(uplink, N + 10)
    assert len(seen["agent_stored"]) == 1  # type: ignore[arg-type]
    assert seen["still_dead"] == N - REQUEUE_CHUNK  # the first transaction only
    assert out.lines == N
    assert sorted(r["id"] for r in requeues) == sorted(dead)
    assert len(waiting) == N + 1


async def test_an_interrupted_requeue_says_how_many_and_a_rerun_completes_it(
    tmp_path: Path,
) -> None:
    """Ctrl-C during a requeue beside the agent: the chunks committed stand, the command
    says how many, and the same command again requeues the rest, each dead letter once."""
    db = tmp_path / "outbox.db"
    config = load_config(_config_with_store(tmp_path, db))
    [uplink] = config.uplink_names()
    stop = threading.Event()

    def on_line(n: int) -> None:
        if n == REQUEUE_CHUNK + 1 and not stop.is_set():  # the second chunk is printed
            stop.set()
            raise KeyboardInterrupt

    with store_lock(db):
        async with outbox_for(config) as ob:
            dead = await _dead_letters(ob, uplink)
            out, err = _Out(on_line), io.StringIO()
            code = await asyncio.to_thread(lambda: requeue(config, out, err, ids=None, uplink=None))
            assert code == EXIT_INTERRUPTED
            assert f"interrupted: {2 * REQUEUE_CHUNK} requeued" in err.getvalue()
            assert _dead(db) == N - 2 * REQUEUE_CHUNK
            again, err2 = _Out(lambda n: None), io.StringIO()
            code = await asyncio.to_thread(
                lambda: requeue(config, again, err2, ids=None, uplink=None)
            )
            assert code == 0, err2.getvalue()
            assert again.lines == N - 2 * REQUEUE_CHUNK
            requeues = await ob.requeues(limit=N + 10)
    assert _dead(db) == 0
    assert sorted(r["id"] for r in requeues) == sorted(dead)


async def test_a_dead_letter_the_agent_refuses_again_during_requeue_all_is_requeued_once(
    tmp_path: Path,
) -> None:
    """The backend still refuses what `requeue --all` puts back: the running agent sends
    the first chunk and dead-letters it again while the requeue goes on. The next chunk
    took those oldest dead letters again (ORDER BY ref), so the run requeued them twice
    and, the agent quicker than the run, went round without end, its history growing.
    Now one run goes through the dead letters once: those stay dead (a rerun asks again)
    and so does one dead-lettered during the run, newer than all of them."""
    db = tmp_path / "outbox.db"
    config = load_config(_config_with_store(tmp_path, db))
    [uplink] = config.uplink_names()
    loop = asyncio.get_running_loop()

    async def refused_again() -> None:  # the agent's uplink, the backend answering 422
        await ob.dead_letter(uplink, await ob.next_batch(uplink, N), "HTTP 422")
        await ob.append([draft(i=N)])  # and a new alert, refused as well
        await ob.dead_letter(uplink, await ob.next_batch(uplink, N), "HTTP 422")

    def on_line(n: int) -> None:
        if n == 1:  # the first chunk is committed
            asyncio.run_coroutine_threadsafe(refused_again(), loop).result(timeout=30)

    with store_lock(db):
        async with outbox_for(config) as ob:
            dead = await _dead_letters(ob, uplink)
            out, err = _Out(on_line), io.StringIO()
            code = await asyncio.to_thread(lambda: requeue(config, out, err, ids=None, uplink=None))
            assert code == 0, err.getvalue()
            requeues = await ob.requeues(limit=3 * N)
    assert out.lines == N
    assert sorted(r["id"] for r in requeues) == sorted(dead)  # each once
    assert _dead(db) == REQUEUE_CHUNK + 1  # the first chunk again, and the new one
