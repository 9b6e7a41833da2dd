"""A dead sensor raises one sensor_fault alert, its recovery clears it, restarts remember."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema

from agent.sensor_faults import (
    FLAP_CLEAR_HOLD_S,
    FLAP_WINDOW_S,
    EndpointHealth,
    SensorFaultTracker,
    SensorHealth,
)
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


def test_a_sensor_back_for_a_poll_or_two_at_a_time_is_one_fault_not_a_flood(
    tmp_path: Path,
) -> None:
    """A device that answers two polls after each reconnect and then stalls again (probed
    with a real half-open server and 2000 sensors: 32 raised + 32 cleared in 3 minutes)
    keeps one fault raised until it has answered steadily for FLAP_CLEAR_HOLD_S."""
    t = [0.0]
    tracker = SensorFaultTracker(press_config(tmp_path), breaker_failures=3, clock=lambda: t[0])

    def cycle() -> list[str]:  # 2 s answering, 3 s failing, breaker open for 1 s; watched 1 Hz
        states = []
        for st, n in [("ok", 0), ("ok", 0), ("failing", 1), ("failing", 2), ("backoff", 3)]:
            t[0] += 1.0
            states += [d.state for d in tracker.update(health(st, n), NOW).drafts]
        return states

    seen = []
    for _ in range(36):  # 3 minutes
        seen += cycle()
    # The first clear comes at once (a sensor that blinked once is not held); from its
    # second raise on the sensor flaps, and its fault stays raised.
    assert seen == ["raised", "cleared", "raised"]
    for _ in range(int(FLAP_CLEAR_HOLD_S)):  # the first good answer starts the hold at 0 s
        t[0] += 1.0
        assert tracker.update(health("ok"), NOW).drafts == []
    t[0] += 1.0
    cleared = tracker.update(health("ok"), NOW).drafts
    assert [d.state for d in cleared] == ["cleared"]
    rec = cleared[0].record(gateway_id="gw-t", seq=9)
    jsonschema.validate(rec, SCHEMA)
    assert rec["evidence"]["flapping"] is True
    assert rec["evidence"]["answering_for_s"] >= FLAP_CLEAR_HOLD_S
    # Long after: a new fault is a first one again, cleared at the first good answer.
    t[0] += FLAP_WINDOW_S
    assert [d.state for d in tracker.update(health("backoff", 3), NOW).drafts] == ["raised"]
    assert [d.state for d in tracker.update(health("ok"), NOW).drafts] == ["cleared"]


def test_a_flapping_sensor_that_misses_one_poll_a_minute_is_cleared_after_the_hold(
    tmp_path: Path,
) -> None:
    """Before: once flapping, a sensor answering every poll but one a minute (state
    failing for one 5 s poll, never its breaker) had its hold restarted by each missed
    poll and its fault stayed raised for good (30 minutes probed: no clear) while its
    readings were analysed. A missed poll would not raise a fault; it no longer restarts
    the hold either, and the fault clears FLAP_CLEAR_HOLD_S after the last breaker open."""
    t = [0.0]
    tracker = SensorFaultTracker(press_config(tmp_path), breaker_failures=3, clock=lambda: t[0])

    def see(state: str, failures: int = 0) -> list[str]:
        t[0] += 1.0
        return [d.state for d in tracker.update(health(state, failures), NOW).drafts]

    seen = see("backoff", 3) + see("ok") + see("backoff", 3)  # raised, cleared, raised
    assert seen == ["raised", "cleared", "raised"]
    cleared_at = None
    for second in range(1800):  # 30 minutes: one poll in twelve fails (5 s of 60)
        failing = second % 60 >= 55
        if see("failing", 1) if failing else see("ok"):
            cleared_at = second
            break
    assert cleared_at is not None
    assert FLAP_CLEAR_HOLD_S <= cleared_at <= FLAP_CLEAR_HOLD_S + 10


def test_a_host_flapping_is_one_fault_not_a_pair_per_outage(tmp_path: Path) -> None:
    """A switch port that drops a host for 40 s, gives it back for 5 s and drops it again
    raised and cleared the host's fault every 45 s (80 records an hour to every uplink);
    like a sensor's, a host fault raised again within FLAP_WINDOW_S of its clear stays
    raised until every endpoint has answered for FLAP_CLEAR_HOLD_S."""
    t = [0.0]
    tracker = SensorFaultTracker(press_config(tmp_path), clock=lambda: t[0])
    silent = EndpointHealth("10.0.0.5", 200, 0.0, ("10.0.0.5:502",), ("m1",), "timeout")
    answering = EndpointHealth("10.0.0.5", 200, 0.0)
    seen: list[str] = []
    for _ in range(6):  # 40 s silent, 5 s answering; watched 1 Hz
        for s in range(40):
            t[0] += 1.0
            h = EndpointHealth(**{**_fields(silent), "silent_for_s": float(s + 1)})
            seen += [d.state for d in tracker.update_endpoint(h, NOW).drafts]
        for _ in range(5):
            t[0] += 1.0
            seen += [d.state for d in tracker.update_endpoint(answering, NOW).drafts]
    assert seen == ["raised", "cleared", "raised"]
    cleared = []
    while not cleared:  # answering for 4 s already (the last cycle's 5 ticks)
        t[0] += 1.0
        cleared = tracker.update_endpoint(answering, NOW).drafts
    assert [d.state for d in cleared] == ["cleared"]
    rec = cleared[0].record(gateway_id="gw-t", seq=9)
    jsonschema.validate(rec, SCHEMA)
    assert rec["evidence"]["flapping"] is True
    assert FLAP_CLEAR_HOLD_S <= rec["evidence"]["answering_for_s"] < FLAP_CLEAR_HOLD_S + 1


def _fields(h: EndpointHealth) -> dict[str, object]:
    return {f: getattr(h, f) for f in h.__slots__}
