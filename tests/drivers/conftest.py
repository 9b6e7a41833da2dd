"""Fixtures for the Modbus driver tests: a socat pseudo-terminal pair as a serial line."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.serial_pair import pty_pair


@pytest.fixture
def serial_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two connected pseudo-terminals (agent side, device side), like a null-modem cable."""
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (.ci/run installs it)")
    with pty_pair(tmp_path) as pair:
        yield pair
