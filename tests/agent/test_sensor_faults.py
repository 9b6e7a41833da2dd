"""A dead sensor raises one sensor_fault alert, its recovery clears it, restarts remember."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema

from agent.sensor_faults import SensorFaultTracker, SensorHealth
from tests.agent._configs import press_config

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "agent" / "schemas" / "alert-v1.json").read_text()
)
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def health(state: str, failures: int = 0) -> SensorHealth:
    return SensorHealth("m1", state, failures, "timeout after 0.5 s" if failures else None, None)


def test_fault_raised_once_cleared_once_and_remembered(tmp_path: Path) -> None:
    cfg = press_config(tmp_path)
    tracker = SensorFaultTracker(cfg, breaker_failures=3)
    states: dict[str, str] = {}
    seen = []
    for st, n in [
        ("starting", 0),
        ("ok", 0),
        ("failing", 1),
        ("failing", 2),
        ("backoff", 3),
        ("backoff", 4),
        ("backoff", 9),
    ]:
        upd = tracker.update(health(st, n), NOW)
        states.update(upd.state)
        seen += upd.drafts
    assert [(d.kind, d.state) for d in seen] == [("sensor_fault", "raised")]
    rec = seen[0].record(gateway_id="gw-t", seq=1)
    jsonschema.validate(rec, SCHEMA)
    assert rec["sensor"] == {"id": "m1", "channel": "all", "transport": "modbus"}
    assert rec["severity"]["threshold"] == 3.0 and rec["evidence"]["consecutive_failures"] == 3

    # A restart while the sensor is still dead: no second "raised".
    again = SensorFaultTracker(cfg, state=states, breaker_failures=3)
    assert again.update(health("backoff", 12), NOW).drafts == []
    cleared = again.update(health("ok"), NOW).drafts
    assert [(d.kind, d.state) for d in cleared] == [("sensor_fault", "cleared")]
    assert again.update(health("ok"), NOW).drafts == []
