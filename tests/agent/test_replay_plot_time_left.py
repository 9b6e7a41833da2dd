"""`edge-agent replay --plot`: the dashed "time left in the recording" line on the log axis."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.replay._story import plot

_AT = [f"2026-01-01T{h:02d}:00:00.000Z" for h in range(9)]


def _summary() -> dict:
    n = len(_AT)
    return {
        "asset": {"id": "replay"},
        "recording": {"first": _AT[0], "last": _AT[-1], "snapshots": n},
        "first_alert": None,
        "estimates": {
            "h": {
                "at": _AT,
                "health_index": [0.1] * n,
                "hours": [5.0] * n,
                "lower_hours": [1.0] * n,
                "upper_hours": [20.0] * n,
            }
        },
    }


def _x_extent(svg: str, style: str) -> float:
    """How far along x the line drawn with this style reaches, in SVG units."""
    spans = []
    for d, s in re.findall(r'<path d="([^"]+)"[^>]*style="([^"]*)"', svg):
        if style in s:
            xs = [float(x) for x in re.findall(r"[ML] (-?[\d.]+) -?[\d.]+", d)]
            spans.append(max(xs) - min(xs))
    assert spans, f"no line with {style!r}"
    return max(spans)


def test_time_left_runs_across_the_recording_on_the_log_axis(tmp_path: Path) -> None:
    """It was drawn from (0, 8 h) to (8 h, 0): 0 has no place on a log axis, so the line
    was a vertical stroke at the start, not the time left to compare the estimate with."""
    pytest.importorskip("matplotlib", reason="--plot needs the optional matplotlib extra")
    out = tmp_path / "story.svg"
    plot(_summary(), out)
    svg = out.read_text()
    estimate = _x_extent(svg, "stroke: #1f77b4")  # the channel's estimate, 0 to 8 h
    time_left = _x_extent(svg, "stroke-dasharray")
    assert time_left >= 0.95 * estimate
