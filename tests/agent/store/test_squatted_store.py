"""store.path in a folder every local user can write (/tmp): another user's lock file or
store there is refused with what to do, and `check` warns about such a folder."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from agent.store import Outbox, StoreFault, lock_path
from agent.store._lock import _closed_to, _code_dirs
from tests._reload_agent import OUTSIDER, REVEAL_PYENV
from tests.agent.store._drafts import draft
from tests.agent.store._tamper import damage_header, watched_outbox
from tests.agent.test_operator_commands import Ran, cli, one_line_error, write_config
from tests.conftest import REPO

OTHER = 4242  # a local user who is neither the agent's nor root
AGENT_UID = OUTSIDER + 2  # the agent's own user (a dynamic uid)


def _shared_config(tmp_path: Path) -> tuple[Path, Path]:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp
    cfg = write_config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["store"]["path"] = str(shared / "outbox.db")
    cfg.write_text(yaml.safe_dump(data))
    return cfg, shared / "outbox.db"


def _refused(proc: Ran, squatted: Path) -> None:
    line = one_line_error(proc)
    assert proc.returncode == 1, proc
    assert f"{squatted} belongs to another user (uid {OTHER})" in line, line
    assert "may be written by every local user (mode 1777)" in line
    assert "Set store.path to a folder only the agent's user can write" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
def test_a_lock_file_another_user_holds_in_tmp_is_refused_with_what_to_do(
    tmp_path: Path,
) -> None:
    """Another local user created `<store>.lock` in the shared folder and held it: the
    agent refused to start ("another edge-agent is running") and `maintenance` took it for
    a running agent and went to its control socket. Both now name the file, its owner and
    the fix, and leave it as it is."""
    cfg, db = _shared_config(tmp_path)
    lock = db.with_name("outbox.db.lock")
    lock.touch()
    os.chown(lock, OTHER, OTHER)
    with lock.open("a") as held:  # the other user's process holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _refused(cli("maintenance", "-c", str(cfg), "--asset", "press-7"), lock)
    assert lock.stat().st_uid == OTHER
    assert sorted(p.name for p in db.parent.iterdir()) == ["outbox.db.lock"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
def test_a_store_file_another_user_made_in_tmp_is_refused(tmp_path: Path) -> None:
    """An empty `outbox.db` another user left there (mode 0666) was opened as the store:
    the agent's alerts went into a file that user owns and reads."""
    cfg, db = _shared_config(tmp_path)
    db.touch()
    os.chown(db, OTHER, OTHER)
    db.chmod(0o666)
    _refused(cli("maintenance", "-c", str(cfg), "--asset", "press-7"), db)
    _refused(cli("requeue", "-c", str(cfg), "--all"), db)
    assert db.stat().st_size == 0
    assert sorted(p.name for p in db.parent.iterdir()) == ["outbox.db"]


def test_check_warns_about_a_store_in_a_folder_every_user_can_write(tmp_path: Path) -> None:
    cfg, db = _shared_config(tmp_path)
    proc = cli("check", "-c", str(cfg))
    assert proc.returncode == 0, proc
    assert (
        f"  warning: store.path is in {db.parent}, a folder every local user may write (mode 1777)"
    ) in proc.stdout
    (tmp_path / "own").mkdir()
    private = cli("check", "-c", str(write_config(tmp_path / "own")))
    assert "every local user" not in private.stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare"),
    reason="needs root, setpriv and unshare to run the agent as its own user",
)
def test_root_records_maintenance_through_an_agent_whose_store_is_in_tmp() -> None:
    """The agent runs as its own user with its store in a folder every user can write
    (check warns about it): root's `maintenance` took the agent's own files for another
    user's squat and refused to record the repair, though the running agent, whose files
    they are, records it through its control socket. Now it does."""
    site = Path(tempfile.mkdtemp(prefix="edge-squat-", dir="/tmp"))
    try:
        site.chmod(0o755)
        shared = site / "shared"
        shared.mkdir()
        shared.chmod(0o1777)
        cfg = write_config(site)
        data = yaml.safe_load(cfg.read_text())
        data["store"]["path"] = str(shared / "outbox.db")
        data["control"]["socket"] = str(shared / "c.sock")
        cfg.write_text(yaml.safe_dump(data))
        cfg.chmod(0o644)
        user = ["setpriv", f"--reuid={AGENT_UID}", f"--regid={AGENT_UID}", "--clear-groups"]
        agent = subprocess.Popen(
            ["unshare", "--mount", "--fork", "--kill-child=SIGTERM", "bash", "-c",
             REVEAL_PYENV + 'exec "$@"', "bash", *user, sys.executable, "-m", "agent.cli",
             "run", "-c", str(cfg)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True,  # unshare --fork ignores SIGTERM: sent to its group
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not (shared / "c.sock").exists():
                assert agent.poll() is None and time.monotonic() < deadline, "no agent"
                time.sleep(0.05)
            assert (shared / "outbox.db").stat().st_uid == AGENT_UID
            done = cli("maintenance", "-c", str(cfg), "--asset", "press-7")
        finally:
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=30)
        assert done.returncode == 0, done
        assert "recorded by the running agent" in done.stdout, done
    finally:
        shutil.rmtree(site, ignore_errors=True)


def _agents_store_in_tmp(site: Path) -> tuple[Path, Path]:
    """A store with one dead letter in a 1777 folder, its files the agent's (uid OTHER)."""
    shared = site / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    cfg = write_config(site)
    data = yaml.safe_load(cfg.read_text())
    db = shared / "outbox.db"
    data["store"]["path"] = str(db)
    data["uplinks"] = [{"name": "up", "http": {"url": "http://127.0.0.1:9/v1/alerts"}}]
    cfg.write_text(yaml.safe_dump(data))

    async def dead_letter() -> None:
        async with Outbox(db, gateway_id="gw-t", max_bytes=1 << 30, uplinks=["up"]) as ob:
            await ob.append([draft(i=0)])
            await ob.dead_letter("up", await ob.next_batch("up", 10), "HTTP 401")

    asyncio.run(dead_letter())
    lock_path(db).touch()
    for f in shared.iterdir():
        os.chown(f, OTHER, OTHER)
    return cfg, db


def _requeue_as_root(
    cfg: Path, *, reveal_python: bool, program: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`edge-agent requeue --all` as root, a process of its own (it may give up root).
    reveal_python: this machine's Python (under /root, 0700) readable by every user, as
    a gateway's /usr/bin/python3 is. program: how the command is started (default
    python -m agent.cli)."""
    cmd = [*(program or [sys.executable, "-m", "agent.cli"]), "requeue", "-c", str(cfg), "--all"]
    if reveal_python:
        cmd = ["unshare", "--mount", "--fork", "bash", "-c", REVEAL_PYENV + 'exec "$@"', "bash",
               *cmd]  # fmt: skip
    return subprocess.run(
        cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="needs root and unshare (to give files to another uid and read Python as it)",
)
def test_root_requeues_an_agents_store_in_tmp_as_the_agents_user() -> None:
    """`sudo edge-agent requeue --all` on an agent's store in /tmp was refused as another
    user's squat, with advice meant for the agent (move store.path). Run on, as root, it
    would have left a root-owned `.issued` the agent could neither read nor replace (the
    folder's sticky bit). Now root requeues as the store's owner: every file stays the
    agent's."""
    site = Path(tempfile.mkdtemp(prefix="edge-requeue-", dir="/tmp"))
    try:
        site.chmod(0o755)
        cfg, db = _agents_store_in_tmp(site)
        ran = _requeue_as_root(cfg, reveal_python=True)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.startswith("requeued gw-t-"), ran.stdout
        assert f"as root: requeuing as the store's owner (uid {OTHER})" in ran.stderr
        owners = {f.name: f.stat().st_uid for f in db.parent.iterdir()}
        assert owners == dict.fromkeys(owners, OTHER), owners
        assert "outbox.db.issued" in owners
    finally:
        shutil.rmtree(site, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
@pytest.mark.skipif(
    _closed_to(OTHER, OTHER, _code_dirs()) is None,
    reason="this Python is readable by every user: root's requeue acts as the owner here",
)
def test_root_is_told_the_command_to_run_as_the_stores_owner() -> None:
    """Where the store's owner could not read the Python root runs (it would fail at its
    first import once root is given up), root is told the very command to run as the
    owner, and nothing is changed."""
    site = Path(tempfile.mkdtemp(prefix="edge-requeue-", dir="/tmp"))
    try:
        site.chmod(0o755)
        cfg, db = _agents_store_in_tmp(site)
        before = {f.name: f.read_bytes() for f in db.parent.iterdir()}
        ran = _requeue_as_root(cfg, reveal_python=False)
        assert ran.returncode == 1, ran
        assert f"{db} belongs to uid {OTHER}, who cannot read" in ran.stderr
        assert f"sudo -u '#{OTHER}' edge-agent requeue -c {cfg} --all" in ran.stderr
        assert {f.name: f.read_bytes() for f in db.parent.iterdir()} == before
    finally:
        shutil.rmtree(site, ignore_errors=True)


def test_links_put_at_the_stores_temporary_names_in_tmp_are_never_written_through(
    tmp_path: Path,
) -> None:
    """Another user links `<store>.inode.tmp` and `<store>.issued.tmp` to root's files in
    /tmp before an agent run as root creates its store: root truncated both targets and
    wrote the store's marks into them (where fs.protected_symlinks is 0, as here, or by a
    hard link where fs.protected_hardlinks is). Now the links are removed unopened, the
    targets are as they were and the store's marks are its own files. (The links are
    the test's own: a link of another user is followed only where fs.protected_symlinks
    is 0, the code path is the same.)"""
    _, db = _shared_config(tmp_path)
    victims = {}
    for suffix in (".inode.tmp", ".issued.tmp"):
        victim = tmp_path / f"root-file{suffix}"
        victim.write_text("root's data\n")
        victims[suffix] = victim
        link = db.with_name(db.name + suffix)
        link.symlink_to(victim)

    async def write() -> int:
        async with Outbox(db, gateway_id="gw-01", max_bytes=1 << 30) as outbox:
            await outbox.append([draft(i=1)])
            return (await outbox.stats()).pending

    assert asyncio.run(write()) == 1
    for victim in victims.values():
        assert victim.read_text() == "root's data\n"
    for suffix in (".inode", ".issued"):
        mark = db.with_name(db.name + suffix)
        assert mark.is_file() and not mark.is_symlink(), mark
        assert mark.read_text().startswith("{")


def test_a_fifo_another_user_put_at_the_stores_wal_in_tmp_is_refused_not_waited_on(
    tmp_path: Path,
) -> None:
    """Another user makes a FIFO at `<store>-wal` in /tmp while the agent is stopped:
    the WAL check read it before the files' owners were checked, and `run` hung at start
    for ever, saying nothing (no alerting, no error). Now it is refused as theirs."""
    cfg, db = _shared_config(tmp_path)

    async def create() -> None:
        async with Outbox(db, gateway_id="gw-01", max_bytes=1 << 30):
            pass

    asyncio.run(create())
    fifo = db.with_name(db.name + "-wal")
    os.mkfifo(fifo, 0o666)
    os.chown(fifo, OTHER, OTHER)
    ran = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "-c", str(cfg)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 1, ran
    assert f"{fifo} belongs to another user (uid {OTHER})" in ran.stderr, ran.stderr


@pytest.mark.parametrize("suffix", ["-wal", ""])
@pytest.mark.parametrize("command", [("requeue", "--all"), ("maintenance", "--asset", "press-7")])
def test_operator_commands_do_not_wait_on_a_fifo_another_user_put_in_tmp(
    tmp_path: Path, command: tuple[str, ...], suffix: str
) -> None:
    """A FIFO of another user at `<store>-wal` (the store stopped), or a FIFO at the
    store's own name (store.path naming a pipe, no store yet): `requeue` and
    `maintenance` read it in their check before the lock and waited for ever. Now the
    first is refused as another user's file, the second as not a regular file."""
    cfg, db = _shared_config(tmp_path)

    async def create() -> None:
        async with Outbox(db, gateway_id="gw-01", max_bytes=1 << 30):
            pass

    if suffix:
        asyncio.run(create())
    fifo = db.with_name(db.name + suffix)
    os.mkfifo(fifo, 0o666)
    if suffix:
        os.chown(fifo, OTHER, OTHER)
    ran = subprocess.run(
        [sys.executable, "-m", "agent.cli", command[0], "-c", str(cfg), *command[1:]],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 1, ran
    assert "Traceback" not in ran.stderr, ran.stderr
    if suffix:
        assert f"{fifo} belongs to another user (uid {OTHER})" in ran.stderr, ran.stderr
    else:
        assert f"{db} is not an edge-agent store: not a regular file" in ran.stderr


@pytest.mark.parametrize("command", [("requeue", "--all"), ("maintenance", "--asset", "press-7")])
def test_root_does_not_take_another_users_wal_in_tmp_for_the_stores(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """Another user puts a WAL of their own making (frames for this database) beside a
    store of root's in /tmp while no agent runs. The commands' check before the lock
    opened the store with SQLite, which, run as root, gave that WAL to the store's owner
    and read its frames: the lock's check then found nothing of another user's, and
    `maintenance` wrote into the store with their pages in it. Now refused first, naming
    their file, which is left theirs."""
    cfg, db = _shared_config(tmp_path)

    async def create() -> None:
        async with Outbox(db, gateway_id="gw-01", max_bytes=1 << 30):
            pass

    asyncio.run(create())
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    shutil.copyfile(db, theirs / "outbox.db")
    code = (
        "import sqlite3, os, signal, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute(\"INSERT INTO meta (key, value) VALUES ('planted', 'by another user')\")\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(theirs / "outbox.db")], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    wal = db.with_name(db.name + "-wal")
    shutil.copyfile(theirs / "outbox.db-wal", wal)
    os.chown(wal, OTHER, OTHER)
    ran = subprocess.run(
        [sys.executable, "-m", "agent.cli", command[0], "-c", str(cfg), *command[1:]],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 1, ran
    assert f"{wal} belongs to another user (uid {OTHER})" in ran.stderr, ran.stderr
    assert wal.stat().st_uid == OTHER


async def test_a_link_at_the_recovery_copys_name_in_tmp_is_not_written_through(
    tmp_path: Path,
) -> None:
    """A link put at `<store>.recovering` in /tmp, pointing where no file is yet: the
    agent's recovery of its damaged store (run as root) created the file it named, wrote
    the copy of every alert into it, and moved the link into the store's place (the
    store then lived where the link pointed). Now the link is removed unused. (The link
    is the test's own: another user's is followed where fs.protected_symlinks is 0.)"""
    _, db = _shared_config(tmp_path)
    target = tmp_path / "chosen-by-another-user"
    faults: list[StoreFault] = []
    async with watched_outbox(db, faults) as ob:
        await ob.append([draft(i=i) for i in range(3)])
        db.with_name(db.name + ".recovering").symlink_to(target)
        await asyncio.to_thread(damage_header, db)
        await ob.append([draft(i=3)])
        assert [f.kind for f in faults] == ["corrupt"]
        assert (await ob.stats()).pending == 4
    assert not target.exists()
    assert db.is_file() and not db.is_symlink()


def test_another_users_recovery_copy_in_tmp_is_refused(tmp_path: Path) -> None:
    """Another user's `<store>.recovering` (their database, marked complete) was taken
    at the next start for the agent's interrupted recovery and made the store. Now
    `run` refuses it as theirs, untouched (here an empty file: its owner is enough)."""
    cfg, db = _shared_config(tmp_path)
    theirs = db.with_name(db.name + ".recovering")
    theirs.write_bytes(b"")
    os.chown(theirs, OTHER, OTHER)
    ran = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "-c", str(cfg)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 1, ran
    assert f"{theirs} belongs to another user (uid {OTHER})" in ran.stderr, ran.stderr
    assert theirs.stat().st_uid == OTHER and not db.exists()


EDGE_AGENT_SCRIPT = Path(sys.executable).parent / "edge-agent"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
@pytest.mark.skipif(
    _closed_to(OTHER, OTHER, _code_dirs()) is None,
    reason="this Python is readable by every user: root's requeue acts as the owner here",
)
@pytest.mark.skipif(not EDGE_AGENT_SCRIPT.exists(), reason="no installed edge-agent script")
def test_the_command_to_run_as_the_owner_names_the_installed_script_by_its_path() -> None:
    """Run as /opt/edge-agent/bin/edge-agent (the install notes put it there, off the
    PATH), the advice said `sudo -u USER edge-agent requeue ...`: sudo searches its own
    secure_path and answered "command not found". It now names the script by its path."""
    site = Path(tempfile.mkdtemp(prefix="edge-requeue-", dir="/tmp"))
    try:
        site.chmod(0o755)
        cfg, _db = _agents_store_in_tmp(site)
        ran = _requeue_as_root(cfg, reveal_python=False, program=[str(EDGE_AGENT_SCRIPT)])
        assert ran.returncode == 1, ran
        assert f"sudo -u '#{OTHER}' {EDGE_AGENT_SCRIPT} requeue -c {cfg} --all" in ran.stderr
    finally:
        shutil.rmtree(site, ignore_errors=True)
