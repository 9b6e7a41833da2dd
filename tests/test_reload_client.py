"""`edge-agent reload -c FILE` with a file that does not load and no agent reached: the
operator (and `systemctl reload`) is told the file is invalid and where, not only that no
agent answered on a control socket guessed from a file it could not read."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from agent.reload_client import EXIT_INVALID, request_reload

GOOD = """\
gateway: {{id: gw-rc}}
assets:
  - id: press-7
    tier: 1
    machine: {{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}}
sensors:
  - id: m1
    asset: press-7
    modbus: {{host: 127.0.0.1, port: 5020, device_id: 1}}
store: {{path: "{dir}/outbox.db"}}
control: {{socket: "{dir}/control.sock"}}
"""


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
    path.write_text(broken.format(good=GOOD.format(dir=tmp_path)))
    out, err = io.StringIO(), io.StringIO()
    code = request_reload(path, out, err)
    said = err.getvalue()
    assert code == EXIT_INVALID, said
    assert f"{path} is not valid" in said, said
    assert where in said, said
    assert "no running agent was reached" in said, said
