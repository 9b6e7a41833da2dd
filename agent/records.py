"""The alert record, schema v1 (DESIGN.md): drafts from analysis, records from the store.

Analysis produces an AlertDraft; the store gives it a per-gateway seq and alert_id inside
the same transaction that persists it, and from then on the JSON text is frozen, so every
retry sends the same bytes.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

SCHEMA = "edge-agent/alert/v1"

log = logging.getLogger(__name__)

Kind = Literal["severity", "trend", "sensor_fault", "maintenance", "gateway_fault"]
State = Literal["raised", "escalated", "cleared"]
Level = Literal["info", "warning", "critical"]


def format_ts(ts: datetime) -> str:
    """UTC ISO-8601 with milliseconds and Z, as the schema requires."""
    if ts.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def parse_ts(text: str) -> datetime:
    """Inverse of format_ts."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def alert_id(gateway_id: str, seq: int) -> str:
    """Unique per gateway, never reused: the backend deduplicates on it."""
    return f"{gateway_id}-{seq:012d}"


@dataclass(frozen=True, slots=True)
class AssetRef:
    id: str
    name: str
    tier: int


@dataclass(frozen=True, slots=True)
class SensorRef:
    id: str
    channel: str
    transport: str


@dataclass(frozen=True, slots=True)
class Severity:
    level: Level
    zone: str | None
    standard: str
    metric: str
    value: float
    threshold: float


@dataclass(frozen=True, slots=True)
class Progression:
    rate_per_day: float
    unit: str
    window_hours: float


@dataclass(frozen=True, slots=True)
class TimeToFailure:
    hours: float
    lower_hours: float
    upper_hours: float
    failure_metric: str
    failure_threshold: float
    model: str


@dataclass(frozen=True, slots=True)
class AlertDraft:
    """An alert before the store has numbered it."""

    asset: AssetRef
    sensor: SensorRef
    kind: Kind
    state: State
    detected_at: datetime
    severity: Severity | None
    progression: Progression | None = None
    time_to_failure: TimeToFailure | None = None
    no_estimate_reason: str | None = None  # why progression/time_to_failure are null
    evidence: dict[str, Any] = field(default_factory=dict)

    def record(self, *, gateway_id: str, seq: int) -> dict[str, Any]:
        """The schema v1 record for this draft under the given seq."""
        rec: dict[str, Any] = {
            "schema": SCHEMA,
            "alert_id": alert_id(gateway_id, seq),
            "seq": seq,
            "gateway_id": gateway_id,
            "asset": asdict(self.asset),
            "sensor": asdict(self.sensor),
            "kind": self.kind,
            "state": self.state,
            "detected_at": format_ts(self.detected_at),
            "severity": asdict(self.severity) if self.severity else None,
            "progression": asdict(self.progression) if self.progression else None,
            "time_to_failure": asdict(self.time_to_failure) if self.time_to_failure else None,
            "evidence": self.evidence,
        }
        if self.progression is None or self.time_to_failure is None:
            rec["no_estimate_reason"] = self.no_estimate_reason or "no trend yet"
        return _finite(rec)


# Sections of a record whose numbers the schema requires: with one not finite, the section
# is left out (null) rather than the whole alert lost (JSON has no NaN; the store refuses it).
_SECTIONS = ("severity", "progression", "time_to_failure")


def _finite(rec: dict[str, Any]) -> dict[str, Any]:
    """The record without its non-finite numbers (a fault upstream, e.g. a sensor's garbage
    or a numeric overflow): a section holding one becomes null, an evidence value is
    removed, and evidence.non_finite lists what was left out. The alert itself is kept."""
    gone = [name for name in _SECTIONS if _has_non_finite(rec[name])]
    evidence = _finite_values(rec["evidence"], "evidence", gone)
    if not gone:
        return rec
    for name in _SECTIONS:
        if name in gone:
            rec[name] = None
    rec["evidence"] = {**evidence, "non_finite": gone}
    if estimate := [n for n in gone if n in ("progression", "time_to_failure")]:
        rec["no_estimate_reason"] = (
            f"{' and '.join(estimate)} held a number that is not finite (left out so the "
            "alert is kept)"
        )
    log.warning(
        "alert %s of %s/%s: non-finite numbers left out of the record: %s",
        rec["kind"], rec["sensor"]["id"], rec["sensor"]["channel"], ", ".join(gone),
    )  # fmt: skip
    return rec


def _has_non_finite(value: Any) -> bool:
    found: list[str] = []
    _finite_values(value, "", found)
    return bool(found)


def _finite_values(value: Any, path: str, gone: list[str]) -> Any:
    """value without its non-finite floats (dicts and lists walked); their paths to gone."""
    if isinstance(value, float) and not math.isfinite(value):
        gone.append(path)
        return None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            kept = _finite_values(v, f"{path}.{k}", gone)
            if kept is not None or v is None:
                out[k] = kept
        return out
    if isinstance(value, list | tuple):
        return [_finite_values(v, f"{path}[{i}]", gone) for i, v in enumerate(value)]
    return value


def dumps(record: dict[str, Any]) -> str:
    """Canonical JSON text of a record (stable key order, no NaN)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
