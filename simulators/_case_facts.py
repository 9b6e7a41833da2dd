"""One stored alert record seen as a fact of a case: a time, what happened, the values.

The backend checks only a record's envelope when it stores it, so everything below is
read defensively: a field of the wrong type, an unknown extra field, a null progression
or time to failure are all fine and give None, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

VELOCITY = "velocity_rms_mm_s"
HEALTH = "health_index"
TTF_METRIC = "time_to_failure_hours"
DETECTION_KINDS = ("severity", "trend")
MAX_TEXT = 300
MAX_FEATURES = 32


def obj(value: Any) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def num(value: Any) -> float | None:
    """A finite number, or None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def text(value: Any, limit: int = MAX_TEXT) -> str | None:
    """A string cut to `limit` characters, or None."""
    if not isinstance(value, str):
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


def parse_time(value: Any) -> datetime | None:
    """A record timestamp (UTC ISO-8601 with milliseconds and Z), or None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def format_time(ts: datetime) -> str:
    """The record timestamp format."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def hours_between(start: datetime, end: datetime) -> float:
    """end - start in hours (5 decimals, as the records give durations)."""
    return round((end - start).total_seconds() / 3600.0, 5)


def duration(hours: float) -> str:
    """A readable duration: seconds for the demo's machine, days for a plant's."""
    seconds = abs(hours) * 3600.0
    sign = "-" if hours < 0 else ""
    if seconds < 120:
        return f"{sign}{seconds:.0f} s"
    if seconds < 7200:
        return f"{sign}{seconds / 60:.0f} min"
    return f"{sign}{abs(hours):.1f} h" if abs(hours) < 48 else f"{sign}{abs(hours) / 24:.1f} d"


def bounds(hours: float, lower: float, upper: float) -> str:
    """'24 s (23.6-24.4 s)': a value and its bounds in one unit, as precise as they differ."""
    text_ = duration(hours)
    unit = text_.split()[-1]
    size = {"s": 1 / 3600, "min": 1 / 60, "h": 1.0, "d": 24.0}[unit]
    for digits in (0, 1, 2):
        lo, mid, hi = (f"{abs(v) / size:.{digits}f}" for v in (lower, hours, upper))
        if len({lo, mid, hi}) == 3 or digits == 2:
            return f"{mid} {unit} ({lo}-{hi} {unit})"
    return text_


def rate(rate_per_day: float, unit: str) -> str:
    """A progression rate in a readable time unit ("mm/s per day" may become "per min")."""
    value, per = rate_per_day, "day"
    for factor, name in ((24.0, "h"), (60.0, "min")):
        if abs(value) < 1000:
            break
        value, per = value / factor, name
    base = unit.removesuffix(" per day")
    return f"{value:.3g} {base} per {per}"


def unit_of(metric: str) -> str:
    """The unit of a canonical metric name, from its suffix."""
    for suffix, unit in (("_mm_s", "mm/s"), ("_g", "g"), ("_hours", "h"), ("_c", "degC")):
        if metric.endswith(suffix):
            return unit
    return ""


@dataclass(frozen=True, slots=True)
class Estimate:
    """A time-to-failure estimate as a record gave it, placed on the clock."""

    at: datetime
    alert_id: str
    hours: float
    lower_hours: float
    upper_hours: float
    model: str | None
    failure_metric: str | None
    failure_threshold: float | None

    @property
    def failure_at(self) -> datetime:
        return self.at + timedelta(hours=self.hours)

    @property
    def earliest_failure_at(self) -> datetime:
        """The lower bound on the clock: the latest a repair can safely come."""
        return self.at + timedelta(hours=self.lower_hours)

    @property
    def latest_failure_at(self) -> datetime:
        return self.at + timedelta(hours=self.upper_hours)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": format_time(self.at),
            "alert_id": self.alert_id,
            "hours": self.hours,
            "lower_hours": self.lower_hours,
            "upper_hours": self.upper_hours,
            "model": self.model,
            "failure_metric": self.failure_metric,
            "failure_threshold": self.failure_threshold,
            "failure_at": format_time(self.failure_at),
            "earliest_failure_at": format_time(self.earliest_failure_at),
            "latest_failure_at": format_time(self.latest_failure_at),
        }


def _estimate(ttf: Mapping[str, Any], at: datetime, alert_id: str) -> Estimate | None:
    hours, lower, upper = (num(ttf.get(k)) for k in ("hours", "lower_hours", "upper_hours"))
    if hours is None or hours < 0:
        return None
    lower = hours if lower is None or not 0 <= lower <= hours else lower
    upper = hours if upper is None or upper < hours else upper
    cap = 24.0 * 365 * 100  # a century: beyond that a datetime would overflow, not inform
    return Estimate(
        at,
        alert_id,
        min(hours, cap),
        min(lower, cap),
        min(upper, cap),
        text(ttf.get("model")),
        text(ttf.get("failure_metric")),
        num(ttf.get("failure_threshold")),
    )


@dataclass(frozen=True, slots=True)
class Fact:
    """What one record says, read defensively."""

    at: datetime
    alert_id: str
    gateway_id: str
    seq: int
    asset_id: str
    asset_name: str
    tier: int | None
    kind: str
    state: str
    sensor: str
    channel: str
    level: str | None = None
    zone: str | None = None
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    standard: str | None = None
    velocity: float | None = None
    health_index: float | None = None
    health_alarm: float | None = None
    estimate: Estimate | None = None
    progression: dict[str, Any] | None = None
    no_estimate_reason: str | None = None
    note: str | None = None
    features: dict[str, float] = field(default_factory=dict)
    revision: str | None = None  # a critical taken back to a warning: why (evidence.revision)

    @property
    def key(self) -> tuple[str, str, str]:
        """The alert this record belongs to: (sensor, channel, kind)."""
        return (self.sensor, self.channel, self.kind)

    @property
    def detects(self) -> bool:
        return self.kind in DETECTION_KINDS and self.state in ("raised", "escalated")

    def metric_value(self, metric: str) -> float | None:
        """This record's value of `metric`: its severity value or one of its features."""
        if self.metric == metric and self.value is not None:
            return self.value
        return self.features.get(metric)


def fact_of(record: Mapping[str, Any]) -> Fact | None:
    """The facts of one stored record; None without a time, an id or an asset id."""
    at = parse_time(record.get("detected_at"))
    alert_id, asset = text(record.get("alert_id"), 200), obj(record.get("asset"))
    asset_id = text(asset.get("id"), 200)
    if at is None or not alert_id or not asset_id:
        return None
    sev, sensor = obj(record.get("severity")), obj(record.get("sensor"))
    ev = obj(record.get("evidence"))
    feats = {
        k: v
        for k, v in ((str(k), num(v)) for k, v in obj(ev.get("features")).items())
        if v is not None
    }
    hi = obj(ev.get(HEALTH))
    metric, value = text(sev.get("metric")), num(sev.get("value"))
    tier = asset.get("tier")
    prog = obj(record.get("progression"))
    rate = num(prog.get("rate_per_day"))
    seq = record.get("seq")
    zone = sev.get("zone")
    return Fact(
        at=at,
        alert_id=alert_id,
        gateway_id=text(record.get("gateway_id"), 200) or "",
        seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else 0,
        asset_id=asset_id,
        asset_name=text(asset.get("name")) or asset_id,
        tier=tier if isinstance(tier, int) and not isinstance(tier, bool) else None,
        kind=text(record.get("kind"), 40) or "unknown",
        state=text(record.get("state"), 40) or "",
        sensor=text(sensor.get("id"), 200) or "",
        channel=text(sensor.get("channel"), 40) or "",
        level=text(sev.get("level"), 40),
        zone=zone if zone in ("A", "B", "C", "D") else None,
        metric=metric,
        value=value,
        threshold=num(sev.get("threshold")),
        standard=text(sev.get("standard")),
        velocity=value if metric == VELOCITY else feats.get(VELOCITY),
        health_index=num(hi.get("value")) if hi else (value if metric == HEALTH else None),
        health_alarm=num(hi.get("alarm_level")),
        estimate=_estimate(obj(record.get("time_to_failure")), at, alert_id),
        progression=None
        if rate is None
        else {
            "rate_per_day": rate,
            "unit": text(prog.get("unit"), 40) or "",
            "window_hours": num(prog.get("window_hours")),
        },
        no_estimate_reason=text(record.get("no_estimate_reason")),
        note=text(ev.get("note")),
        features=dict(list(feats.items())[:MAX_FEATURES]),
        revision=text(obj(ev.get("revision")).get("reason")),
    )


def summary(f: Fact) -> str:
    """One plain line on what the record says."""
    unit = unit_of(f.metric or "")
    v = "?" if f.value is None else f"{f.value:.3g}"
    thr = "?" if f.threshold is None else f"{f.threshold:.3g}"
    if f.kind == "maintenance":
        return f"repair recorded: {f.note}" if f.note else "repair recorded"
    if f.kind == "sensor_fault":
        if f.state == "cleared":
            return f"sensor {f.sensor} answers again"
        return f"sensor {f.sensor} not answering ({v} failed polls): the machine is not watched"
    if f.state == "cleared":
        return f"{f.kind} alert cleared: {f.metric} {v} {unit} under {thr} {unit}".rstrip()
    if f.revision:
        return f"critical revised to a warning: {f.revision}"
    if f.metric == TTF_METRIC and f.value is not None and f.threshold is not None:
        return (
            f"time to failure {duration(f.value)}, under the planning horizon "
            f"{duration(f.threshold)}"
        )
    if f.kind == "trend":
        if f.metric == HEALTH:
            return (
                f"early warning: health index {v} over its alarm level {thr} (departs from "
                "its learned baseline)"
            )
        return f"early warning: {f.metric} {v} {unit} over its alarm level {thr} {unit}".rstrip()
    if f.kind == "severity" and f.zone:
        meaning = {"C": "plan maintenance", "D": "damage likely"}.get(f.zone, "")
        return f"zone {f.zone} ({meaning}): {v} {unit} at or over {thr} {unit} ({f.standard})"
    return f"{f.kind} {f.state}: {f.metric} {v} {unit}".rstrip()
