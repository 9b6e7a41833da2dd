"""Operator commands run by a local user who is not the service, on the install notes'
layout: the store in the service's private state folder (DynamicUser= puts it under
/var/lib/private, mode 0700) and the uplink token in /etc/edge-agent/credentials (0700,
root). Real files, the real CLI, as another uid (setpriv)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._reload_agent import OUTSIDER, REVEAL_PYENV
from tests.conftest import REPO, free_port

SERVICE = OUTSIDER + 1  # the service's dynamic uid: owns the state folder

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare"),
    reason="needs root, setpriv and unshare to act as other local users",
)


@pytest.fixture
def site() -> Iterator[Path]:
    """A directory every uid may enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="edge-operator-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _write(site: Path, *, token_file: bool) -> Path:
    state = site / "state"  # StateDirectory= of a DynamicUser= service: 0700, not ours
    state.mkdir(mode=0o700)
    os.chown(state, SERVICE, SERVICE)
    uplink = ""
    if token_file:
        creds = site / "credentials"  # the notes: install -d -m 0700 (root)
        creds.mkdir(mode=0o700)
        (creds / "portfolio-token").write_text("s3cret\n")
        (creds / "portfolio-token").chmod(0o600)
        uplink = (
            "uplinks:\n"
            "  - http:\n"
            "      url: https://portfolio.example/v1/alerts\n"
            f'      token_file: "${{CREDENTIALS_DIRECTORY:-{creds}}}/portfolio-token"\n'
        )
    config = site / "config.yaml"
    config.write_text(
        "gateway: {id: gw-01}\n"
        "assets:\n"
        "  - id: press-7\n"
        "    machine: {standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}\n"
        "sensors:\n"
        "  - {id: m1-de, asset: press-7, modbus: {host: 10.0.0.21}}\n"
        f"{uplink}"
        f"store: {{path: {state}/outbox.db}}\n"
        f"health: {{port: {free_port()}}}\n"
        f"control: {{socket: {site}/control.sock}}\n"
    )
    config.chmod(0o644)
    return config


def _as_operator(*args: str) -> subprocess.CompletedProcess[str]:
    user = ["setpriv", f"--reuid={OUTSIDER}", f"--regid={OUTSIDER}", "--clear-groups"]
    return subprocess.run(
        ["unshare", "--mount", "--fork", "bash", "-c", REVEAL_PYENV + 'exec "$@"', "bash",
         *user, sys.executable, "-m", "agent.cli", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/"},
    )  # fmt: skip


def test_commands_say_the_store_is_not_readable_instead_of_an_internal_error(site: Path) -> None:
    # Before: every command, `check` included, ended in "internal error:
    # PermissionError(13, 'Permission denied')" (exit 70), naming no file.
    config = _write(site, token_file=False)
    check = _as_operator("check", "-c", str(config))
    assert check.returncode == 0, check.stderr
    status = _as_operator("status", "-c", str(config))
    assert status.returncode == 1 and "agent NOT reachable" in status.stdout, status
    for args in (["alerts"], ["requeue", "--all"]):
        ran = _as_operator(*args, "-c", str(config))
        assert "internal error" not in ran.stderr, ran.stderr
        assert ran.returncode == 1, ran
        assert f"cannot read the store {site}/state/outbox.db" in ran.stderr, ran.stderr
