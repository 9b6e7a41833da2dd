"""Alert drafts of the Monitor: severity, trend and maintenance records of one channel.

Every draft carries the channel's current progression and time to failure, or the reason
there is none: time_to_failure is set only from a trend-based estimate (TrendEstimate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime

from agent.analysis.channel import Channel
from agent.analysis.lifecycle import LifecycleState
from agent.analysis.severity import LEVEL_NAMES
from agent.analysis.trend import TrendEstimate
from agent.records import (
    AlertDraft,
    AssetRef,
    Progression,
    SensorRef,
    Severity,
    TimeToFailure,
    format_ts,
)
from drivers.reading import VELOCITY_RMS, Reading

__all__ = [
    "HEALTH_METRIC",
    "SEVERITY_METRIC",
    "closed_alert",
    "estimate_fields",
    "maintenance_draft",
    "metric_unit",
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
    """(progression, time to failure, no-estimate reason) of the channel's estimate."""
    est = ch.estimate
    if isinstance(est, TrendEstimate):
        metric, threshold = ch.failure()
        return (
            Progression(round(est.rate_per_day, 6), f"{metric_unit(metric)} per day",
                        round(est.window_hours, 5)),
            TimeToFailure(round(est.hours, 5), round(est.lower_hours, 5),
                          round(est.upper_hours, 5), metric, threshold, est.model),
            None,
        )  # fmt: skip
    return None, None, est.reason if est is not None else "no reading analysed yet"


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


def trend_draft(
    ch: Channel, reading: Reading, feats: Mapping[str, float], hi: float | None,
    transition: str, level: int,
) -> AlertDraft:  # fmt: skip
    """The record of a trend (health index / time to failure) transition."""
    hi_level = ch.hi.level or 0.0
    zone = ch.table.zone(feats[SEVERITY_METRIC])
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
    if transition == "escalated" and isinstance(ch.estimate, TrendEstimate):
        sev = Severity("critical", zone, "time to failure under the planning horizon",
                       "time_to_failure_hours", round(ch.estimate.hours, 5),
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
            sev = Severity(name, None, "learned baseline (health index)", HEALTH_METRIC,  # type: ignore[arg-type]
                           round(hi or 0.0, 6), round(hi_level * keep, 6))  # fmt: skip
    return _draft(ch, reading, feats, "trend", transition, sev, extra)


def maintenance_draft(
    asset: AssetRef, sensor: SensorRef, at: datetime, note: str,
    closed: list[dict[str, object]], reset: list[tuple[str, str]],
) -> AlertDraft:  # fmt: skip
    """The one record of a maintenance event (kind "maintenance", state "cleared")."""
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
        },
    )
