"""`check` warns when a token or password is written into a configuration other users can
read: the install notes make the file 0644 because it holds no secret."""

from __future__ import annotations

import io
from pathlib import Path

from agent.config import main_check

CONFIG = """\
gateway: {id: gw-01}
assets:
  - id: press-7
    machine: {standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}
sensors:
  - {id: m1-de, asset: press-7, modbus: {host: 10.0.0.21}}
mqtt:
  - {id: plant, host: 10.0.0.5, username: gw-01, password: "b-r0ker"}
uplinks:
  - name: portfolio
    http: {url: "https://portfolio.example/v1/alerts", token: "abc-123-secret"}
  - name: from-env
    http: {url: "https://backup.example/v1/alerts", token: "${BACKUP_TOKEN}"}
store: {path: /var/lib/edge-agent/outbox.db}
"""


def _check(tmp_path: Path, mode: int) -> tuple[int, list[str]]:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    path.chmod(mode)
    out, err = io.StringIO(), io.StringIO()
    code = main_check(path, out, err, environ={"BACKUP_TOKEN": "from-systemd-env"})
    assert err.getvalue() == ""
    return code, [ln for ln in out.getvalue().splitlines() if "warning" in ln]


def test_a_secret_in_a_world_readable_file_is_named_at_its_line(tmp_path: Path) -> None:
    # Before: check printed "token set" and exited 0; every local user could read the token.
    code, warnings = _check(tmp_path, 0o644)
    assert code == 0
    path = tmp_path / "config.yaml"
    # The hint gives the form the unit's dynamic user can read (via LoadCredential=), not
    # a bare path under /etc/edge-agent/credentials it may not open.
    assert warnings == [
        f"{path}:8:60: mqtt[0].password: warning: a password is written in this file, which "
        "other users can read (mode 0644); put it alone in "
        "/etc/edge-agent/credentials/plant-password (chmod 600) and write password_file: "
        '"${CREDENTIALS_DIRECTORY:-/etc/edge-agent/credentials}/plant-password" (then run '
        "systemd-dropin again), as systemd/README.md shows",
        f"{path}:11:63: uplinks[0].http.token: warning: a token is written in this file, "
        "which other users can read (mode 0644); put it alone in "
        "/etc/edge-agent/credentials/portfolio-token (chmod 600) and write token_file: "
        '"${CREDENTIALS_DIRECTORY:-/etc/edge-agent/credentials}/portfolio-token" (then run '
        "systemd-dropin again), as systemd/README.md shows",
    ]
    assert "abc-123-secret" not in "".join(warnings) and "b-r0ker" not in "".join(warnings)


def test_a_file_only_its_owner_reads_may_hold_one(tmp_path: Path) -> None:
    assert _check(tmp_path, 0o600) == (0, [])
