"""The store writer's stop never blocks on its own queue, whatever the disk does.

Real parts: a real SQLite file whose write lock another connection holds, so the writer
thread waits in SQLite's busy handler as it would on a stalled fsync; the agent's stop
runs in a child process, as its exit is what must not hang.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

_CHILD = textwrap.dedent(
    """
    import asyncio, sqlite3, sys, time
    from pathlib import Path
    from agent.store._writer import Writer, _Request

    path = Path(sys.argv[1])
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE t(x)")

    def opener():
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)

    async def main():
        w = Writer(path, opener, queue_size=8)
        await w.start()
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # every commit waits (60 s busy timeout)
        insert = lambda conn: conn.execute("INSERT INTO t VALUES (1)")
        first = asyncio.ensure_future(w.submit(insert, write=True, what="first"))
        while w.busy_for_s == 0.0:  # the thread is inside the blocked commit
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        # The queue at its bound (as many requests as submit lets in): the submit path
        # cannot get here while the thread holds a request, so they are put directly.
        while not w._queue.full() and w._queue.qsize() < 8:
            w._queue.put_nowait(_Request(insert, True, loop.create_future(), "filler"))
        t0 = time.monotonic()
        await w.stop(timeout_s=0.5)
        print(f"stop returned after {time.monotonic() - t0:.1f} s", flush=True)
        first.cancel()

    asyncio.run(main())  # then the default executor is shut down: what blocked the exit
    print("exited", flush=True)
    """
)


def test_a_stop_with_the_queue_full_and_the_disk_hung_does_not_block_the_exit(
    tmp_path: Path,
) -> None:
    """Putting the stop marker on a full request queue from a helper thread blocked that
    thread until the hung commit ended (60 s here, forever on a dead disk), and the
    process's exit waited for it. Now a place is kept for the marker: the stop gives up
    after its timeout and the process exits at once."""
    repo = Path(__file__).resolve().parents[3]
    started = time.monotonic()
    try:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(tmp_path / "w.db")],
            capture_output=True, text=True, timeout=15, cwd=repo,
            env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the process did not exit: {exc.stdout!r}") from None
    assert out.returncode == 0, out.stderr
    assert "exited" in out.stdout, out.stdout
    assert time.monotonic() - started < 12
