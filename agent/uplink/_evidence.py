"""A work order's description: the alert's evidence in words a maintenance planner reads.

Plain text, one fact per line, from the stored record alone (and the asset's zone table),
so it is the same on every retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from agent.analysis.drafts import metric_unit
from agent.analysis.severity import ZoneTable
from agent.demo_story import duration, record_line, record_zone

LABELS = {
    "velocity_rms_mm_s": "velocity RMS",
    "velocity_peak_mm_s": "velocity peak",
    "accel_rms_g": "acceleration RMS",
    "accel_peak_g": "acceleration peak",
    "hf_accel_rms_g": "high-frequency acceleration RMS",
    "kurtosis": "kurtosis",
    "crest_factor": "crest factor",
    "temperature_c": "temperature",
    "peak_frequency_hz": "dominant frequency",
    "envelope_bpfo_g": "envelope at the outer-race fault frequency",
    "envelope_bpfi_g": "envelope at the inner-race fault frequency",
    "envelope_bsf_g": "envelope at the ball-spin fault frequency",
    "envelope_ftf_g": "envelope at the cage fault frequency",
    "health_index": "health index",
}


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _value(metric: str, v: Any) -> str:
    if not isinstance(v, int | float) or isinstance(v, bool):
        return str(v)
    unit = metric_unit(metric)
    return _num(v) if unit == "1" else f"{_num(v)} {unit}"


def _label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " "))


def _when(ts: str) -> str:
    """'2026-11-25 18:44:17 UTC' from a record's timestamp."""
    return f"{ts[:10]} {ts[11:19]} UTC"


def _vibration(rec: Mapping[str, Any], tables: Mapping[str, ZoneTable]) -> str | None:
    zone, v = record_zone(rec, tables)
    if v is None:
        return None
    line = f"Vibration: velocity RMS {_value('velocity_rms_mm_s', v)}, zone {zone}"
    table = tables.get(rec["asset"]["id"])
    if table is not None:
        line += (
            f" ({table.standard}: zone B from {_num(table.ab)}, C from {_num(table.bc)}, "
            f"D from {_num(table.cd)} mm/s)"
        )
    return line + "."


def _estimate(rec: Mapping[str, Any]) -> str:
    ttf = rec.get("time_to_failure")
    if not ttf:
        reason = rec.get("no_estimate_reason") or "no trend yet"
        return f"No failure estimate yet: {reason}."
    metric = str(ttf["failure_metric"])
    line = (
        f"Estimated failure: {duration(ttf['hours'])} after detection (95 % bounds "
        f"{duration(ttf['lower_hours'])} to {duration(ttf['upper_hours'])}), when "
        f"{_label(metric)} reaches {_value(metric, ttf['failure_threshold'])} "
        f"(model {ttf['model']})."
    )
    basis = ((rec.get("evidence") or {}).get("time_to_failure_basis") or {}).get("summary")
    return f"{line} Basis: {basis}." if basis else line


def _escalation(rec: Mapping[str, Any], zone: str) -> str | None:
    if rec["state"] != "escalated":
        return None
    sev = rec.get("severity") or {}
    if sev.get("metric") == "time_to_failure_hours" and sev.get("threshold"):
        return (
            "Escalated: the time to failure fell under the planning horizon "
            f"({duration(float(sev['threshold']))})."
        )
    return f"Escalated: now zone {zone}." if rec["kind"] == "severity" else "Escalated."


def _progression(rec: Mapping[str, Any]) -> str | None:
    p = rec.get("progression")
    if not p:
        return None
    return (
        f"Progression: {_num(p['rate_per_day'])} {p['unit']} over the last "
        f"{duration(p['window_hours'])}."
    )


def _health(evidence: Mapping[str, Any]) -> str | None:
    hi = evidence.get("health_index")
    if not isinstance(hi, Mapping) or hi.get("value") is None:
        return None
    feats = ", ".join(_label(f) for f in hi.get("features") or [])
    line = (
        f"Health index: {_num(hi['value'])} against its alarm level {_num(hi['alarm_level'])} "
        f"(departure from the machine's own learned baseline{', from ' + feats if feats else ''})"
    )
    onset = evidence.get("onset_at")
    return line + (f"; degradation since {_when(onset)}." if onset else ".")


def _features(evidence: Mapping[str, Any]) -> list[str]:
    out = []
    feats = evidence.get("features")
    if isinstance(feats, Mapping) and feats:
        order = [k for k in LABELS if k in feats] + sorted(k for k in feats if k not in LABELS)
        out.append(
            "Measured at detection: "
            + ", ".join(f"{_label(k)} {_value(k, feats[k])}" for k in order)
            + "."
        )
    freqs = evidence.get("fault_frequencies_hz")
    if isinstance(freqs, Mapping) and freqs:
        out.append(
            "Bearing fault frequencies: "
            + ", ".join(f"{k.upper()} {_value('x_hz', v)}" for k, v in sorted(freqs.items()))
            + "."
        )
    return out


def description(
    rec: Mapping[str, Any],
    tables: Mapping[str, ZoneTable],
    horizons: Mapping[str, float],
    due_at: datetime,
    due_basis: str,
    *,
    site: str | None = None,
) -> str:
    """The description of the work order for one alert record.

    Args:
        rec: the alert record, as stored.
        tables: zone boundaries by asset id (a zone from a velocity when the record has none).
        horizons: planning horizons by asset id (for the wording of an escalation).
        due_at: the due date; due_basis: how it was set, in words.
        site: the gateway's site, when configured.
    """
    evidence = rec.get("evidence") or {}
    zone, _ = record_zone(rec, tables)
    sensor = rec["sensor"]
    where = f" at site {site}" if site else ""
    lines: list[str | None] = [
        record_line(rec, tables, horizons),
        "",
        f"Plan the repair by {due_at:%Y-%m-%d %H:%M} UTC: {due_basis}.",
        _escalation(rec, zone),
        _vibration(rec, tables),
        _estimate(rec),
        _progression(rec),
        _health(evidence),
        *_features(evidence),
        f"Alert {rec['alert_id']} ({rec['kind']} {rec['state']}) from gateway "
        f"{rec['gateway_id']}{where}, sensor {sensor['id']} channel {sensor['channel']} "
        f"({sensor['transport']}), detected {_when(rec['detected_at'])}.",
    ]
    return "\n".join(line for line in lines if line is not None)
