"""Alert drafts of the Monitor: severity, trend and maintenance records of one channel.

Every draft carries the channel's current time to failure (agent.analysis.ttf.Estimate) and
its basis in the evidence, or the reason there is none; progression is set only once a
degradation trend exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta

from agent.analysis.channel import STOPPED_SHARE, Channel
from agent.analysis.lifecycle import LifecycleState
from agent.analysis.severity import (
    LEVEL_NAMES,
    ZONE_LEVEL,
    velocity_band_hz,
    velocity_unresolved_reason,
)
from agent.analysis.trend import NoEstimate
from agent.analysis.ttf import Estimate
from agent.records import (
    AlertDraft,
    AssetRef,
    Progression,
    SensorRef,
    Severity,
    TimeToFailure,
    format_ts,
    parse_ts,
)
from drivers.reading import VELOCITY_RMS, Reading

__all__ = [
    "HEALTH_METRIC",
    "SEVERITY_METRIC",
    "closed_alert",
    "current_severity",
    "estimate_evidence",
    "estimate_fields",
    "maintenance_draft",
    "metric_unit",
    "revision_evidence",
    "severity_draft",
    "trend_draft",
]

SEVERITY_METRIC = VELOCITY_RMS
HEALTH_METRIC = "health_index"
_UNITS = (("_mm_s", "mm/s"), ("_g", "g"), ("_c", "degC"), ("_hz", "Hz"))


def metric_unit(metric: str) -> str:
    """The unit of a canonical feature name (from its suffix)."""
    for suffix, unit in _UNITS:
        if metric.endswith(suffix):
            return unit
    return "1"


def closed_alert(sensor: str, channel: str, kind: str, st: LifecycleState) -> dict[str, object]:
    """Evidence entry of an alert closed by a maintenance event."""
    return {
        "sensor": sensor,
        "channel": channel,
        "kind": kind,
        "level": LEVEL_NAMES[min(st.active, 2)],
    }


def estimate_fields(ch: Channel) -> tuple[Progression | None, TimeToFailure | None, str | None]:
    """(progression, time to failure, reason) of the channel's estimate; the reason says
    why progression (and time to failure, when there is none) is missing."""
    est = ch.estimate_now()  # relative to the record's time, not to the bin's estimate
    if not isinstance(est, Estimate):
        if ch.view is not None and ch.view.stopped and not ch.hi.ready:
            return None, None, ch.learning(True)  # no estimate was made: it waits to learn
        return None, None, est.reason if est is not None else "no reading analysed yet"
    metric, threshold = ch.failure()
    ttf = TimeToFailure(round(est.hours, 5), round(est.lower_hours, 5),
                        round(est.upper_hours, 5), metric, threshold, est.model)  # fmt: skip
    if est.rate_per_day is None or est.window_hours is None:
        return None, ttf, est.basis
    unit = f"{metric_unit(metric)} per day"
    return Progression(round(est.rate_per_day, 6), unit, round(est.window_hours, 5)), ttf, None


def estimate_evidence(ch: Channel) -> dict[str, object]:
    """The record's evidence about its time to failure: what it rests on, term shares."""
    est = ch.estimate
    if not isinstance(est, Estimate):
        return {}
    basis: dict[str, object] = {"summary": est.basis, "terms": est.terms}
    view = ch.view
    if view is not None and math.isfinite(ch.estimate_s):
        # When the posterior was computed (hours and bounds are already counted down to
        # the record's own time): a planner can see how fresh the figure is.
        at = view.at - timedelta(seconds=max(ch.now_s - ch.estimate_s, 0.0))
        basis["estimated_at"] = format_ts(at)
    return {"time_to_failure_basis": basis}


def current_severity(ch: Channel) -> Severity:
    """The channel's ISO severity as of its last reading (zone None where not measured)."""
    assert ch.view is not None
    zone = ch.view.zone
    if ch.view.stopped:
        note = (
            f"not measured: the machine is stopped ({_stop_rule(ch)}), so no ISO zone comes from it"
        )
        standard = f"{ch.table.standard}: {note}"
        return Severity("info", None, standard, SEVERITY_METRIC, ch.view.value, ch.table.bc)
    if zone is None:
        band = velocity_band_hz(ch.asset.machine.rpm)
        note = velocity_unresolved_reason(ch.velocity_periods or 0.0, band)
        standard = f"{ch.table.standard}: {note}"
        return Severity("info", None, standard, SEVERITY_METRIC, ch.view.value, ch.table.bc)
    threshold = ch.table.cd if zone in ("C", "D") else ch.table.bc
    name = LEVEL_NAMES[ZONE_LEVEL[zone]]
    return Severity(name, zone, ch.table.standard, SEVERITY_METRIC, ch.view.value, threshold)


def _stop_rule(ch: Channel) -> str:
    """Which limit said the machine is stopped (Channel.stop_below)."""
    floor = ch.asset.machine.running_above_mm_s
    base = ch.hi.velocity_median if ch.hi.ready else None
    if base is None or floor >= STOPPED_SHARE * base:
        return f"velocity RMS under machine.running_above_mm_s {floor:g} mm/s"
    return f"velocity RMS below {STOPPED_SHARE:g} x its running baseline of {base:.3g} mm/s"


def _draft(
    ch: Channel, reading: Reading, feats: Mapping[str, float], kind: str,
    transition: str, severity: Severity, extra: dict[str, object],
) -> AlertDraft:  # fmt: skip
    progression, ttf, reason = estimate_fields(ch)
    return AlertDraft(
        asset=AssetRef(ch.asset.id, ch.asset.name, ch.asset.tier),
        sensor=ch.sensor,
        kind=kind,  # type: ignore[arg-type]
        state=transition,  # type: ignore[arg-type]
        detected_at=reading.timestamp,
        severity=severity,
        progression=progression,
        time_to_failure=ttf,
        no_estimate_reason=reason,
        evidence={
            "features": {k: round(v, 6) for k, v in feats.items() if math.isfinite(v)},
            **estimate_evidence(ch),
            **extra,
        },
    )


def severity_draft(
    ch: Channel, reading: Reading, feats: Mapping[str, float], zone: str,
    transition: str, level: int,
) -> AlertDraft:  # fmt: skip
    """The record of a severity (ISO zone) transition."""
    h = ch.asset.alerting.hysteresis
    value = feats[SEVERITY_METRIC]
    if transition == "cleared":
        threshold, name = ch.table.bc * (1 - h), "info"
    else:
        threshold, name = (ch.table.cd if level >= 2 else ch.table.bc), LEVEL_NAMES[level]
    sev = Severity(name, zone, ch.table.standard, SEVERITY_METRIC, value, threshold)  # type: ignore[arg-type]
    return _draft(ch, reading, feats, "severity", transition, sev, {})


def revision_evidence(
    ch: Channel,
    est: Estimate | NoEstimate | None,
    hours: float | None,
    escalated_at: str | None,
    upper: float | None = None,
) -> dict[str, object]:
    """evidence.revision of a critical taken back (agent.analysis.revision.revision): what
    the escalation said, when its failure was due, and why it no longer stands."""
    metric, threshold = ch.failure()
    value = ch.history.last()
    due = None
    latest = None
    if hours is not None and escalated_at is not None:
        due = format_ts(parse_ts(escalated_at) + timedelta(hours=hours))
    if upper is not None and escalated_at is not None:
        latest = format_ts(parse_ts(escalated_at) + timedelta(hours=upper))
    by = f"{due}, at the latest {latest}" if latest else f"{due}"
    horizon = ch.asset.planning_horizon_hours
    if isinstance(est, Estimate):
        now = f"the time to failure is now {est.hours:.4g} h, over the planning horizon"
    else:
        now = f"there is no time to failure now ({est.reason if est else 'no estimate'})"
    return {
        "revises": "critical",
        "escalated_at": escalated_at,
        "time_to_failure_hours_then": None if hours is None else round(hours, 5),
        "predicted_failure_at": due,
        "latest_failure_at": latest,  # the escalation's upper bound: revised only after it
        "reason": (
            f"the failure predicted by {by} did not come ({metric} "
            f"{'unknown' if value is None else f'{value:.4g}'} under its failure threshold "
            f"{threshold:g}) and {now} ({horizon:g} h): the critical is revised to a warning, "
            "same alert; an estimate under the horizon escalates it again"
        ),
    }


def trend_draft(
    ch: Channel, reading: Reading, feats: Mapping[str, float], hi: float | None,
    transition: str, level: int, *, revision: dict[str, object] | None = None,
    again: str | None = None,
) -> AlertDraft:  # fmt: skip
    """The record of a trend (health index / time to failure) transition; `revision`: a
    critical taken back to a warning (state "escalated", the only v1 state that goes on
    with the episode; severity warning; evidence.revision says what was revised and why);
    `again`: when this episode's first critical was sent, for a critical after a revision
    (evidence.re_escalation: the critical's CMMS work order is still open)."""
    hi_level = ch.hi.level or 0.0
    zone = ch.view.zone if ch.view is not None else None
    extra: dict[str, object] = {
        "health_index": {
            "value": None if hi is None else round(hi, 6),
            "alarm_level": round(hi_level, 6),
            "features": list(ch.hi.features),
            "rule": f"EWMA mean ln(value / baseline median) > max(median + "
            f"{ch.hi.tuning.k_mad:g} x 1.4826 MAD, {ch.hi.tuning.min_level:g})",
        },
        "onset_at": None if ch.onset_s is None else format_ts(
            datetime.fromtimestamp(ch.onset_s, tz=reading.timestamp.tzinfo)
        ),
    }  # fmt: skip
    if revision is not None:
        extra["revision"] = revision
    if again is not None:
        extra["re_escalation"] = {
            "first_critical_at": again,
            "reason": "this episode was critical before (revised to a warning since): "
            "the work order its first critical opened is still open",
        }
    told = ch.estimate_now()
    if transition == "escalated" and revision is None and isinstance(told, Estimate):
        sev = Severity("critical", zone, "time to failure under the planning horizon",
                       "time_to_failure_hours", round(told.hours, 5),
                       ch.asset.planning_horizon_hours)  # fmt: skip
    else:
        name = "info" if transition == "cleared" else LEVEL_NAMES[max(level, 1)]
        keep = 1 - ch.asset.alerting.hysteresis if transition == "cleared" else 1.0
        iso = ch.iso_alarm()
        extra["iso_20816_1_alarm_mm_s"] = None if iso is None else round(iso, 4)
        if ch.cause == SEVERITY_METRIC and iso is not None:
            standard = "ISO 20816-1 alarm from the learned baseline"
            value, threshold = feats[SEVERITY_METRIC], round(iso * keep, 4)
            sev = Severity(name, zone, standard, SEVERITY_METRIC, value, threshold)  # type: ignore[arg-type]
        else:
            sev = Severity(name, zone, "learned baseline (health index)", HEALTH_METRIC,  # type: ignore[arg-type]
                           round(hi or 0.0, 6), round(hi_level * keep, 6))  # fmt: skip
    return _draft(ch, reading, feats, "trend", transition, sev, extra)


def maintenance_draft(
    asset: AssetRef, sensor: SensorRef, at: datetime, note: str,
    closed: list[dict[str, object]], reset: list[tuple[str, str]],
    extra: dict[str, object] | None = None,
) -> AlertDraft:  # fmt: skip
    """The one record of a maintenance event (kind "maintenance", state "cleared");
    extra: more evidence (the replacement and its completed life)."""
    return AlertDraft(
        asset=asset,
        sensor=sensor,
        kind="maintenance",
        state="cleared",
        detected_at=at,
        severity=None,
        no_estimate_reason="maintenance: baseline and trend restart from this event",
        evidence={
            "note": note,
            "closed_alerts": closed,
            "reset_channels": [{"sensor": s, "channel": c} for s, c in sorted(reset)],
            **(extra or {}),
        },
    )
