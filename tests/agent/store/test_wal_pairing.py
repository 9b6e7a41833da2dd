"""A WAL a kill -9 left beside the store, paired with another file by a backup's mv, and a
store file with a second name (hard link): refused with what to do, nothing changed.

Real processes: the agent's store is written by a child process killed with SIGKILL
(its WAL stays, unchecked), then the real CLI opens what an integrator left."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.store import Outbox, StoreError
from tests.agent.test_operator_commands import cli, one_line_error, running_agent, write_config
from tests.conftest import REPO

_KILLED_WRITER = """
import asyncio, os, signal, sys
from agent.store import Outbox
from tests.agent.store._drafts import draft

async def main(path: str, n: int) -> None:
    outbox = Outbox(path, gateway_id="gw-01", max_bytes=1 << 30, uplinks=["portfolio"])
    await outbox.__aenter__()
    for i in range(n):
        await outbox.append([draft(i=i)])  # acknowledged: on disk, in the WAL
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _write_and_kill(path: Path, n: int) -> None:
    """n alerts acknowledged by a process then killed with SIGKILL (its WAL stays)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(path), str(n)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert path.with_name(path.name + "-wal").stat().st_size > 0


def _pending(path: Path) -> int:
    async def count() -> int:
        async with Outbox(path, gateway_id="gw-01", max_bytes=1 << 30) as outbox:
            return (await outbox.stats()).pending

    return asyncio.run(count())


def _config(tmp_path: Path) -> tuple[Path, Path]:
    cfg = write_config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    db = tmp_path / "store" / "outbox.db"
    db.parent.mkdir()
    data["store"]["path"] = str(db)
    cfg.write_text(yaml.safe_dump(data))
    return cfg, db


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


COMMANDS = [("requeue", "--all"), ("maintenance", "--asset", "press-7"), ("run",)]


def _refused(cfg: Path, command: tuple[str, ...]) -> str:
    """The one line a command refused with (exit 1). `run` is a real process: one that
    opened the store would run on (killed at the time-out, a failure)."""
    if command[0] != "run":
        proc = cli(command[0], "-c", str(cfg), *command[1:])
        assert proc.returncode == 1, (command, proc)
        return one_line_error(proc)
    ran = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "-c", str(cfg)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 1, ran
    return [ln for ln in ran.stderr.splitlines() if "beside the store" in ln or "names" in ln][-1]


def test_a_wal_left_beside_a_store_moved_away_is_refused_not_deleted(tmp_path: Path) -> None:
    """`mv outbox.db outbox.db.bak` after a kill -9: the next start created an empty
    outbox.db and SQLite deleted the WAL beside it, with all 40 alerts acknowledged since
    the last checkpoint (outbox.db.bak had none of them). Now every command refuses, names
    both files, and says where the WAL belongs; put back, every alert is there."""
    cfg, db = _config(tmp_path)
    _write_and_kill(db, 40)
    bak = db.with_name("outbox.db.bak")
    db.rename(bak)
    before = _snapshot(db.parent)
    for command in COMMANDS:
        line = _refused(cfg, command)
        assert f"{db}-wal and {db}-shm beside the store do not belong to {db}" in line, line
        assert f"there is no database at {db}" in line
        assert f"The WAL belongs to {bak}: put that file back (mv {bak} {db})" in line
        # No file at the store's path to keep: the other way out is a new store.
        new_store = "or start with a new, empty store and move the WAL beside its own file"
        assert f"{new_store} (mv {db}-wal {bak}-wal" in line, line
        assert _snapshot(db.parent) == before, command
    bak.rename(db)
    assert _pending(db) == 40


def test_a_backup_moved_over_a_store_with_a_wal_is_refused(tmp_path: Path) -> None:
    """A copy taken as a backup, moved back over the store while a kill -9 had left the
    WAL: SQLite laid the WAL's pages over the older file, quick_check found it corrupt and
    the store was quarantined: none of the 70 alerts was delivered any more. Now refused,
    the backup and the WAL untouched; with the right file back, all 70 are pending."""
    cfg, db = _config(tmp_path)
    _write_and_kill(db, 30)
    shutil.copyfile(db, db.with_name("backup.db"))
    _write_and_kill(db, 40)
    current = db.with_name("current.db")
    db.rename(current)
    db.with_name("backup.db").rename(db)
    before = _snapshot(db.parent)
    for command in COMMANDS:
        line = _refused(cfg, command)
        assert f"{db} is not the file the agent last wrote" in line, line
        assert f"The WAL belongs to {current}" in line
        assert f"mv {db}-wal {current}-wal; mv {db}-shm {current}-shm" in line
        assert _snapshot(db.parent) == before, command
    db.rename(db.with_name("backup.db"))
    current.rename(db)
    assert _pending(db) == 70


def test_a_store_reopened_after_a_kill_keeps_its_wal(tmp_path: Path) -> None:
    """The agent's own WAL after a kill -9 (and after a restore with no WAL beside it) is
    never refused: the store file is the one it was written for."""
    _, db = _config(tmp_path)
    _write_and_kill(db, 10)
    assert _pending(db) == 10
    # A backup restored over a store stopped cleanly (no WAL): opened as the store.
    shutil.copyfile(db, tmp_path / "copy.db")
    os.replace(tmp_path / "copy.db", db)
    _write_and_kill(db, 5)
    assert _pending(db) == 15


_KILLED_OTHER_NAME = """
import os, signal, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("CREATE TABLE IF NOT EXISTS notes (text TEXT)")  # it sees no alerts table
conn.execute("INSERT INTO notes VALUES ('by the other name')")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_store_file_opened_by_a_second_name_is_refused(tmp_path: Path) -> None:
    """`ln outbox.db other.db`, then a process writes through other.db: SQLite kept a
    second WAL (other.db-wal) for the same database and each name's reader laid its own
    WAL over the other's pages: 30 acknowledged alerts vanished. Refused, naming it."""
    cfg, db = _config(tmp_path)
    _write_and_kill(db, 30)
    other = db.with_name("other.db")
    os.link(db, other)
    proc = subprocess.run([sys.executable, "-c", _KILLED_OTHER_NAME, str(other)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = _snapshot(db.parent)
    for command in COMMANDS:
        line = _refused(cfg, command)
        assert f"{db} has 2 names (hard links): {other}. SQLite opened it by {other}" in line
        assert "Nothing was changed. Remove the other name(s) with rm" in line
        assert _snapshot(db.parent) == before, command
    with pytest.raises(StoreError, match="has 2 names"):
        _pending(other)
    for name in ("other.db", "other.db-wal", "other.db-shm"):
        db.with_name(name).unlink(missing_ok=True)
    assert _pending(db) == 30


async def test_a_hard_link_snapshot_of_the_store_folder_does_not_stop_the_agent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A nightly `cp -al` snapshot of the state folder (rsnapshot style) gives the store
    file a second name nothing opens: the agent refused to start (no alert sent) until
    someone removed it. Now it starts, warns with what to do, and the commands run."""
    cfg, db = _config(tmp_path)
    await asyncio.to_thread(_write_and_kill, db, 10)
    (tmp_path / "snapshots").mkdir()
    daily = tmp_path / "snapshots" / "daily.0"
    cp = ["cp", "-al", str(db.parent), str(daily)]
    await asyncio.to_thread(subprocess.run, cp, check=True, timeout=60)
    async with running_agent(cfg):
        pass
    assert f"{db} has 2 names (hard links): in another folder" in caplog.text
    assert "That is no backup" in caplog.text
    proc = await asyncio.to_thread(cli, "requeue", "-c", str(cfg), "--all")
    assert "names" not in proc.stdout + proc.stderr.replace("has 2 names", ""), proc
    assert await asyncio.to_thread(_pending, db) == 10


_KILLED_SQLITE = """
import os, signal, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA page_size=1024")
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE parts (name TEXT)")
conn.execute("INSERT INTO parts VALUES ('bearing 6205')")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_wal_of_another_page_size_is_refused(tmp_path: Path) -> None:
    """Another database's WAL (1024-byte pages, left by a killed process) put beside the
    store, whose file is the one the agent wrote: its frames are not this database's."""
    cfg, db = _config(tmp_path)
    _write_and_kill(db, 5)
    other = tmp_path / "parts.db"
    proc = subprocess.run([sys.executable, "-c", _KILLED_SQLITE, str(other)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    os.replace(f"{other}-wal", f"{db}-wal")
    before = _snapshot(db.parent)
    line = _refused(cfg, ("requeue", "--all"))
    assert "the WAL's pages are 1024 bytes" in line and "are 4096" in line, line
    assert _snapshot(db.parent) == before


def test_a_store_folder_copied_whole_after_a_kill_keeps_its_wal(tmp_path: Path) -> None:
    """The store's folder copied whole after a kill -9 (`cp -a` to a new disk, rsync, a
    tar restored, a container committed): every file has a new inode, so the recorded
    inode no longer matched and every command refused the store's own WAL, advising to
    move it aside (its 40 alerts lost). The mark copied with it says so: all 40 stay."""
    cfg, db = _config(tmp_path)
    _write_and_kill(db, 40)
    new = tmp_path / "new-disk"
    subprocess.run(["cp", "-a", str(db.parent), str(new)], check=True, timeout=60)
    data = yaml.safe_load(cfg.read_text())
    data["store"]["path"] = str(new / "outbox.db")
    cfg.write_text(yaml.safe_dump(data))
    proc = cli("requeue", "-c", str(cfg), "--all")
    assert "beside the store" not in proc.stderr, proc.stderr
    assert _pending(new / "outbox.db") == 40
    # The mark is the new folder's own from then on: a backup moved over it is refused.
    _write_and_kill(new / "outbox.db", 5)
    shutil.copyfile(db, tmp_path / "old.db")
    os.replace(tmp_path / "old.db", new / "outbox.db")
    assert "is not the file the agent last wrote" in _refused(cfg, ("requeue", "--all"))


def test_a_mark_that_cannot_be_written_refuses_no_wal_later(tmp_path: Path) -> None:
    """The integrator starts a fresh store (the old one moved aside) and the new file's
    inode cannot be recorded (its .inode.tmp cannot be opened: here a folder; another
    user's file in /tmp, a full disk): the old file's mark stayed, and after the next
    kill -9 every command refused the new store's own WAL (7 alerts, an outage). Now the
    stale mark is removed with a warning: the 7 alerts are read back."""
    _, db = _config(tmp_path)
    _write_and_kill(db, 10)
    (tmp_path / "old").mkdir()
    for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):
        db.with_name(name).rename(tmp_path / "old" / name)
    db.with_name("outbox.db.inode.tmp").mkdir()
    _write_and_kill(db, 7)
    assert _pending(db) == 7


def test_a_store_an_earlier_release_made_in_a_quarantined_ones_place_keeps_its_wal(
    tmp_path: Path,
) -> None:
    """A release rolled back (before the .inode mark) found the store damaged, set it aside
    as outbox.db.corrupt-<stamp> (with its -wal/-shm) and made a fresh one, leaving the
    mark on the damaged file; a power cut, the release put back: every command refused the
    fresh store's own WAL, advising to put the damaged file back (6 alerts, no alerting).
    The mark names a file the agent set aside, so it is stale: the 6 alerts are read."""
    cfg, db = _config(tmp_path)
    _write_and_kill(db, 3)
    assert _pending(db) == 3  # closed: checkpointed, no WAL left
    mark = db.with_name("outbox.db.inode")
    kept = tmp_path / "mark-of-the-damaged-file"
    mark.rename(kept)  # the earlier release neither reads nor writes it
    db.rename(db.with_name("outbox.db.corrupt-20261126T155614Z"))
    _write_and_kill(db, 6)
    os.replace(kept, mark)  # as it was: the same file, naming the set-aside store
    proc = cli("requeue", "-c", str(cfg), "--all")
    assert "beside the store" not in proc.stderr, proc.stderr
    assert _pending(db) == 6


def test_a_quarantine_cut_between_its_renames_is_finished(tmp_path: Path) -> None:
    """A kill -9 (a power cut) while the agent set a damaged store aside, after the file's
    rename and before its WAL's: at the next start every command refused the WAL at the
    store's name, advising to put the damaged file back (no alerting until someone did).
    The WAL now follows its file, and a fresh store opens."""
    _, db = _config(tmp_path)
    _write_and_kill(db, 10)
    wal = db.with_name("outbox.db-wal").read_bytes()
    aside = db.with_name("outbox.db.corrupt-20261126T155614Z")
    db.rename(aside)  # the quarantine's first rename (agent.store._files.move_aside)
    assert _pending(db) == 0
    assert aside.with_name(aside.name + "-wal").read_bytes() == wal


def test_a_mark_that_can_be_neither_written_nor_removed_stops_no_start(tmp_path: Path) -> None:
    """A <store>.inode the agent can neither replace nor remove (here a folder; root's
    file in a sticky /tmp for an agent run as its own user): the error of its removal
    escaped, and the store did not open (no alerting). Now a warning: the agent runs."""
    _, db = _config(tmp_path)
    (db.with_name("outbox.db.inode") / "x").mkdir(parents=True)
    _write_and_kill(db, 4)
    assert _pending(db) == 4
