"""Shared helpers for the config tests: a valid base file and issue formatting."""

from __future__ import annotations

import textwrap
from pathlib import Path

from agent.config import ConfigIssue, check_file

VALID = """\
gateway: {id: gw-01}
assets:
  - id: press-7
    machine: {standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}
sensors:
  - id: m1-de
    asset: press-7
    modbus: {host: 10.0.0.21}
store: {path: /tmp/outbox.db}
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    """Write dedented YAML to tmp_path/name and return the path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def issues(path: Path, environ: dict[str, str] | None = None) -> list[ConfigIssue]:
    """The issues of a file checked with a controlled environment (empty by default)."""
    result = check_file(path, environ=environ or {})
    assert result.config is None, "expected the file to be invalid"
    return list(result.issues)


def lines(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    """Issues as printed, with the tmp directory removed from the file name."""
    return [str(i).replace(str(path), path.name) for i in issues(path, environ)]
