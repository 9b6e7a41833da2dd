"""What a case measures, from its facts: zones, timeline points, failure, downtime avoided."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from simulators._case_facts import VELOCITY, Estimate, Fact, format_time, hours_between, summary
from simulators.backend_config import AssetCosts

ZONE_ORDER = {"A": 0, "B": 1, "C": 2, "D": 3}


def zone_limits(facts: Iterable[Fact], costs: AssetCosts) -> dict[str, float]:
    """ISO zone limits of an asset: from the backend's YAML, else learned from its records.

    A severity raise into zone C gives the B/C limit, one into zone D the C/D limit.
    """
    if costs.zones_mm_s is not None:
        return costs.zones_mm_s.model_dump()
    out: dict[str, float] = {}
    for f in facts:
        iso = f.kind == "severity" and f.metric == VELOCITY and f.threshold is not None
        if iso and f.detects and f.zone in ("C", "D"):
            out.setdefault("bc" if f.zone == "C" else "cd", f.threshold)  # type: ignore[arg-type]
    return out


def classify(velocity: float | None, limits: Mapping[str, float]) -> str | None:
    """The zone of a velocity under known limits; "A/B" when only B/C is known."""
    if velocity is None or "bc" not in limits:
        return None
    if "cd" in limits and velocity >= limits["cd"]:
        return "D"
    if velocity >= limits["bc"]:
        return "C"
    if "ab" in limits:
        return "B" if velocity >= limits["ab"] else "A"
    return "A/B"


def monitoring_gaps(facts: list[Fact]) -> list[dict[str, Any]]:
    """Sensor-fault intervals of one asset (open ones have "to": null)."""
    out: list[dict[str, Any]] = []
    open_at: dict[str, dict[str, Any]] = {}
    for f in facts:
        if f.kind != "sensor_fault":
            continue
        if f.state == "raised" and f.sensor not in open_at:
            gap = {"asset": f.asset_id, "sensor": f.sensor, "from": format_time(f.at), "to": None}
            open_at[f.sensor] = gap
            out.append(gap)
        elif f.state == "cleared" and f.sensor in open_at:
            open_at.pop(f.sensor)["to"] = format_time(f.at)
    return out


def point(f: Fact, limits: Mapping[str, float]) -> dict[str, Any]:
    return {
        "at": format_time(f.at),
        "alert_id": f.alert_id,
        "kind": f.kind,
        "state": f.state,
        "sensor": f.sensor,
        "channel": f.channel,
        "level": f.level,
        "zone": f.zone or classify(f.velocity, limits),
        "velocity_mm_s": f.velocity,
        "health_index": f.health_index,
        "health_alarm_level": f.health_alarm,
        "severity": None
        if f.metric is None
        else {
            "metric": f.metric,
            "value": f.value,
            "threshold": f.threshold,
            "standard": f.standard,
        },
        "time_to_failure": None if f.estimate is None else f.estimate.to_dict(),
        "summary": summary(f),
    }


def failure_reached(facts: list[Fact], estimates: list[Estimate]) -> Fact | None:
    """The first record at or past the failure threshold the estimates aimed at."""
    aim = next((e for e in estimates if e.failure_metric and e.failure_threshold is not None), None)
    if aim is None:
        return None
    for f in facts:
        value = f.metric_value(aim.failure_metric or "")
        if (
            value is not None
            and aim.failure_threshold is not None
            and (value >= aim.failure_threshold)
        ):
            return f
    return None


def downtime(case: dict[str, Any], costs: AssetCosts, currency: str) -> None:
    """Downtime avoided: only for a repair proven to precede the estimated failure."""
    case["downtime_avoided"] = None
    if case["repair_before_failure"] is not True:
        case["downtime_avoided_reason"] = (
            "not repaired yet"
            if case["repair"] is None
            else "the repair did not come before the estimated failure"
            if case["repair_before_failure"] is False
            else "no time-to-failure estimate before the repair"
        )
        return
    unplanned, planned = costs.unplanned_downtime_hours, costs.planned_downtime_hours
    if unplanned is None or planned is None:
        case["downtime_avoided_reason"] = (
            "unplanned_downtime_hours and planned_downtime_hours are not set for this asset "
            "in the backend's YAML"
        )
        return
    hours = max(unplanned - planned, 0.0)
    cost = None if costs.cost_per_hour is None else round(hours * costs.cost_per_hour, 2)
    case["downtime_avoided"] = {
        "hours": hours,
        "cost": cost,
        "currency": currency,
        "basis": f"unplanned {unplanned:g} h - planned {planned:g} h"
        + ("" if cost is None else f", x {costs.cost_per_hour:g} {currency}/h"),
    }
    case["downtime_avoided_reason"] = None if cost is not None else "no cost_per_hour set"


@dataclass(frozen=True, slots=True)
class RepairVerdict:
    """Whether a repair came in time, and the window it had."""

    before_failure: bool | None  # None: no repair yet, or no estimate to judge by
    margin_hours: float | None  # earliest estimated failure - repair (negative: late)
    window_end: datetime | None  # the earliest estimated failure, or the failure if first


def repair_verdict(
    repair: Fact | None, latest: Estimate | None, reached: Fact | None
) -> RepairVerdict:
    """Judge a repair against the estimate before it that expects the failure first (its
    lower bound; `latest`: of each sensor axis's last estimate, that one) and against the
    failure threshold, if the records show it reached first."""
    ends = [t for t in (latest and latest.earliest_failure_at, reached and reached.at) if t]
    window_end = min(ends) if ends else None
    if repair is None:
        return RepairVerdict(None, None, window_end)
    margin = None if latest is None else hours_between(repair.at, latest.earliest_failure_at)
    if reached is not None and reached.at <= repair.at:
        return RepairVerdict(False, margin, window_end)
    before = None if latest is None else repair.at < latest.earliest_failure_at
    return RepairVerdict(before, margin, window_end)
