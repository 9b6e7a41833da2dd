"""Reading the parsed file leniently, for the cross-checks: they run even where
validation failed, so every lookup tolerates a missing or mistyped value."""

from __future__ import annotations

from typing import Any

from agent.config._errors import KeyPath
from agent.config._source import SourceMap

__all__ = ["as_int", "entries", "line_at"]


def entries(data: dict[str, Any], section: str) -> list[tuple[int, dict[str, Any]]]:
    """(index, entry) of each mapping in a top-level list; nothing when it is not a list."""
    items = data.get(section)
    if not isinstance(items, list):
        return []
    return [(i, e) for i, e in enumerate(items) if isinstance(e, dict)]


def line_at(smap: SourceMap, path: KeyPath) -> int:
    """The line of the value at ``path``, 0 when it is not in the file."""
    node = smap.nodes.get(path)
    return node.line if node else 0


def as_int(value: Any, default: int) -> int | None:
    """``value`` as an int, ``default`` when absent, None when it is not a number."""
    if value is None:
        return default
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
