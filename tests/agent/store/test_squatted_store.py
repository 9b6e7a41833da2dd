"""store.path in a folder every local user can write (/tmp): another user's lock file or
store there is refused with what to do, and `check` warns about such a folder."""

from __future__ import annotations

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

from tests._reload_agent import OUTSIDER, REVEAL_PYENV
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
