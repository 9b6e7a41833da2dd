"""Cases: the stored records of one asset grouped into episodes a portfolio can count.

A case is one episode of one asset, from its first detection to its repair:

- Records are taken in the order of their `detected_at` (the gateway's clock), not of
  their arrival: a backlog drained after an outage, tier 1 first, lands where it belongs.
- A severity or trend alert that is raised or escalated opens a case when the asset has
  none open; every record of the asset while it is open belongs to it (alerts of every
  sensor and channel, escalations, clears, sensor faults).
- The agent's `maintenance` record closes the case as **repaired**. A repair after every
  alert had cleared still closes that case if a planner confirmed it.
- When every alert of an unconfirmed case has cleared without a repair, the case is
  **cleared** (the condition went back under its thresholds). A confirmed case stays open
  (**confirmed**) until a repair, and later detections join it: a confirmed finding does
  not go away because the vibration dropped for a while.
- A detection after a repair (or after a clear) opens a new case that names the one it
  follows and how long after it came: a repair that did not hold shows.
- A planner's confirmation (POST /v1/cases/{id}/confirm) is kept against the alert that
  opened the case at that moment, so it stays on the right case when late records arrive.
- Sensor faults appear on the case they fall in; every monitoring gap is also listed on
  its own, cases or not. A maintenance record with no case to close is listed apart.

States: open (detected, not confirmed), confirmed, repaired, cleared.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from simulators._case_facts import (
    Estimate,
    Fact,
    fact_of,
    format_time,
    hours_between,
    parse_time,
    summary,
)
from simulators._case_measures import (
    ZONE_ORDER,
    classify,
    downtime,
    failure_reached,
    monitoring_gaps,
    point,
    repair_verdict,
    zone_limits,
)
from simulators.backend_config import BackendConfig

STATES = ("open", "confirmed", "repaired", "cleared")


def case_id(alert_id: str) -> str:
    """The id of a case opened by `alert_id`: stable, URL-safe for any alert id."""
    return "c-" + hashlib.sha256(alert_id.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Confirmation:
    """A planner's confirmation of the case that `anchor_alert_id` belongs to."""

    anchor_alert_id: str
    at: datetime
    by: str
    note: str


@dataclass(slots=True)
class _Episode:
    facts: list[Fact] = field(default_factory=list)
    active: set[tuple[str, str, str]] = field(default_factory=set)
    cleared_at: datetime | None = None
    repair: Fact | None = None

    def ids(self) -> set[str]:
        return {f.alert_id for f in self.facts}


def _group(facts: list[Fact], confirmed: set[str]) -> tuple[list[_Episode], list[Fact]]:
    """Episodes of one asset's facts (time order) and the repairs with no case."""
    episodes: list[_Episode] = []
    orphans: list[Fact] = []
    current: _Episode | None = None
    last: _Episode | None = None

    def held(ep: _Episode | None) -> bool:  # closed by clears, but a planner confirmed it
        return ep is not None and ep.repair is None and bool(ep.ids() & confirmed)

    for f in facts:
        if f.detects:
            if current is None:
                if held(last):
                    current = last
                else:
                    current = _Episode()
                    episodes.append(current)
            current.facts.append(f)
            current.active.add(f.key)
            current.cleared_at = None
        elif f.kind == "maintenance":
            target = current if current is not None else (last if held(last) else None)
            if target is None:
                orphans.append(f)
                continue
            target.facts.append(f)
            target.repair = f
            last, current = target, None
        elif current is not None:
            current.facts.append(f)
            if f.state == "cleared" and f.key in current.active:
                current.active.discard(f.key)
                if not current.active:
                    current.cleared_at = f.at
                    last, current = current, None
        elif last is not None and last.repair is None and f.kind != "sensor_fault":
            last.facts.append(f)  # a late or repeated clear of the last case
    return episodes, orphans


@dataclass(frozen=True, slots=True)
class Portfolio:
    """Every case, monitoring gap and unmatched repair the stored records make."""

    cases: list[dict[str, Any]]
    monitoring_gaps: list[dict[str, Any]]
    unmatched_maintenance: list[dict[str, Any]]
    skipped_records: int


def _earliest_current(facts: list[Fact]) -> Estimate | None:
    """Of each sensor channel's last estimate, the one that expects the failure first: an
    axis that reports later with a later failure does not overrule one that expects it
    sooner (the repair is judged by this one's lower bound)."""
    last: dict[tuple[str, str], Estimate] = {}
    for f in facts:
        if f.estimate is not None:
            last[(f.sensor, f.channel)] = f.estimate
    return min(last.values(), key=lambda e: e.earliest_failure_at, default=None)


def _case(
    ep: _Episode,
    prev: dict[str, Any] | None,
    confirmations: list[Confirmation],
    limits: Mapping[str, float],
    gaps: list[dict[str, Any]],
) -> dict[str, Any]:
    first = ep.facts[0]
    ids = ep.ids()
    conf = min(
        (c for c in confirmations if c.anchor_alert_id in ids), key=lambda c: c.at, default=None
    )
    estimates = [f.estimate for f in ep.facts if f.estimate is not None]
    latest = estimates[-1] if estimates else None
    reached = failure_reached(ep.facts, estimates)
    repair = ep.repair
    state = (
        "repaired" if repair else "confirmed" if conf else "cleared" if ep.cleared_at else "open"
    )
    closed_at = repair.at if repair else ep.cleared_at if state == "cleared" else None
    verdict = repair_verdict(repair, _earliest_current(ep.facts), reached)
    window_end = verdict.window_end
    progressions = [(f, f.progression) for f in ep.facts if f.progression is not None]
    zones = [z for f in ep.facts if (z := f.zone or classify(f.velocity, limits)) in ZONE_ORDER]
    velocities = [f.velocity for f in ep.facts if f.velocity is not None]
    end = format_time(closed_at) if closed_at else None
    start = format_time(first.at)
    case: dict[str, Any] = {
        "id": case_id(first.alert_id),
        "asset": {"id": first.asset_id, "name": ep.facts[-1].asset_name, "tier": ep.facts[-1].tier},
        "state": state,
        "opened_at": start,
        "closed_at": end,
        "gateways": sorted({f.gateway_id for f in ep.facts}),
        "records": len(ep.facts),
        "detection": {
            **point(first, limits),
            "progression": first.progression,
            "no_estimate_reason": first.no_estimate_reason if first.estimate is None else None,
        },
        "first_estimate": estimates[0].to_dict() if estimates else None,
        "latest_estimate": latest.to_dict() if latest else None,
        "progression": {
            "first": None
            if not progressions
            else {"at": format_time(progressions[0][0].at), **progressions[0][1]},
            "latest": None
            if not progressions
            else {"at": format_time(progressions[-1][0].at), **progressions[-1][1]},
        },
        "peak": {
            "zone": max(zones, key=ZONE_ORDER.__getitem__) if zones else None,
            "velocity_mm_s": max(velocities) if velocities else None,
        },
        "escalations": [
            {
                "at": format_time(f.at),
                "alert_id": f.alert_id,
                "kind": f.kind,
                "zone": f.zone or classify(f.velocity, limits),
                "summary": summary(f),
            }
            for f in ep.facts
            if f.state == "escalated" and f.kind in ("severity", "trend")
        ],
        "clears": [
            {
                "at": format_time(f.at),
                "alert_id": f.alert_id,
                "kind": f.kind,
                "sensor": f.sensor,
                "channel": f.channel,
            }
            for f in ep.facts
            if f.state == "cleared" and f.kind in ("severity", "trend")
        ],
        "alerts_cleared_at": format_time(ep.cleared_at) if ep.cleared_at else None,
        "monitoring_gaps": [
            g
            for g in gaps
            if (end is None or g["from"] <= end) and (g["to"] is None or g["to"] >= start)
        ],
        "confirmation": None
        if conf is None
        else {
            "at": format_time(conf.at),
            "by": conf.by,
            "note": conf.note,
            "hours_after_detection": hours_between(first.at, conf.at),
        },
        "repair": None
        if repair is None
        else {
            "at": format_time(repair.at),
            "alert_id": repair.alert_id,
            "note": repair.note,
        },
        "lead_time_hours": hours_between(first.at, repair.at) if repair else None,
        "failure_reached_at": format_time(reached.at) if reached else None,
        "repair_before_failure": verdict.before_failure,
        "repair_margin_hours": verdict.margin_hours,
        "repair_window": None
        if window_end is None
        else {
            "from": start,
            "to": format_time(window_end),
            "hours": hours_between(first.at, window_end),
        },
        "follows": None
        if prev is None
        else {
            "case": prev["id"],
            "closed_as": prev["state"],
            "hours_after": None
            if prev["closed_at"] is None
            else hours_between(parse_time(prev["closed_at"]), first.at),
        },
        "aliases": sorted(case_id(i) for i in ids),
        "timeline": [point(f, limits) for f in ep.facts],
    }
    return case


def build_portfolio(
    records: Iterable[Mapping[str, Any]],
    confirmations: Iterable[Confirmation],
    config: BackendConfig,
) -> Portfolio:
    """Group stored records into cases (see the module docstring).

    Args:
        records: stored alert records, any order.
        confirmations: planners' confirmations.
        config: the backend's YAML (downtime costs, zone limits).
    """
    by_asset: dict[str, list[Fact]] = {}
    skipped = 0
    for rec in records:
        f = fact_of(rec)
        if f is None:
            skipped += 1
            continue
        by_asset.setdefault(f.asset_id, []).append(f)
    confs = list(confirmations)
    confirmed = {c.anchor_alert_id for c in confs}
    cases: list[dict[str, Any]] = []
    all_gaps: list[dict[str, Any]] = []
    orphans: list[dict[str, Any]] = []
    for asset_id, facts in sorted(by_asset.items()):
        facts.sort(key=lambda f: (f.at, f.gateway_id, f.seq))
        costs = config.asset(asset_id)
        limits = zone_limits(facts, costs)
        gaps = monitoring_gaps(facts)
        all_gaps += gaps
        episodes, repairs = _group(facts, confirmed)
        orphans += [
            {"asset": f.asset_id, "at": format_time(f.at), "alert_id": f.alert_id, "note": f.note}
            for f in repairs
        ]
        prev: dict[str, Any] | None = None
        for ep in episodes:
            case = _case(ep, prev, confs, limits, gaps)
            case["zone_limits_mm_s"] = dict(limits)
            downtime(case, costs, config.currency)
            cases.append(case)
            prev = case
    return Portfolio(cases, all_gaps, orphans, skipped)
