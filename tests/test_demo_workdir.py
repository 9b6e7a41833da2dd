"""`edge-agent demo --workdir DIR` with DIR relative to where it is typed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.network
def test_demo_in_a_relative_workdir_runs_and_keeps_its_files_there(tmp_path: Path) -> None:
    """The store and control socket in demo.yaml come from the work folder; given as
    `--workdir demo-run` they were relative paths, which the configuration refuses."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "demo", "--workdir", "demo-run", "--duration", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "internal error" not in proc.stderr
    assert (tmp_path / "demo-run" / "outbox.db").is_file()
