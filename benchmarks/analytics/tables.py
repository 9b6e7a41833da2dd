"""Markdown tables for the analytics report."""

from __future__ import annotations


def table(head: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (None prints as an empty cell)."""
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
