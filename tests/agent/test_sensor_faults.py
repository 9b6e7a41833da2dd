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


def test_a_sensor_moved_to_another_asset_by_a_reload_faults_there_as_after_a_restart(
    tmp_path: Path,
) -> None:
    """m1 is dead on press-7 (raised), then a reload moves it to fan-3: fan-3 is not watched
    either, so its own fault is raised there (as a restart would: the store holds none for
    fan-3), and the recovery clears fan-3's; press-7's is cleared by the move itself (no
    status of m1 could clear it there), so m1 coming back to press-7 starts clean."""
    on_press = press_config(tmp_path)
    data = on_press.model_dump(mode="json", by_alias=True)
    data["assets"].append({**data["assets"][0], "id": "fan-3", "name": "Fan 3"})
    on_press = type(on_press).model_validate(data)
    data["sensors"][0]["asset"] = "fan-3"
    on_fan = type(on_press).model_validate(data)

    def seen(tracker: SensorFaultTracker, st: str, n: int = 0) -> list[tuple[str, str]]:
        return [(d.asset.id, d.state) for d in tracker.update(health(st, n), NOW).drafts]

    tracker = SensorFaultTracker(on_press, breaker_failures=3)
    assert seen(tracker, "backoff", 3) == [("press-7", "raised")]
    (left,) = tracker.reconfigure(on_fan, NOW).drafts
    assert (left.asset.id, left.state) == ("press-7", "cleared")
    assert left.evidence["reason"] == "sensor moved to asset fan-3 by a reload"
    jsonschema.validate(left.record(gateway_id="gw-t", seq=1), SCHEMA)
    assert seen(tracker, "backoff", 4) == [("fan-3", "raised")]
    assert seen(tracker, "ok") == [("fan-3", "cleared")]
    assert tracker.reconfigure(on_press, NOW).drafts == []  # fan-3's was cleared already
    assert seen(tracker, "ok") == []
