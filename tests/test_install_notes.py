"""systemd/README.md's install commands, run in a throwaway root (tools/check_install_notes.py).

systemd does not run here: the tool plays its part (a dynamic uid without groups, the
credentials directory, the state and runtime directories, LimitNOFILE, a notify socket)
and checks what the notes produced. CI also runs the tool with the notes' own venv and pip
install; here it reuses this checkout's virtualenv to stay fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.network]

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare"),
    reason="installing as the notes do needs root, and setpriv/unshare to act as the service",
)
def test_the_install_notes_produce_a_running_hardened_service() -> None:
    proc = subprocess.run(
        [sys.executable, "tools/check_install_notes.py", "--venv", sys.prefix, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["failures"] == [], proc.stdout[-4000:] + proc.stderr
    # What was left out needs a running systemd (or is the venv this test reuses).
    assert all(
        cmd.startswith(("cd ", "python3 -m venv", "/opt/edge-agent/bin/pip", "systemctl"))
        for cmd in report["skipped"]
    ), report["skipped"]
    assert report["modes"]["config"] == "0644 0:0"  # readable by the dynamic user
    assert report["modes"]["revive_timer"] == "0644 0:0"  # installed with the unit
    assert report["check_as_service_user"] == [0, ""]
    # STATUS= (the health endpoint's state, cleared at start) may come first: systemd may
    # keep a previous run's text, so the agent clears it; what counts is READY, then pings.
    said = [m for m in report["service"]["notify"] if not m.startswith("STATUS=")]
    assert said[:2] == ["READY=1", "WATCHDOG=1"]
    # SIGHUP and `edge-agent reload` re-read the file; it did not change.
    assert report["service"]["reloaded_by_sighup"]
    code, said = report["service"]["reload"]
    assert code == 0 and "nothing changed" in said, said
    # systemctl reload (the unit's ExecReload=, as the dynamic uid) says the outcome: done...
    code, said = report["service"]["exec_reload"]
    assert code == 0 and "nothing changed" in said, said
    assert report["service"]["exec_reload_by_service_uid"]
    # ...or refused, with the problem at FILE:LINE:COL (systemctl reload then fails).
    code, said, where = report["service"]["exec_reload_broken"]
    assert code == 2 and f"{where} sensors[0].poll_intervall_s: unknown key" in said, said
    assert said.startswith("reload refused, nothing changed: "), said
    assert "IPAddressAllow=10.0.0.21" in report["dropin"]
    assert "LoadCredential=portfolio-token:" in report["dropin"]
    if shutil.which("systemd-analyze"):
        assert report["exposure"] <= 1.5
        assert report["verify"] == [0, ""]  # the unit and its revive timer, as installed
