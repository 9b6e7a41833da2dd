"""Shared fixtures: free loopback ports and the FEMTO data location."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FEMTO_DIR = REPO.parent / "shared" / "data" / "femto"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def femto_dir() -> Path:
    if not FEMTO_DIR.is_dir():
        pytest.skip("../shared/data/femto not present (a user's clone has no ../shared)")
    return FEMTO_DIR
