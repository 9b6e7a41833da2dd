"""Shared fixtures: free loopback ports and the FEMTO data location."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
FEMTO_DIR = REPO.parent / "shared" / "data" / "femto"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def agent_process(config: Path, **kwargs: Any) -> asyncio.subprocess.Process:
    """`edge-agent run -c CONFIG` in a process of its own, as systemd starts it."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.cli",
        "run",
        "-c",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        **kwargs,
    )


@pytest.fixture
def femto_dir() -> Path:
    if not FEMTO_DIR.is_dir():
        pytest.skip("../shared/data/femto not present (a user's clone has no ../shared)")
    return FEMTO_DIR


@pytest.fixture(autouse=True)
def _no_system_control_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test's agent serves its control socket in the test's folder, never at the system
    path (control.socket's default): there it would probe, and a client test would talk
    to, an agent really running on this machine. Agents in a subprocess are not seen here:
    their configurations name a socket too (tests/agent/_configs.py, tests/_reload_agent.py)."""
    from agent import control
    from agent.config import Control

    system, real = Control().socket, control.ControlServer.__init__

    def checked(self: control.ControlServer, path: Path, **kwargs: Any) -> None:
        if Path(path) == system:
            pytest.fail(f"this test's agent would serve the system's control socket {system}: "
                        "set control.socket to a path in tmp_path")  # fmt: skip
        real(self, path, **kwargs)

    monkeypatch.setattr(control.ControlServer, "__init__", checked)
