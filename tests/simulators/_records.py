"""Schema v1 records for the backend's case tests, built like the agent builds them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

GATEWAY = "gw-t"


def stamp(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


class Script:
    """Numbers records of one gateway in order; times are hours after `t0`."""

    def __init__(self, t0: datetime, asset: str = "press-7", tier: int = 1) -> None:
        self.t0, self.asset, self.tier = t0, asset, tier
        self.seq = 0

    def at(self, hours: float) -> datetime:
        return self.t0 + timedelta(hours=hours)

    def record(
        self,
        hours: float,
        kind: str,
        state: str,
        *,
        channel: str = "z",
        zone: str | None = None,
        metric: str = "velocity_rms_mm_s",
        value: float = 1.0,
        threshold: float = 2.8,
        velocity: float | None = None,
        health: float | None = None,
        ttf: tuple[float, float, float] | None = None,
        note: str | None = None,
        sensor: str = "m1-de",
    ) -> dict[str, Any]:
        self.seq += 1
        features = {"velocity_rms_mm_s": velocity if velocity is not None else value}
        evidence: dict[str, Any] = {"features": features}
        if health is not None:
            evidence["health_index"] = {"value": health, "alarm_level": 0.2, "features": []}
        if note is not None:
            evidence = {"note": note, "closed_alerts": [], "reset_channels": []}
        rec: dict[str, Any] = {
            "schema": "edge-agent/alert/v1",
            "alert_id": f"{GATEWAY}-{self.seq:012d}",
            "seq": self.seq,
            "gateway_id": GATEWAY,
            "asset": {"id": self.asset, "name": "Press 7 main motor", "tier": self.tier},
            "sensor": {"id": sensor, "channel": channel, "transport": "modbus"},
            "kind": kind,
            "state": state,
            "detected_at": stamp(self.at(hours)),
            "severity": None
            if kind == "maintenance"
            else {
                "level": "warning",
                "zone": zone,
                "standard": "ISO 10816-3 group 2 rigid",
                "metric": metric,
                "value": value,
                "threshold": threshold,
            },
            "progression": None,
            "time_to_failure": None,
            "evidence": evidence,
        }
        if ttf is not None:
            hours_, lower, upper = ttf
            rec["progression"] = {"rate_per_day": 0.5, "unit": "mm/s per day", "window_hours": 9}
            rec["time_to_failure"] = {
                "hours": hours_,
                "lower_hours": lower,
                "upper_hours": upper,
                "failure_metric": "velocity_rms_mm_s",
                "failure_threshold": 4.5,
                "model": "bayes-exponential",
            }
        else:
            rec["no_estimate_reason"] = "no trend yet"
        return rec

    def early_warning(self, hours: float, **kw: Any) -> dict[str, Any]:
        kw.setdefault("velocity", 1.6)
        return self.record(
            hours,
            "trend",
            "raised",
            metric="health_index",
            value=0.25,
            threshold=0.2,
            health=0.25,
            **kw,
        )

    def ttf_escalation(self, hours: float, ttf: tuple[float, float, float]) -> dict[str, Any]:
        return self.record(
            hours,
            "trend",
            "escalated",
            zone="B",
            metric="time_to_failure_hours",
            value=ttf[0],
            threshold=168.0,
            velocity=2.0,
            health=0.4,
            ttf=ttf,
        )

    def zone(self, hours: float, zone: str, value: float, **kw: Any) -> dict[str, Any]:
        state = "raised" if zone == "C" else "escalated"
        threshold = 2.8 if zone == "C" else 4.5
        return self.record(
            hours, "severity", state, zone=zone, value=value, threshold=threshold, **kw
        )

    def clear(self, hours: float, kind: str = "severity", **kw: Any) -> dict[str, Any]:
        return self.record(hours, kind, "cleared", zone="B", value=2.0, threshold=2.52, **kw)

    def repair(self, hours: float, note: str = "bearing replaced") -> dict[str, Any]:
        return self.record(hours, "maintenance", "cleared", channel="*", note=note)
