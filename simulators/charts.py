"""Inline SVG charts of one case, drawn on the server from its timeline (no script, no CDN).

Three small charts share the case's time axis: vibration severity with the ISO zone bands
and the estimated failure with its bounds, the health index with its alarm level, and the
time-to-failure estimates with their bounds as the case went on. Each chart is drawn at
a given width (the page draws a wide and a narrow one and shows the one that fits the
screen, so the text stays readable on a phone). Every text that came from a record is
escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from simulators._case_facts import duration, parse_time

WIDE, NARROW = 600, 360
H = 220
LEFT, RIGHT, TOP, BOTTOM = 48, 30, 24, 34
COLORS = ("#1f5fa8", "#b3432b", "#2e7d32", "#6a3d9a", "#8a6d00", "#00838f")
ZONE_FILL = {"A": "#d9efd4", "B": "#edf5d3", "A/B": "#e3f2d3", "C": "#fbe9c4", "D": "#f7d2cd"}
# Time-axis steps in seconds: 1 s ... 30 d.
_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)
_STEPS_S += (43200, 86400, 172800, 604800, 2592000)
_RED = "#c62828"


def esc(value: object) -> str:
    """Text safe in HTML and SVG, attributes included."""
    return html.escape(str(value), quote=True)


def hhmmss(ts: datetime) -> str:
    """A time of day, UTC."""
    return ts.astimezone(UTC).strftime("%H:%M:%S")


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    raw = (hi - lo if hi > lo else 1.0) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step) + 1)]


@dataclass(frozen=True, slots=True)
class Frame:
    """Maps times and values to the plot area of one chart `w` units wide."""

    w: int
    t0: datetime
    t1: datetime
    y0: float
    y1: float

    @property
    def right(self) -> int:
        return self.w - RIGHT

    def x(self, ts: datetime) -> float:
        frac = (ts - self.t0) / (self.t1 - self.t0)
        return round(LEFT + min(max(frac, 0.0), 1.0) * (self.right - LEFT), 1)

    def y(self, value: float) -> float:
        frac = (value - self.y0) / (self.y1 - self.y0)
        return round(H - BOTTOM - min(max(frac, 0.0), 1.0) * (H - TOP - BOTTOM), 1)

    def vline(self, x: float, cls: str, style: str) -> str:
        return f'<line class="{cls}" x1="{x}" x2="{x}" y1="{TOP}" y2="{H - BOTTOM}" {style}/>'

    def hline(self, y: float, cls: str, style: str) -> str:
        return f'<line class="{cls}" x1="{LEFT}" x2="{self.right}" y1="{y}" y2="{y}" {style}/>'

    def axes(self, y_label: str) -> str:
        out = [
            f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{self.right - LEFT}" '
            f'height="{H - TOP - BOTTOM}" fill="none" stroke="#999"/>'
        ]
        for v in nice_ticks(self.y0, self.y1, 4):
            y = self.y(v)
            out.append(
                f'<line x1="{LEFT - 4}" x2="{LEFT}" y1="{y}" y2="{y}" stroke="#666"/>'
                f'<text x="{LEFT - 6}" y="{y + 4}" text-anchor="end">{v:g}</text>'
            )
        span_s = (self.t1 - self.t0).total_seconds()
        most = 5 if self.w > NARROW else 3
        step = next((s for s in _STEPS_S if span_s / s <= most), _STEPS_S[-1])
        fmt = "%H:%M:%S" if step < 60 else "%H:%M" if step < 86400 else "%m-%d"
        t = math.ceil(self.t0.timestamp() / step) * step
        while t <= self.t1.timestamp():
            ts = datetime.fromtimestamp(t, UTC)
            x = self.x(ts)
            out.append(
                f'<line x1="{x}" x2="{x}" y1="{H - BOTTOM}" y2="{H - BOTTOM + 4}" '
                f'stroke="#666"/><text x="{x}" y="{H - BOTTOM + 16}" '
                f'text-anchor="middle">{ts.strftime(fmt)}</text>'
            )
            t += step
        out.append(
            f'<text x="{self.right}" y="{H - 3}" text-anchor="end">UTC '
            f"{self.t0.strftime('%Y-%m-%d')}</text>"
            f'<text x="4" y="{TOP - 8}">{esc(y_label)}</text>'
        )
        return "".join(out)


def _svg(kind: str, w: int, title: str, body: Iterable[str]) -> str:
    size = "wide" if w > NARROW else "narrow"
    return (
        f'<svg class="chart {kind} {size}" viewBox="0 0 {w} {H}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" font-size="12" font-family="sans-serif">'
        f"<title>{esc(title)}</title>{''.join(body)}</svg>"
    )


def _time_range(case: dict[str, Any]) -> tuple[datetime, datetime]:
    """The case's span plus its latest estimate, the estimate capped at 3x the data span."""
    stamps = [p["at"] for p in case["timeline"]]
    stamps += [e["at"] for e in (case["confirmation"], case["repair"]) if e]
    known = [t for t in (parse_time(s) for s in stamps) if t is not None]
    t0, last = min(known), max(known)
    t1 = last
    est = case["latest_estimate"]
    if est:
        key = "earliest_failure_at" if case["repair"] else "latest_failure_at"
        t1 = max(t1, parse_time(est[key]) or t1)
    span = max((last - t0).total_seconds(), 10.0)
    t1 = min(t1, last + timedelta(seconds=2 * span))
    pad = timedelta(seconds=max((t1 - t0).total_seconds(), 10.0) * 0.04)
    return t0 - pad, t1 + pad


def _series(points: Iterable[dict[str, Any]], key: str) -> dict[str, list[tuple[datetime, float]]]:
    out: dict[str, list[tuple[datetime, float]]] = {}
    for p in points:
        v, ts = p.get(key), parse_time(p["at"])
        if isinstance(v, int | float) and ts is not None and p["kind"] != "maintenance":
            out.setdefault(f"{p['sensor']} {p['channel']}", []).append((ts, float(v)))
    return out


def _lines(frame: Frame, series: dict[str, list[tuple[datetime, float]]], unit: str) -> str:
    out = []
    for i, (name, pts) in enumerate(sorted(series.items())):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{frame.x(t)},{frame.y(v)}" for t, v in pts)
        out.append(
            f'<polyline class="series" points="{coords}" fill="none" stroke="{color}" '
            f'stroke-width="2"/>'
        )
        out += [
            f'<circle cx="{frame.x(t)}" cy="{frame.y(v)}" r="3.5" fill="{color}"><title>'
            f"{esc(name)} {hhmmss(t)}: {v:.4g} {esc(unit)}</title></circle>"
            for t, v in pts
        ]
        out.append(
            f'<text x="{LEFT + 6 + 100 * i}" y="{H - BOTTOM - 6}" fill="{color}">{esc(name)}</text>'
        )
    return "".join(out)


def _markers(frame: Frame, case: dict[str, Any]) -> str:
    marks = [("detected", case["opened_at"])]
    marks += [(k, case[k]["at"]) for k in ("confirmation", "repair") if case[k]]
    out = []
    for i, (label, stamp) in enumerate(marks):
        ts = parse_time(stamp)
        if ts is not None:
            x = frame.x(ts)
            name = {"confirmation": "confirmed", "repair": "repaired"}.get(label, label)
            out.append(
                frame.vline(x, f"marker {name}", 'stroke="#333" stroke-dasharray="3 3"')
                + f'<text x="{x + 3}" y="{TOP + 12 + 13 * i}">{name}</text>'
            )
    return "".join(out)


def _zone_bands(frame: Frame, limits: dict[str, float]) -> str:
    edges: list[tuple[str, float, float]] = []
    if "bc" in limits:
        if "ab" in limits:
            edges += [("A", 0.0, limits["ab"]), ("B", limits["ab"], limits["bc"])]
        else:
            edges.append(("A/B", 0.0, limits["bc"]))
        edges.append(("C", limits["bc"], limits.get("cd", frame.y1)))
    if "cd" in limits:
        edges.append(("D", limits["cd"], frame.y1))
    out = []
    for zone, lo, hi in edges:
        top, bottom = frame.y(min(hi, frame.y1)), frame.y(lo)
        if bottom - top > 0:
            out.append(
                f'<rect class="zone zone-{zone.replace("/", "")}" x="{LEFT}" y="{top}" '
                f'width="{frame.right - LEFT}" height="{round(bottom - top, 1)}" '
                f'fill="{ZONE_FILL[zone]}"/><text x="{frame.right + 4}" '
                f'y="{round((top + bottom) / 2 + 4, 1)}">{zone}</text>'
            )
    return "".join(out)


def _ttf_band(frame: Frame, est: dict[str, Any] | None) -> str:
    if not est:
        return ""
    keys = ("earliest_failure_at", "failure_at", "latest_failure_at")
    lo, mid, hi = (parse_time(est[k]) for k in keys)
    if lo is None or mid is None or hi is None:
        return ""
    x0, x1, xm = frame.x(lo), frame.x(hi), frame.x(mid)
    title = (
        f"estimated failure {hhmmss(mid)} UTC (95 %: {hhmmss(lo)} to {hhmmss(hi)}), "
        f"from the estimate at {est['at'][11:19]}"
    )
    arrow = " →" if hi > frame.t1 else ""
    return (
        f'<rect class="ttf-band" x="{x0}" y="{TOP}" width="{max(round(x1 - x0, 1), 2.0)}" '
        f'height="{H - TOP - BOTTOM}" fill="{_RED}" fill-opacity="0.18" stroke="{_RED}" '
        f'stroke-opacity="0.5"><title>{esc(title)}</title></rect>'
        + frame.vline(xm, "ttf-median", f'stroke="{_RED}" stroke-width="2"')
        + f'<text x="{min(x0, frame.right - 86)}" y="{H - BOTTOM - 20}" fill="#8e1b1b">'
        f"est. failure{arrow}</text>"
    )


def severity_chart(case: dict[str, Any], w: int = WIDE) -> str:
    """Velocity RMS over time with zone bands, the failure threshold and the estimate."""
    t0, t1 = _time_range(case)
    series = _series(case["timeline"], "velocity_mm_s")
    limits = case.get("zone_limits_mm_s") or {}
    est = case["latest_estimate"]
    on_velocity = bool(est) and est.get("failure_metric") == "velocity_rms_mm_s"
    threshold = est.get("failure_threshold") if on_velocity else None
    values = [v for pts in series.values() for _, v in pts]
    frame = Frame(w, t0, t1, 0.0, max([*values, *limits.values(), threshold or 0.0, 1.0]) * 1.15)
    body = [_zone_bands(frame, limits), frame.axes("velocity RMS, mm/s")]
    if threshold is not None:
        body.append(frame.hline(frame.y(threshold), "failure-threshold",
                                f'stroke="{_RED}" stroke-dasharray="6 3"'))  # fmt: skip
    body += [_ttf_band(frame, est), _markers(frame, case), _lines(frame, series, "mm/s")]
    return _svg("severity", w, "Vibration severity with ISO zones and the estimated failure", body)


def health_chart(case: dict[str, Any], w: int = WIDE) -> str:
    """Health index over time with its alarm level."""
    t0, t1 = _time_range(case)
    series = _series(case["timeline"], "health_index")
    alarms = [
        a for p in case["timeline"] if isinstance(a := p.get("health_alarm_level"), int | float)
    ]
    values = [v for pts in series.values() for _, v in pts]
    frame = Frame(w, t0, t1, min([0.0, *values]), max([*values, *alarms, 0.1]) * 1.2)
    body = [frame.axes("health index (0 = baseline)")]
    if alarms:
        y = frame.y(alarms[-1])
        body.append(
            frame.hline(y, "alarm-level", 'stroke="#8a6d00" stroke-dasharray="6 3"')
            + f'<text x="{frame.right - 4}" y="{y - 4}" text-anchor="end">alarm level</text>'
        )
    body += [_markers(frame, case), _lines(frame, series, "")]
    return _svg("health", w, "Health index against the learned baseline", body)


def ttf_chart(case: dict[str, Any], w: int = WIDE) -> str:
    """Each time-to-failure estimate with its 95 % bounds, at the time it was made."""
    t0, t1 = _time_range(case)
    ests = [
        (t, p["time_to_failure"])
        for p in case["timeline"]
        if p.get("time_to_failure") and (t := parse_time(p["at"])) is not None
    ]
    peak = max([e["hours"] for _, e in ests] or [1.0])
    units = (("s", 3600.0, 0.05), ("min", 60.0, 2.0), ("h", 1.0, 72.0), ("d", 1 / 24, math.inf))
    unit, per_hour = next((u, f) for u, f, below in units if peak < below)
    frame = Frame(w, t0, t1, 0.0, peak * per_hour * 2.0)
    body = [frame.axes(f"time to failure, {unit}")]
    for t, e in ests:
        x = frame.x(t)
        lo, mid, hi = (frame.y(e[k] * per_hour) for k in ("lower_hours", "hours", "upper_hours"))
        title = (
            f"{hhmmss(t)}: {duration(e['hours'])} "
            f"({duration(e['lower_hours'])} to {duration(e['upper_hours'])})"
        )
        body.append(
            f'<g class="estimate"><line class="ttf-bounds" x1="{x}" x2="{x}" y1="{lo}" '
            f'y2="{hi}" stroke="{_RED}" stroke-width="3"/><circle cx="{x}" cy="{mid}" r="4" '
            f'fill="{_RED}"/><title>{esc(title)}</title></g>'
        )
    body.append(_markers(frame, case))
    return _svg("ttf", w, "Time-to-failure estimates with their bounds", body)


def has_values(case: dict[str, Any], keys: Sequence[str]) -> bool:
    """Whether any timeline point carries one of `keys`."""
    return any(isinstance(p.get(k), int | float | dict) for p in case["timeline"] for k in keys)
