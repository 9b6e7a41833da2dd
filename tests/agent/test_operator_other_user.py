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
import time
import urllib.error
import urllib.request
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


def _write(site: Path, *, token_file: bool, group: str | None = None) -> Path:
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
        f"control: {{socket: {site}/control.sock" + (f", group: {group}}}\n" if group else "}\n")
    )
    config.chmod(0o644)
    return config


def _as_operator(*args: str, groups: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as OUTSIDER, in no group but `groups` (setpriv --groups: gid,gid)."""
    member = [f"--groups={groups}"] if groups else ["--clear-groups"]
    user = ["setpriv", f"--reuid={OUTSIDER}", f"--regid={OUTSIDER}", *member]
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


def _healthy(config: Path, agent: subprocess.Popen[bytes]) -> None:
    port = next(ln for ln in config.read_text().splitlines() if ln.startswith("health:"))
    url = f"http://127.0.0.1:{port.split()[-1].rstrip('}')}/healthz"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and agent.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:  # 503: degraded (nobody at 10.0.0.21), but up
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the agent did not answer {url}")


def test_operator_commands_do_not_need_the_service_credentials(site: Path) -> None:
    # Before: with the notes' token_file under /etc/edge-agent/credentials (0700 root),
    # an operator's `status` exited 2 with "token file ... cannot be read (Permission
    # denied); let the agent's user read it": the running agent was never asked, and the
    # advice was to loosen the secret's permissions.
    config = _write(site, token_file=True)
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "-c", str(config)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _healthy(config, agent)
        status = _as_operator("status", "-c", str(config))
        maintenance = _as_operator("maintenance", "-c", str(config), "--asset", "press-7")
        alerts = _as_operator("alerts", "-c", str(config))
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    assert status.returncode == 0 and "gw-01: agent running" in status.stdout, status
    for ran in (status, maintenance, alerts):
        assert "token file" not in ran.stdout + ran.stderr, ran
    # What this user may not do, it is told why (the control socket is 0660).
    assert maintenance.returncode == 1 and "ermission denied" in maintenance.stderr, maintenance
    assert alerts.returncode == 1 and "cannot read the store" in alerts.stderr, alerts


def _run_agent(config: Path) -> subprocess.Popen[bytes]:
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "-c", str(config)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _healthy(config, agent)
    return agent


@pytest.mark.skipif(
    shutil.which("getent") is None
    or subprocess.run(["getent", "group", "nogroup"], capture_output=True).returncode != 0,
    reason="needs the group nogroup to stand for control.group",
)
def test_an_operator_in_the_control_group_records_maintenance_through_the_agent(
    site: Path,
) -> None:
    # Before: "maintenance not recorded: cannot write in the store's folder .../state
    # (Permission denied): store.path must be in a folder the agent's user can write":
    # the operator the socket's group lets in could not record a repair at all, as the
    # store lock (the service's folder) was tried first and its refusal taken as final.
    config = _write(site, token_file=False, group="nogroup")
    agent = _run_agent(config)
    try:
        member = _as_operator("maintenance", "-c", str(config), "--asset", "press-7",
                              groups="65534")  # fmt: skip
        outsider = _as_operator("maintenance", "-c", str(config), "--asset", "press-7")
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    assert member.returncode == 0, member
    assert "maintenance on press-7 recorded by the running agent as" in member.stdout, member
    # Outside the group: both ways are closed, and it is told both.
    assert outsider.returncode == 1, outsider
    assert "permission denied on" in outsider.stderr and "control.group" in outsider.stderr
    assert "nor may this user write the store itself" in outsider.stderr, outsider.stderr
    assert "start the agent" not in outsider.stderr  # it runs: only the group is missing


@pytest.mark.skipif(
    shutil.which("getent") is None
    or subprocess.run(["getent", "group", "nogroup"], capture_output=True).returncode != 0,
    reason="needs the group nogroup to stand for control.group",
)
def test_with_no_agent_an_operator_who_may_not_write_the_store_is_told_what_to_do(
    site: Path,
) -> None:
    # Before: "cannot reach the running agent: no control socket at ...; nor may this user
    # write the store itself: ... store.path must be in a folder the agent's user can
    # write": an agent said to run that did not, and the service's advice, to an operator.
    config = _write(site, token_file=False, group="nogroup")
    member = _as_operator("maintenance", "-c", str(config), "--asset", "press-7",
                          groups="65534")  # fmt: skip
    assert member.returncode == 1, member
    assert member.stderr == (
        f"maintenance not recorded: cannot reach a running agent: no control socket at "
        f"{site}/control.sock; nor may this user write the store itself ({site}/state: "
        "Permission denied): start the agent (systemctl start edge-agent) and retry, or run "
        "this as root\n"
    ), member.stderr
    assert not (site / "state" / "outbox.db").exists()  # nothing recorded anywhere
