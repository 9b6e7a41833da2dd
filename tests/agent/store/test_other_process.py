"""The running agent's store beside the operator commands, each a process of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from agent.store import StoreFault, store_lock
from tests.agent.store._drafts import draft
from tests.agent.store._tamper import UP, backup_of, damage_header, watched_outbox
from tests.agent.test_operator_commands import write_config

ROOT = Path(__file__).resolve().parents[3]


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
    async with watched_outbox(db, faults) as ob:
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
    async with watched_outbox(db, faults) as ob:
        stored = await ob.append([draft(i=0), draft(i=1)])
        proc = _cli_in_another_process("alerts", "-c", str(cfg), "--json")
        assert proc.returncode == 0, proc.stderr
        listed = [json.loads(line)["alert_id"] for line in proc.stdout.splitlines()]
        assert sorted(listed) == sorted(r["alert_id"] for r in stored)
    assert faults == []
    assert _names(tmp_path) == sorted([*before, folder.name])


def _descriptors_on(db: Path) -> list[str]:
    """What this process's open descriptors on the store (its -wal, -shm, and the files
    recovery moved aside, by their names now) point at."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(db)):
                found.append(target)
    return sorted(found)


def _mv_over(db: Path) -> None:
    other = db.with_name("other.db")
    other.write_bytes(b"an operator's file, mv'd over the store by mistake\n" * 50)
    os.replace(other, db)


async def test_after_recoveries_the_store_is_still_held_against_other_processes(
    tmp_path: Path,
) -> None:
    """The descriptor the agent keeps on its store (for the header check, instead of an
    open and close per write) follows the store through recoveries: one on the recovered
    file, none left on the files moved aside, so a requeue beside the agent still finds
    it holding the recovered store (its WAL stays), and damage to that file is seen."""
    db = tmp_path / "outbox.db"
    faults: list[StoreFault] = []
    async with watched_outbox(db, faults) as ob:
        await ob.append([draft(i=0)])
        held = _descriptors_on(db)
        for k in range(3):
            await asyncio.to_thread(_mv_over, db)
            await ob.append([draft(i=1 + k)])
        assert [f.kind for f in faults] == ["replaced"] * 3
        assert _descriptors_on(db) == held  # the same files: no descriptor left behind
        assert _in_another_process(_REQUEUE, db) == "0"
        await ob.append([draft(i=4)])
        assert _in_another_process(_COUNT, db) == "5"
        assert (tmp_path / "outbox.db-wal").exists()
        await asyncio.to_thread(damage_header, db)
        await ob.append([draft(i=5)])
        assert [f.kind for f in faults] == ["replaced"] * 3 + ["corrupt"]
        assert "header" in faults[-1].reason


async def test_a_requeue_refuses_a_file_moved_over_the_running_agents_store(
    tmp_path: Path,
) -> None:
    """A backup moved back over the store while the agent ran, then `edge-agent requeue`
    before the agent's next write: the requeue opened the backup with the agent's WAL
    beside it, wrote into that WAL and, the last connection on the backup, copied the WAL
    into it on close and deleted it. The agent, recovering from the replaced file, then
    read stale pages: the alerts acknowledged since its last checkpoint were lost (and the
    requeue reported done went into the backup). The requeue now refuses a file the agent
    does not hold, and the agent's recovery keeps every alert and the backup as it was."""
    db = tmp_path / "outbox.db"
    cfg = _config_with_store(tmp_path, db)
    faults: list[StoreFault] = []
    with store_lock(db):  # as the running agent holds it
        async with watched_outbox(db, faults) as ob:
            dead = await ob.append([draft(i=0)])
            await ob.dead_letter(UP, await ob.next_batch(UP, 10), "HTTP 401")
            backup = await asyncio.to_thread(backup_of, db)
            kept = await asyncio.to_thread(backup.read_bytes)
            pending = [*await ob.append([draft(i=1)]), *await ob.append([draft(i=2)])]
            await asyncio.to_thread(os.replace, backup, db)
            proc = _cli_in_another_process("requeue", "-c", str(cfg), "--all")
            assert proc.returncode == 1, proc.stdout
            assert "the running agent does not hold the file" in proc.stderr
            assert "Nothing was changed" in proc.stderr
            pending += await ob.append([draft(i=3)])  # the agent notices, recovers
            [fault] = faults
            waiting = [it.item_id for it in await ob.next_batch(UP, 100)]
            dead_letters = [d["id"] for d in await ob.dead_letters()]
    assert fault.kind == "replaced" and fault.moved_to is not None
    assert sorted(waiting) == sorted(r["alert_id"] for r in pending)
    assert dead_letters == [r["alert_id"] for r in dead]
    assert fault.moved_to.read_bytes() == kept
