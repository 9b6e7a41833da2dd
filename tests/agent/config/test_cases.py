"""Regression folders (Telegraf style): tests/cases/<name>/config.yaml and the exact output.

Each folder holds ``config.yaml`` and either ``check.err`` (the lines ``edge-agent check``
prints to stderr; exit 2) or ``check.out`` (the summary; exit 0). An optional ``env`` file
gives the environment, one ``NAME=value`` per line; nothing else from the environment is used.
The check runs inside the folder on the relative name ``config.yaml``, so the expected lines
start with ``config.yaml:``. To add a case, add a folder; name it after what it reproduces.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from agent.config import main_check

CASES = Path(__file__).resolve().parents[2] / "cases"


def _env(folder: Path) -> dict[str, str]:
    file = folder / "env"
    if not file.exists():
        return {}
    pairs = (line.split("=", 1) for line in file.read_text().splitlines() if "=" in line)
    return {k.strip(): v for k, v in pairs}


@pytest.mark.parametrize(
    "folder", sorted(p for p in CASES.iterdir() if p.is_dir()), ids=lambda p: p.name
)
def test_case(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    out, err = io.StringIO(), io.StringIO()
    code = main_check(Path("config.yaml"), out, err, environ=_env(folder))
    if (folder / "check.out").exists():
        assert (code, err.getvalue()) == (0, "")
        assert out.getvalue() == (folder / "check.out").read_text()
    else:
        assert code == 2 and out.getvalue() == ""
        assert err.getvalue() == (folder / "check.err").read_text()


def test_there_are_cases() -> None:
    assert len([p for p in CASES.iterdir() if p.is_dir()]) >= 6
