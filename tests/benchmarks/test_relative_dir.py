"""The benchmarks that build the agent's configuration take --dir as a user gives it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SMALL = {
    "outage_memory.py": ["--count", "50", "--no-tracemalloc"],
    "cmms_drain.py": ["--count", "5", "--lost", "1"],
}


@pytest.mark.parametrize("bench", sorted(SMALL))
def test_a_relative_dir_is_taken(tmp_path: Path, bench: str) -> None:
    """Before: `--dir .` (or any relative folder) ended in a pydantic traceback, 'store.path
    ... a relative path names another file for each folder a command runs in', since the
    configuration requires an absolute store path."""
    ran = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / bench), "--dir", ".", *SMALL[bench]],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert isinstance(json.loads(ran.stdout), dict)
    assert list(tmp_path.iterdir()) == []  # its temporary folder is gone again
