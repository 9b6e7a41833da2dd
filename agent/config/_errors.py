"""Configuration problems as data: where in the file, which key, what to change."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PathPart = str | int
KeyPath = tuple[PathPart, ...]


def format_path(path: Sequence[PathPart]) -> str:
    """Dotted key path as an integrator reads it, e.g. ``sensors[1].modbus.port``.

    Args:
        path: mapping keys (str) and list indexes (int, 0-based as in pydantic).
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True, slots=True, order=True)
class ConfigIssue:
    """One problem in a configuration file.

    Attributes:
        file: the file as the user named it.
        line: 1-based line; 0 when the problem concerns the whole file (unreadable, empty).
        column: 1-based column; 0 together with line 0.
        path: dotted key path (``sensors[1].modbus.port``); empty for whole-file problems.
        message: what is wrong and what is expected instead.
    """

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """A configuration file cannot be used; ``issues`` lists every problem found.

    Attributes:
        issues: all problems, sorted by position in the file.
    """

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = sorted(set(issues))
        super().__init__("\n".join(str(i) for i in self.issues))
