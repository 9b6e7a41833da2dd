"""The running agent's store beside the operator commands, each a process of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.store import Outbox, StoreFault
from tests.agent.store._drafts import draft

UP = "up"
ROOT = Path(__file__).resolve().parents[3]


def _outbox(path: Path, faults: list[StoreFault]) -> Outbox:
    return Outbox(
        path,
        gateway_id="gw-01",
        max_bytes=1 << 30,
        first_seq=1,
        uplinks=(UP,),
        on_fault=faults.append,
    )


def _in_another_process(code: str, db: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    return proc.stdout.strip()


_REQUEUE = (
    "import sys\n"
    "from pathlib import Path\n"
    "from agent.store._view import requeue_in_place\n"
    "print(len(requeue_in_place(Path(sys.argv[1]), uplink='up', item_ids=None, by='test')))\n"
)
_COUNT = (
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True)\n"
    "print(conn.execute('SELECT count(*) FROM alerts').fetchone()[0])\n"
)


async def test_a_requeue_beside_the_running_agent_keeps_its_alerts_on_disk(
    tmp_path: Path,
) -> None:
    """`edge-agent requeue` while the agent ran (even with nothing to requeue) deleted the
    agent's WAL: the agent's check of the file's header (a plain open and close of the
    store file, at every write) dropped the process's SQLite lock on it, so the requeue's
    connection took itself for the last one, checkpointed and unlinked the WAL and -shm.
    The agent went on acknowledging alerts into the deleted WAL: `alerts` never listed
    them, and a kill -9 or a power cut lost them."""
    db = tmp_path / "outbox.db"
    faults: list[StoreFault] = []
    async with _outbox(db, faults) as ob:
        await ob.append([draft(i=0)])
        await ob.append([draft(i=1)])
        assert _in_another_process(_REQUEUE, db) == "0"
        await ob.append([draft(i=2)])
        # What another process reads now is what a kill -9 of the agent would leave.
        assert _in_another_process(_COUNT, db) == "3"
        assert (tmp_path / "outbox.db-wal").exists()
    assert faults == []
