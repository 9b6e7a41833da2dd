"""The running agent's store beside the operator commands, each a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from agent.store import Outbox, StoreFault
from tests.agent.store._drafts import draft
from tests.agent.test_operator_commands import write_config

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


_CLI = "import sys\nfrom agent.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _cli_in_another_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CLI, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def _config_with_store(tmp_path: Path, db: Path) -> Path:
    cfg = write_config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["store"]["path"] = str(db)
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_a_store_in_a_folder_named_with_hash_question_mark_or_percent_is_read(
    tmp_path: Path,
) -> None:
    """The read-only connections (`alerts`, `status`, the store checks at every open) named
    the store in an SQLite URI as written: a '#' or '?' in a folder's name ended the file
    name there, so they opened (and created, read-write: mode=ro went with the rest) the
    file named by what came before, and '%41' named yet another. `alerts` said the store
    was not one, and an empty stray file appeared beside the store's folder."""
    folder = tmp_path / "plant#2?line%41"
    db = folder / "outbox.db"
    cfg = _config_with_store(tmp_path, db)
    before = _names(tmp_path)
    faults: list[StoreFault] = []
    async with _outbox(db, faults) as ob:
        stored = await ob.append([draft(i=0), draft(i=1)])
        proc = _cli_in_another_process("alerts", "-c", str(cfg), "--json")
        assert proc.returncode == 0, proc.stderr
        listed = [json.loads(line)["alert_id"] for line in proc.stdout.splitlines()]
        assert sorted(listed) == sorted(r["alert_id"] for r in stored)
    assert faults == []
    assert _names(tmp_path) == sorted([*before, folder.name])
