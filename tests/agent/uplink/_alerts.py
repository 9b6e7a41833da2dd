"""Alert drafts of every kind and state, as the analysis writes them, for the CMMS tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from agent.records import AlertDraft, AssetRef, Progression, SensorRef, Severity, TimeToFailure

T0 = datetime(2026, 11, 21, 8, 15, 2, 123000, tzinfo=UTC)
STANDARD = "ISO 10816-3 group 2 rigid"
VELOCITY = "velocity_rms_mm_s"
BASIS = {"summary": "trend of velocity since onset", "terms": {"degradation_trend": 1.0}}
HEALTH = {"value": 0.246, "alarm_level": 0.2, "features": ["accel_rms_g", "hf_accel_rms_g"]}
ONSET = "2026-11-21T08:14:02.000Z"


def asset(tier: int = 1, aid: str = "press-7") -> AssetRef:
    return AssetRef(aid, "Press 7 main motor" if aid == "press-7" else f"Asset {aid}", tier)


def ttf(lower: float, hours: float | None = None, upper: float | None = None) -> TimeToFailure:
    """A time-to-failure estimate with the given lower bound (hours)."""
    hours = hours if hours is not None else lower * 1.4
    upper = upper if upper is not None else lower * 2.0
    return TimeToFailure(hours, lower, upper, VELOCITY, 7.1, "exponential")


def severity(
    zone: str = "C",
    state: str = "raised",
    *,
    tier: int = 1,
    aid: str = "press-7",
    velocity: float = 4.9,
    estimate: TimeToFailure | None = None,
    i: int = 0,
) -> AlertDraft:
    """An ISO severity alert (zone C raised, D escalated, cleared below B/C)."""
    level = {"C": "warning", "D": "critical"}.get(zone, "info")
    threshold = {"C": 2.8, "D": 4.5}.get(zone, 2.52)
    progression = Progression(0.31, "mm/s per day", 72.0) if estimate else None
    return AlertDraft(
        asset=asset(tier, aid),
        sensor=SensorRef("m1-de", "z", "modbus"),
        kind="severity",
        state=state,  # type: ignore[arg-type]
        detected_at=T0 + timedelta(seconds=i),
        severity=Severity(level, zone, STANDARD, VELOCITY, velocity, threshold),  # type: ignore[arg-type]
        progression=progression,
        time_to_failure=estimate,
        no_estimate_reason=None if estimate else "no degradation onset yet",
        evidence={
            "features": {VELOCITY: velocity, "accel_rms_g": 0.41, "kurtosis": 5.8},
            "fault_frequencies_hz": {"bpfo": 168.3},
            **({"time_to_failure_basis": BASIS} if estimate else {}),
        },
    )


def trend(
    state: str = "raised",
    *,
    tier: int = 1,
    velocity: float | None = 1.43,
    estimate: TimeToFailure | None = None,
    horizon_h: float = 168.0,
    aid: str = "press-7",
    i: int = 0,
) -> AlertDraft:
    """An early warning from the learned baseline (no ISO zone in its severity); escalated:
    the time to failure under the planning horizon."""
    if state == "escalated" and estimate is not None:
        sev = Severity("critical", "B", "time to failure under the planning horizon",
                       "time_to_failure_hours", estimate.hours, horizon_h)  # fmt: skip
    else:
        sev = Severity("warning", None, "learned baseline (health index)", "health_index",
                       0.246, 0.2)  # fmt: skip
    features: dict[str, Any] = {"accel_rms_g": 0.276, "hf_accel_rms_g": 0.091}
    if velocity is not None:
        features[VELOCITY] = velocity
    return AlertDraft(
        asset=asset(tier, aid),
        sensor=SensorRef("m1-de", "x", "modbus"),
        kind="trend",
        state=state,  # type: ignore[arg-type]
        detected_at=T0 + timedelta(seconds=i),
        severity=sev,
        progression=Progression(6.5, "mm/s per day", 0.5) if estimate else None,
        time_to_failure=estimate,
        no_estimate_reason=None if estimate else "trend not yet informative",
        evidence={"features": features, "health_index": HEALTH, "onset_at": ONSET},
    )


def maintenance(i: int = 0) -> AlertDraft:
    """The record of a repair."""
    return AlertDraft(
        asset=asset(1),
        sensor=SensorRef("m1-de", "all", "modbus"),
        kind="maintenance",
        state="cleared",
        detected_at=T0 + timedelta(seconds=i),
        severity=None,
        no_estimate_reason="maintenance: baseline and trend restart from this event",
        evidence={"note": "drive-end bearing replaced", "closed_alerts": [], "reset_channels": []},
    )


def sensor_fault(state: str = "raised", i: int = 0) -> AlertDraft:
    """A sensor that stopped answering (raised) or answers again (cleared)."""
    return AlertDraft(
        asset=asset(1),
        sensor=SensorRef("m1-de", "all", "modbus"),
        kind="sensor_fault",
        state=state,  # type: ignore[arg-type]
        detected_at=T0 + timedelta(seconds=i),
        severity=Severity("warning", None, "sensor health", "poll_failures", 5.0, 5.0),
        evidence={"last_error": "timeout"},
    )
