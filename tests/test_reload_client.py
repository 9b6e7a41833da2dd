"""`edge-agent reload -c FILE` with a file that does not load and no agent reached: the
operator (and `systemctl reload`) is told the file is invalid and where, not only that no
agent answered on a control socket guessed from a file it could not read."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from agent import reload_client
from agent.config import Control
from agent.control import ControlServer, Peer, Refused
from agent.reload_client import EXIT_INVALID, request_reload
from tests.agent._configs import press_yaml


def _good(folder: Path) -> str:
    """A valid file of 11 lines (the broken one's YAML error is on line 13)."""
    modbus = "{host: 127.0.0.1, port: 5020, device_id: 1}"
    return press_yaml("gw-rc", modbus, folder / "outbox.db", folder / "control.sock")


@pytest.fixture(autouse=True)
def default_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The control socket the client guesses for a file that does not load (the
    configuration's default), moved into the test's folder: at the system's path it probed,
    and the test below served, the socket of an agent really running on this machine (the
    conftest guard fails a test's agent there)."""
    path = tmp_path / "default" / "control.sock"
    real = Control

    def moved() -> Control:
        return real(socket=path)

    monkeypatch.setattr(reload_client, "Control", moved)
    return path


@pytest.mark.parametrize(
    ("broken", "where"),
    [
        ("{good}sensors: [\n", "agent.yaml:13:1: YAML syntax error"),  # a half-saved edit
        ("", "the file is empty"),
    ],
)
def test_a_file_that_does_not_load_is_reported_as_invalid(
    tmp_path: Path, broken: str, where: str
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(broken.format(good=_good(tmp_path)))
    out, err = io.StringIO(), io.StringIO()
    code = request_reload(path, out, err)
    said = err.getvalue()
    assert code == EXIT_INVALID, said
    assert f"{path} is not valid" in said, said
    assert where in said, said
    assert "no running agent was reached" in said, said


async def test_a_file_that_does_not_load_beside_another_agent_is_reported_as_invalid(
    tmp_path: Path, default_socket: Path
) -> None:
    """On a gateway an agent does listen on the default control socket, the one guessed
    for a file that does not load: the answer came from it (refusing another file) and the
    operator was told only 'the process on /run/edge-agent/control.sock is not this file's
    agent' (exit 1), never that the file they just saved is broken, nor where."""
    sock = default_socket
    other = {"gateway": "gw-other", "store": "/var/lib/edge-agent/other.db",
             "config": "/etc/edge-agent/other.yaml"}  # fmt: skip

    async def reload(_args: Mapping[str, Any], _peer: Peer) -> dict[str, Any]:
        raise Refused("this agent runs with /etc/edge-agent/other.yaml")

    path = tmp_path / "agent.yaml"
    path.write_text(_good(tmp_path) + "sensors: [\n")
    sock.parent.mkdir(parents=True, exist_ok=True)
    async with ControlServer(sock, group=None, identity=lambda: other, handlers={"reload": reload}):
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(request_reload, path, out, err)
    said = err.getvalue()
    assert code == EXIT_INVALID, said
    assert f"{path} is not valid" in said and "agent.yaml:13:1: YAML syntax error" in said, said
    assert "not this file's agent" in said, said
