"""Secret files of the uplinks (http/cmms ``token_file``, mqtt ``password_file``): read
each once at load, and say what is wrong with a file without ever showing its content."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.config._data import entries
from agent.config._errors import ConfigIssue
from agent.config._source import SourceMap

__all__ = ["PLACEHOLDERS", "SECRET_FILES", "read_secret", "read_tokens", "secret_path"]

_MAX_TOKEN_BYTES = 64 * 1024
# What the install notes and the example write where the real secret belongs: copied
# literally, it passed every check and the backend answered 401 to each delivery.
PLACEHOLDERS = frozenset({"PASTE-THE-TOKEN-HERE", "change-me"})

# (section under an uplink, key naming a secret file, what the file holds)
SECRET_FILES = (
    ("http", "token_file", "token"),
    ("mqtt", "password_file", "password"),
    ("cmms", "token_file", "token"),
)


def read_secret(file: Path, name: str, what: str) -> tuple[str | None, str]:
    """The secret in a file (whitespace stripped), or None and what is wrong, never the
    content."""
    try:
        with file.open("rb") as f:
            raw = f.read(_MAX_TOKEN_BYTES + 1)
    except FileNotFoundError:
        return None, (
            f"{what} file '{file}' does not exist; create it with the {what} as its only "
            "content, or fix the path"
        )
    except IsADirectoryError:
        return None, f"{what} file '{file}' is a directory; give the file that holds the {what}"
    except ValueError:  # a NUL byte in the name
        return None, f"{what} file name {name!r} is not a valid path; fix the path"
    except OSError as exc:
        return None, (
            f"{what} file '{file}' cannot be read ({exc.strerror}); let the agent's user read it"
        )
    token = raw.decode("utf-8", errors="replace").strip()
    if len(raw) > _MAX_TOKEN_BYTES:
        return None, f"{what} file '{file}' is larger than 64 KiB; it should hold only the {what}"
    if not token:
        return None, f"{what} file '{file}' is empty; write the {what} into it"
    if "\ufffd" in token:
        return None, f"{what} file '{file}' is not UTF-8 text; write the {what} as plain text"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in token):
        return None, (
            f"{what} file '{file}' holds a line break or control character inside the "
            f"{what}; it must hold the {what} alone, on one line"
        )
    if token in PLACEHOLDERS:
        return None, (
            f"{what} file '{file}' still holds the placeholder {token!r}; write the real "
            f"{what} into it"
        )
    return token, ""


def secret_path(base: Path, name: str) -> Path:
    """A secret file's path: relative ones are relative to the configuration's folder."""
    return base / Path(name).expanduser()


def read_tokens(
    data: dict[str, Any], smap: SourceMap, base: Path
) -> tuple[dict[int, str], list[ConfigIssue]]:
    """Read every uplink's secret file (http ``token_file``, mqtt ``password_file``).

    Args:
        data: the parsed file.
        smap: positions, for the issues.
        base: directory that relative paths are relative to (the config's).

    Returns:
        uplink index -> secret, and the issues for files that are missing, unreadable or
        empty. Issues name the file, never its content.
    """
    tokens: dict[int, str] = {}
    issues = []
    for i, uplink in entries(data, "uplinks"):
        for section, key, what in SECRET_FILES:
            block = uplink.get(section)
            name = block.get(key) if isinstance(block, dict) else None
            if not isinstance(name, str) or not name:
                continue
            try:
                file = secret_path(base, name)
            except ValueError:
                file = Path(name)
            secret, msg = read_secret(file, name, what)
            if secret is not None:
                tokens[i] = secret
            else:
                issues.append(smap.issue(("uplinks", i, section, key), msg))
    return tokens, issues
