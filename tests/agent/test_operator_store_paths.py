"""Operator commands pointed at the wrong thing: another application's file, a directory,
a store another process holds locked. Real files, real SQLite locks, the real CLI."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import yaml

from agent.store import Outbox, StoreError
from tests.agent.test_operator_commands import cli, one_line_error, write_config


def _point_store_at(cfg: Path, path: Path) -> Path:
    data = yaml.safe_load(cfg.read_text())
    data["store"]["path"] = str(path)
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _other_apps_file(path: Path, kind: str) -> None:
    if kind == "text":
        path.write_bytes(b"part,qty\nbearing 6205,4\n" * 50)
        return
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE parts (name TEXT, qty INTEGER)")
        conn.execute("INSERT INTO parts VALUES ('bearing 6205', 4)")


@pytest.mark.parametrize("kind", ["text", "sqlite"])
@pytest.mark.parametrize("command", ["maintenance", "requeue"])
def test_a_store_path_naming_another_apps_file_is_refused_untouched(
    tmp_path: Path, kind: str, command: str
) -> None:
    # With the agent stopped, `maintenance` moved a text file aside as "corrupt" (or added
    # its tables into an SQLite file) and created a store in its place.
    other = tmp_path / "inventory.db"
    _other_apps_file(other, kind)
    before = other.read_bytes()
    cfg = _point_store_at(write_config(tmp_path), other)
    args = ["--asset", "press-7"] if command == "maintenance" else ["--all"]
    proc = cli(command, "-c", str(cfg), *args)
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert f"{other} is not an edge-agent store" in line
    assert "left untouched" in line and "store.path" in line
    assert other.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.yaml", "inventory.db"]


def test_read_commands_say_an_sqlite_file_is_not_a_store(tmp_path: Path) -> None:
    other = tmp_path / "inventory.db"
    _other_apps_file(other, "sqlite")
    cfg = _point_store_at(write_config(tmp_path), other)
    proc = cli("alerts", "-c", str(cfg))
    assert proc.returncode == 1
    assert "is not an edge-agent store" in one_line_error(proc)


@pytest.mark.parametrize("command", ["check", "status", "alerts", "maintenance"])
def test_a_store_path_naming_a_directory_is_a_configuration_error(
    tmp_path: Path, command: str
) -> None:
    # It was "disk I/O error" (status, alerts) and passed `edge-agent check`.
    folder = tmp_path / "state"
    folder.mkdir()
    cfg = _point_store_at(write_config(tmp_path), folder)
    args = ["--asset", "press-7"] if command == "maintenance" else []
    proc = cli(command, "-c", str(cfg), *args)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert f"store.path: got '{folder}'" in line
    assert f"is a directory: name the database file inside it (e.g. {folder}/outbox.db)" in line
    assert list(folder.iterdir()) == []


async def test_the_store_refuses_a_directory_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory, not a file"):
        async with Outbox(tmp_path, gateway_id="gw", max_bytes=1 << 30):
            pass


def test_read_commands_fail_fast_on_a_store_another_process_holds(tmp_path: Path) -> None:
    # An exclusive lock held by another process (an sqlite3 shell, a backup tool): status
    # waited 10 s (two 5 s busy timeouts), alerts 5 s, then said "database is locked".
    cfg = write_config(tmp_path)
    assert cli("maintenance", "-c", str(cfg), "--asset", "press-7").returncode == 0
    holder = sqlite3.connect(tmp_path / "o.db", isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("INSERT INTO meta (key, value) VALUES ('held', 1)")
        for args in (["status"], ["alerts"]):
            start = time.monotonic()
            proc = cli(*args, "-c", str(cfg))
            took = time.monotonic() - start
            assert proc.returncode == 1
            text = proc.stdout + proc.stderr
            assert "the store is busy" in text and "retry in a moment" in text, text
            assert took < 4.5, f"{args[0]} took {took:.1f} s"
    finally:
        holder.close()


def test_a_failed_open_leaves_no_thread_error_behind(tmp_path: Path) -> None:
    # The writer thread settled two futures after a failed open: the second could find the
    # CLI's event loop closed and print "RuntimeError: Event loop is closed" (9 in 50).
    db = tmp_path / "o.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA user_version = 9")  # a newer agent's store: opening fails
    errors: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda a: errors.append(a.exc_value)

    async def open_once() -> None:
        with contextlib.suppress(StoreError):
            async with Outbox(db, gateway_id="gw", max_bytes=1 << 30):
                pass

    try:
        for _ in range(50):
            asyncio.run(open_once())
    finally:
        threading.excepthook = previous
    assert errors == []


def test_run_refuses_another_apps_sqlite_file_with_no_lock_file_beside_it(
    tmp_path: Path,
) -> None:
    # `run` took the store lock before looking at the file: it refused, but left
    # inventory.db.lock behind in the other application's folder.
    other = tmp_path / "inventory.db"
    _other_apps_file(other, "sqlite")
    before = other.read_bytes()
    cfg = _point_store_at(write_config(tmp_path), other)
    proc = cli("run", "-c", str(cfg))
    assert proc.returncode == 1
    assert f"{other} is not an edge-agent store" in proc.stderr
    assert other.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.yaml", "inventory.db"]
