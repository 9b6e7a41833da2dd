"""`edge-agent run` with store.path in a folder it cannot write: the shipped unit's
ProtectSystem=strict leaves only /var/lib/edge-agent writable, so a store.path elsewhere
is a read-only folder. A real read-only bind mount, the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="a read-only bind mount needs root and unshare",
)
def test_a_store_folder_the_sandbox_keeps_read_only_is_one_clear_line(tmp_path: Path) -> None:
    # Before: a JSON log line "agent crashed" with a traceback ending in OSError, and under
    # systemd a restart every 5 s with nothing saying store.path was the cause.
    folder = tmp_path / "data"
    folder.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        "gateway: {id: gw-01}\n"
        "assets:\n"
        "  - id: press-7\n"
        "    machine: {standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}\n"
        "sensors:\n"
        "  - {id: m1-de, asset: press-7, modbus: {host: 127.0.0.1, port: 9}}\n"
        f"store: {{path: {folder}/outbox.db}}\n"
        f"health: {{port: {free_port()}}}\n"
        f"control: {{socket: {tmp_path}/c.sock}}\n"
    )
    read_only = f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && "
    proc = subprocess.run(
        ["unshare", "--mount", "bash", "-c", read_only + 'exec "$@"', "bash",
         sys.executable, "-m", "agent.cli", "run", "-c", str(config)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr and "agent crashed" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines() == [
        f"edge-agent: cannot write in the store's folder {folder} (Read-only file system): "
        "store.path must be in a folder the agent's user can write; under the shipped "
        "systemd unit (ProtectSystem=strict) that is /var/lib/edge-agent only"
    ]
