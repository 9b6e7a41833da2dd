"""The demo's plain-language lines: each alert as a maintenance manager reads it, the zone
legend, and the closing summary of each case the backend built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.analysis.severity import ZoneTable
from agent.records import parse_ts

LEGEND = (
    "Zones (ISO 10816-3 vibration severity): A new machine | B fine for long-term operation | "
    "C plan maintenance | D damage likely, stop"
)
_UNITS = (("s", 1 / 3600, 120 / 3600), ("min", 1 / 60, 2.0), ("h", 1.0, 48.0), ("d", 24.0, None))


def _unit(hours: float) -> tuple[str, float]:
    for name, size, below in _UNITS:
        if below is None or abs(hours) < below:
            return name, size
    return "d", 24.0


def _fmt(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 10 and value != int(value) else f"{value:.0f}"


def duration(hours: float) -> str:
    """'27 s', '14 min', '8.5 h', '3.2 d'."""
    name, size = _unit(hours)
    return f"{_fmt(hours / size)} {name}"


def estimate(ttf: Mapping[str, Any]) -> str:
    """'estimated failure in 8 h (5-13 h)': the central value and the 95 % bounds."""
    name, size = _unit(ttf["hours"])
    lo, mid, hi = (_fmt(ttf[k] / size) for k in ("lower_hours", "hours", "upper_hours"))
    return f"estimated failure in {mid} {name} ({lo}-{hi} {name})"


def _outlook(rec: Mapping[str, Any]) -> str:
    ttf = rec.get("time_to_failure")
    if ttf:
        return estimate(ttf)
    reason = str(rec.get("no_estimate_reason") or "no trend yet")
    if "at or past its failure threshold" in reason:
        return "the failure threshold is reached"
    return f"no failure estimate yet ({reason.split(':')[0]})"


def record_zone(
    rec: Mapping[str, Any], tables: Mapping[str, ZoneTable]
) -> tuple[str, float | None]:
    """The record's ISO zone (from the asset's table when the record has none) and velocity."""
    sev = rec.get("severity") or {}
    feats = (rec.get("evidence") or {}).get("features") or {}
    v = sev.get("value") if sev.get("metric") == "velocity_rms_mm_s" else None
    v = v if v is not None else feats.get("velocity_rms_mm_s")
    zone = sev.get("zone")
    table = tables.get(rec["asset"]["id"])
    if zone is None and table is not None and v is not None:
        zone = table.zone(v)
    return zone or "?", v


def record_line(
    rec: Mapping[str, Any], tables: Mapping[str, ZoneTable], horizons: Mapping[str, float]
) -> str:
    """One alert record as a line a maintenance manager understands."""
    asset = rec["asset"]
    who = f"{asset['id']} {asset['name']}"
    kind, state = rec["kind"], rec["state"]
    sev = rec.get("severity") or {}
    sensor = rec["sensor"]
    where = f" [{sensor['id']} {sensor['channel']}]"
    zone, v = record_zone(rec, tables)
    level = f"zone {zone}, {v:.2f} mm/s" if v is not None else f"zone {zone}"
    if kind == "maintenance":
        note = (rec.get("evidence") or {}).get("note") or "no note"
        return f'{who}: repair recorded - "{note}"; the agent relearns its baseline from now'
    if kind == "sensor_fault":
        if state == "cleared":
            return f"{who}: sensor {sensor['id']} answers again, the machine is watched again"
        return f"{who}: sensor {sensor['id']} not answering - the machine is not watched"
    if state == "cleared":
        return f"{who}: {kind} alert cleared, back to normal ({level}){where}"
    if kind == "trend" and sev.get("metric") == "time_to_failure_hours":
        horizon = duration(horizons.get(asset["id"], sev.get("threshold") or 0.0))
        return f"{who}: failure expected within the planning horizon ({horizon}) - " + (
            f"{_outlook(rec)}; {level}{where}"
        )
    if kind == "trend":
        return (
            f"{who}: early warning - vibration departs from its baseline ({level}); "
            f"{_outlook(rec)}{where}"
        )
    meaning = {"C": "plan maintenance", "D": "damage likely"}.get(zone, "")
    threshold = sev.get("threshold")
    over = f" over {threshold:.1f} mm/s" if isinstance(threshold, int | float) else ""
    vib = f"vibration {v:.2f} mm/s{over}" if v is not None else "vibration"
    return f"{who}: zone {zone} - {vib}, {meaning}; {_outlook(rec)}{where}"


def case_summary(case: Mapping[str, Any], demo_start_s: float) -> list[str]:
    """The closing lines of one case from GET /v1/cases (times relative to the demo start)."""
    asset, det = case["asset"], case["detection"]
    lines = [f"{asset['id']} {asset['name']} (tier {asset['tier']}): case {case['state']}"]
    into = parse_ts(det["at"]).timestamp() - demo_start_s
    finding = "early warning" if det["kind"] == "trend" else f"{det['kind']} alert"
    zone = f"zone {det['zone']}" if det["zone"] else "zone ?"
    vel = f", {det['velocity_mm_s']:.2f} mm/s" if det["velocity_mm_s"] is not None else ""
    lines.append(
        f"  detected   {det['at'][11:19]} UTC ({into:.1f} s into the demo) as {finding} "
        f"({zone}{vel})"
    )
    if case["confirmation"]:
        c = case["confirmation"]
        lines.append(
            f"  confirmed  {duration(c['hours_after_detection'])} after detection by {c['by']}"
        )
    if case["repair"]:
        lead = f"  repaired   {duration(case['lead_time_hours'])} after detection (lead time)"
        if case["repair_before_failure"] is True:
            lead += (
                f", {duration(case['repair_margin_hours'])} before the earliest estimated failure"
            )
        elif case["repair_before_failure"] is False:
            lead += ", NOT before the estimated failure"
        lines.append(lead)
    window = case["repair_window"]
    if window:
        lines.append(
            f"  repair window {duration(window['hours'])}: from detection to the earliest "
            f"estimated failure ({window['to'][11:19]} UTC)"
        )
    saved = case["downtime_avoided"]
    if saved:
        cost = f", {saved['currency']} {saved['cost']:,.0f}" if saved["cost"] is not None else ""
        lines.append(f"  downtime avoided {saved['hours']:g} h{cost} ({saved['basis']})")
    else:
        lines.append(f"  downtime avoided: none counted ({case['downtime_avoided_reason']})")
    return lines
