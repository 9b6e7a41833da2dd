"""What a replay tells: the first alert, the lead time, the estimates over time, and a plot.

The summary is one JSON object (`"kind": "summary"`) printed after the estimate records; the
plot is drawn from it alone, so anyone can draw their own from the JSON.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.analysis.channel import ChannelView
from agent.analysis.ttf import Estimate
from agent.records import format_ts

__all__ = ["PlotError", "Story", "plot", "plot_format"]

_HOUR_S = 3600.0
# The plot extra of pyproject.toml (a test keeps the two alike).
PLOT_REQUIREMENT = "matplotlib>=3.8,<4"
_TIME_LEFT_POINTS = 200


class PlotError(RuntimeError):
    """The plot cannot be drawn (matplotlib missing, file not writable)."""


@dataclass
class Story:
    """Collects a replay's story while it runs (bounded: one estimate per channel and bin)."""

    asset_id: str
    first: datetime | None = None
    last: datetime | None = None
    snapshots: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    first_skipped: dict[str, str] = field(default_factory=dict)
    first_alert: dict[str, Any] | None = None
    raised: Counter[str] = field(default_factory=Counter)
    series: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    _seen: dict[str, int] = field(default_factory=dict)

    def snapshot(self, at: datetime) -> None:
        """A snapshot was analysed."""
        self.first = self.first or at
        self.last = at
        self.snapshots += 1

    def skip(self, reason: str, source: str) -> None:
        """A snapshot (or one channel of it) was not analysed; the first source is kept."""
        self.skipped[reason] += 1
        self.first_skipped.setdefault(reason, source)

    def skipped_note(self) -> str | None:
        """One line for stderr on what was skipped, so it is never silent; None if nothing."""
        if not self.skipped:
            return None
        parts = [f"{n} x {r} (first: {self.first_skipped[r]})" for r, n in self.skipped.items()]
        return "skipped " + "; ".join(parts) + ' (counts in the summary\'s "skipped")'

    def alert(self, record: dict[str, Any]) -> None:
        """An alert record was produced."""
        if record["state"] != "raised":
            return
        self.raised[record["kind"]] += 1
        if self.first_alert is None:
            self.first_alert = {
                "at": record["detected_at"],
                "kind": record["kind"],
                "channel": record["sensor"]["channel"],
            }

    def estimates(self, views: list[ChannelView]) -> None:
        """Note each channel's estimate when it changed (it is recomputed once per bin)."""
        for v in views:
            if v.estimate is None or self._seen.get(v.channel) == id(v.estimate):
                continue
            self._seen[v.channel] = id(v.estimate)
            s = self.series.setdefault(
                v.channel,
                {
                    k: []
                    for k in ("at", "hours", "lower_hours", "upper_hours", "model", "health_index")
                },
            )
            e = v.estimate
            ok = isinstance(e, Estimate)
            s["at"].append(format_ts(v.at))
            s["hours"].append(round(e.hours, 5) if ok else None)
            s["lower_hours"].append(round(e.lower_hours, 5) if ok else None)
            s["upper_hours"].append(round(e.upper_hours, 5) if ok else None)
            s["model"].append(e.model if ok else None)
            s["health_index"].append(None if v.health_index is None else round(v.health_index, 5))

    def summary(self, final: list[dict[str, Any]], flaps: dict[str, Any]) -> dict[str, Any]:
        """The summary line; final: the per-channel estimate records."""
        out: dict[str, Any] = {
            "kind": "summary",
            "asset": {"id": self.asset_id},
            "recording": {
                "first": None if self.first is None else format_ts(self.first),
                "last": None if self.last is None else format_ts(self.last),
                "snapshots": self.snapshots,
                "skipped": dict(self.skipped),
            },
            "alerts_raised": dict(self.raised),
            "flaps": flaps,
        }
        first = self.first_alert
        if first is not None and self.last is not None:
            at = datetime.fromisoformat(first["at"].replace("Z", "+00:00"))
            first = {
                **first,
                "lead_time_hours": round((self.last - at).total_seconds() / _HOUR_S, 4),
            }
        out["first_alert"] = first
        # The asset fails when its first channel does: its estimate is the shortest one.
        timed = [r for r in final if r.get("time_to_failure")]
        best = min(timed, key=lambda r: r["time_to_failure"]["hours"], default=None)
        out["time_to_failure"] = (
            None
            if best is None
            else {
                **best["time_to_failure"],
                "at": best["at"],  # hours and bounds count from here (the last snapshot)
                "channel": best["sensor"]["channel"],
                **best.get("time_to_failure_basis", {}),
            }
        )
        if best is None:
            out["no_estimate_reason"] = (
                "; ".join(sorted({str(r.get("no_estimate_reason")) for r in final}))
                or "no snapshot analysed"
            )
        out["estimates"] = self.series
        return out


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        # Never "pip install 'edge-agent[plot]'": edge-agent on the package index is an
        # unrelated project; this is the plot extra of vibration-edge-agent.
        raise PlotError(
            f"--plot needs matplotlib (the optional plot extra): install it with "
            f"{sys.executable} -m pip install '{PLOT_REQUIREMENT}' "
            "(or from the checkout: pip install -e '.[plot]'), or leave --plot out"
        ) from exc
    return plt


def plot_format(path: Path) -> str:
    """The image format of --plot PATH, checked before the replay runs (a long replay must
    not end in "cannot write"): its suffix, or PNG without one (written at PATH itself, not
    at PATH.png as matplotlib would).

    Raises:
        PlotError: matplotlib is missing, PATH is a folder, its folder does not exist or
            is not writable, or the suffix is no image format matplotlib writes.
    """
    plt = _pyplot()
    if path.is_dir():
        raise PlotError(f"--plot {path}: is a folder; give a file name, e.g. {path / 'story.png'}")
    parent = path.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PlotError(f"--plot {path}: folder {parent} does not exist or is not writable")
    fmt = path.suffix.lstrip(".").lower() or "png"
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if fmt not in formats:
        raise PlotError(
            f"--plot {path}: .{fmt} is no image format; use .png, .svg or .pdf "
            f"(any of {', '.join(sorted(formats))})"
        )
    return fmt


def plot(summary: dict[str, Any], path: Path) -> None:
    """Health index and the estimate with its 95 % bounds against time, one image (PNG unless
    the path's suffix says otherwise, see plot_format).

    Raises:
        PlotError: matplotlib is not installed, or the file cannot be written.
    """
    fmt = plot_format(path)
    plt = _pyplot()
    rec = summary["recording"]
    if rec["first"] is None:
        raise PlotError("nothing to plot: no snapshot was analysed")
    t0 = datetime.fromisoformat(rec["first"].replace("Z", "+00:00"))
    end = (datetime.fromisoformat(rec["last"].replace("Z", "+00:00")) - t0).total_seconds()

    def hours(stamps: list[str]) -> list[float]:
        return [
            (datetime.fromisoformat(s.replace("Z", "+00:00")) - t0).total_seconds() / _HOUR_S
            for s in stamps
        ]

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6.5))
    for ch, s in summary["estimates"].items():
        x = hours(s["at"])
        top.plot(x, [float("nan") if v is None else v for v in s["health_index"]], lw=1, label=ch)
        h = [float("nan") if v is None else v for v in s["hours"]]
        lo = [float("nan") if v is None else v for v in s["lower_hours"]]
        hi = [float("nan") if v is None else v for v in s["upper_hours"]]
        (line,) = bottom.plot(x, h, lw=1.2, label=f"{ch}: estimate")
        bottom.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    # Sampled, down to a thousandth of the recording: a straight segment to (end, 0) has
    # no place on the log axis and was drawn as a vertical stroke at the start.
    left = [end / _HOUR_S * 10 ** (-3 * k / _TIME_LEFT_POINTS) for k in range(_TIME_LEFT_POINTS)]
    bottom.plot(
        [end / _HOUR_S - y for y in left], left, "k--", lw=0.8, label="time left in the recording"
    )
    first = summary.get("first_alert")
    if first is not None:
        at = hours([first["at"]])[0]
        for ax in (top, bottom):
            ax.axvline(at, color="red", lw=0.8)
        top.annotate(
            f"first alert ({first['kind']})",
            (at, 1),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            color="red",
            fontsize=8,
        )
    top.set_ylabel("health index (ln units)")
    top.legend(loc="upper left", fontsize=8)
    bottom.set_yscale("log")
    bottom.set_ylabel("time to failure, h (95 % bounds)")
    bottom.set_xlabel(f"hours since {rec['first']}")
    bottom.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{summary['asset']['id']}: replay of {rec['snapshots']} snapshots", fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100, format=fmt)
    except OSError as exc:
        raise PlotError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)
