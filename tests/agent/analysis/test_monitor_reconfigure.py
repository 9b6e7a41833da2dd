"""A reload's new configuration reaches the running monitor without losing what it learned."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.analysis.monitor import Monitor
from agent.config import Config
from agent.records import AlertDraft
from drivers.reading import Reading
from tests.agent._configs import press_config

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def cfg(tmp_path: Path, **machine: Any) -> Config:
    data = press_config(tmp_path, baseline_readings=10, debounce=2).model_dump(
        mode="json", by_alias=True
    )
    data["assets"][0]["machine"].update(machine)
    return Config.model_validate(data)


def feed(m: Monitor, values: list[float], start: int) -> list[tuple[str, str]]:
    out = []
    for i, v in enumerate(values, start=start):
        r = Reading("m1", "z", T0 + timedelta(seconds=i),
                    {"velocity_rms_mm_s": v, "kurtosis": 3.0 + 0.01 * (i % 3)})  # fmt: skip
        out += [(d.kind, d.state) for d in m.update(r).drafts]
    return out


def health_index(m: Monitor) -> float | None:
    return next(v.health_index for v in m.views() if v.sensor_id == "m1")


def test_new_thresholds_apply_and_the_baseline_is_kept(tmp_path: Path) -> None:
    m = Monitor(cfg(tmp_path))
    feed(m, [1.0] * 12, 0)
    assert health_index(m) is not None  # learned
    limits = {"standard": "limits", "limits": {"ab": 2.0, "bc": 5.0, "cd": 9.0}, "rpm": 1480}
    data = cfg(tmp_path).model_dump(mode="json", by_alias=True)
    data["assets"][0]["machine"] = limits
    m.reconfigure(Config.model_validate(data))
    # 3.1 mm/s was zone C (B/C 2.8) and is zone B under the new limits: no alert.
    assert ("severity", "raised") not in feed(m, [3.1] * 3, 12)
    assert health_index(m) is not None  # not back to learning


def test_a_new_speed_relearns_but_keeps_the_open_alert(tmp_path: Path) -> None:
    m = Monitor(cfg(tmp_path))
    assert feed(m, [1.0] * 10 + [3.1] * 2, 0).count(("severity", "raised")) == 1
    update = m.reconfigure(cfg(tmp_path, rpm=990))
    assert "press-7/m1/z/model" in update.state  # the reset model is stored
    drafts = feed(m, [3.2] * 3, 12)
    assert health_index(m) is None  # learning again from the new speed
    assert ("severity", "raised") not in drafts  # still the same open alert


def test_a_removed_sensor_is_saved_and_resumes_when_it_returns(tmp_path: Path) -> None:
    m = Monitor(cfg(tmp_path))
    feed(m, [1.0] * 12, 0)
    data = cfg(tmp_path).model_dump(mode="json", by_alias=True)
    data["sensors"][0]["id"] = "m2"
    gone = m.reconfigure(Config.model_validate(data))
    assert not m.knows("m1") and not m.views()
    assert {"press-7/m1/z/severity", "press-7/m1/z/trend", "press-7/m1/z/model"} <= set(gone.state)
    m.reconfigure(cfg(tmp_path))
    feed(m, [1.0], 12)
    assert health_index(m) is not None  # resumed, not relearned


def two_assets(tmp_path: Path, on: str, *, m2: bool = False) -> Config:
    """press-7 and fan-3, sensor m1 on `on` (and m2 on press-7)."""
    data = cfg(tmp_path).model_dump(mode="json", by_alias=True)
    fan = {**data["assets"][0], "id": "fan-3", "name": "Fan 3"}
    data["assets"].append(fan)
    data["sensors"][0]["asset"] = on
    if m2:
        other = {**data["sensors"][0], "id": "m2", "asset": "press-7"}
        other["modbus"] = {**other["modbus"], "device_id": 2}
        data["sensors"].append(other)
    return Config.model_validate(data)


@pytest.mark.parametrize("m2", [False, True], ids=["press-7 left bare", "press-7 keeps m2"])
def test_a_repair_of_the_asset_a_sensor_left_leaves_its_new_asset_alone(
    tmp_path: Path, m2: bool
) -> None:
    """m1 raised zone C on press-7, then a reload moved it to fan-3 where it raised zone C
    again. The reload closed press-7's alerts (no reading of m1 could clear them there), so
    a repair of press-7 has none of m1's left to close; fan-3's stay open (no second
    "raised" for the same condition), and its learned baseline stays."""
    m = Monitor(two_assets(tmp_path, "press-7", m2=m2))
    on_press = feed(m, [1.0] * 10 + [3.1] * 2, 0)
    assert ("severity", "raised") in on_press
    moved = m.reconfigure(two_assets(tmp_path, "fan-3", m2=m2)).drafts
    assert sorted((d.asset.id, d.sensor.id, d.kind, d.state) for d in moved) == sorted(
        ("press-7", "m1", kind, "cleared") for kind, state in on_press if state == "raised"
    )
    assert feed(m, [1.0] * 10 + [3.1] * 2, 12).count(("severity", "raised")) == 1
    (draft,) = m.maintenance("press-7", T0 + timedelta(seconds=30), "bearing replaced").drafts
    assert draft.asset.id == "press-7"
    assert draft.evidence["closed_alerts"] == []
    assert ("severity", "raised") not in feed(m, [3.2] * 3, 40)  # fan-3's is still open
    assert health_index(m) is not None  # fan-3's baseline was not reset


# A machine already degraded when the integrator edits its analysis settings: accel RMS
# (the health-index feature) doubled and velocity RMS rose over its ISO 20816-1 alarm, so
# the trend alert is open (raised, then escalated; the step then flat is no failure in
# seconds, so the critical is revised to a warning, same episode, once that is overdue).
# What the reload may reset depends on what the change invalidates (agent.analysis.basis).


def degraded_config(tmp_path: Path, edit: dict[str, Any] | None = None) -> Config:
    data = press_config(
        tmp_path, baseline_readings=10, debounce=2, clear_hold_s=300, trend_bin_s=10
    ).model_dump(mode="json", by_alias=True)
    for path, value in (edit or {}).items():
        *parents, last = path.split(".")
        node = data
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[last] = value
    return Config.model_validate(data)


def vib(i: int, accel: float, velocity: float) -> Reading:
    return Reading("m1", "z", T0 + timedelta(seconds=10 * i),
                   {"velocity_rms_mm_s": velocity, "accel_rms_g": accel,
                    "hf_accel_rms_g": accel / 2})  # fmt: skip


def degrading(i: int, accel: float = 2.0, velocity: float = 1.9) -> Reading:
    """Reading i of a machine that degrades from reading 12 on, over 8 readings to (accel,
    velocity) and then stays there: a ramp, not a step (a step gives no time to failure,
    so no critical, until the jump model has bins enough after it)."""
    f = min(max(i - 11, 0), 8) / 8
    return vib(i, accel**f, velocity**f)


def run(m: Monitor, start: int, n: int, accel: float, velocity: float) -> list[AlertDraft]:
    return [d for i in range(start, start + n) for d in m.update(vib(i, accel, velocity)).drafts]


def degrade(tmp_path: Path) -> tuple[Monitor, dict[str, str]]:
    m = Monitor(degraded_config(tmp_path))
    state: dict[str, str] = {}
    for i in range(32):
        up = m.update(degrading(i))
        state.update(up.state)
        if m._channels[("m1", "z")].trend.active == 2:
            break  # raised, then escalated (the step then flat revises it later)
    assert m._channels[("m1", "z")].trend.active == 2
    return m, state


def not_revisions(drafts: list[AlertDraft]) -> list[tuple[str, str]]:
    return [(d.kind, d.state) for d in drafts if not d.evidence.get("revision")]


HISTORY_ONLY = {
    "failure metric": {"assets.0.failure": {"metric": "accel_rms_g"}},
    "trend bin": {"assets.0.alerting.trend_bin_s": 20},
    "bearing": {"assets.0.bearing": {"balls": 9, "ball_mm": 7.9, "pitch_mm": 38.5}},
}
NOTHING = {
    "failure threshold": {"assets.0.failure": {"threshold": 6.0}},
    "baseline length": {"assets.0.alerting.baseline_readings": 40},
    "clear hold": {"assets.0.alerting.clear_hold_s": 600},
}


@pytest.mark.parametrize("edit", [*HISTORY_ONLY.values(), *NOTHING.values()],
                         ids=[*HISTORY_ONLY, *NOTHING])  # fmt: skip
def test_an_analysis_change_keeps_the_baseline_onset_and_open_trend_of_a_degraded_machine(
    tmp_path: Path, edit: dict[str, Any]
) -> None:
    """Before: a new failure metric, trend bin, bearing or baseline length relearned the
    baseline from the degraded machine, and the open trend alert cleared clear_hold_s later
    as if it had recovered. Now only the failure metric's history starts again (when the
    change invalidates it); the baseline, the onset and the alert stay, also in the state
    a restart resumes from."""
    m, state = degrade(tmp_path)
    ch = m._channels[("m1", "z")]
    learned_at, onset, bins = ch.hi.learned_at_s, ch.onset_s, ch.history.to_dict()
    active = ch.trend.active
    update = m.reconfigure(degraded_config(tmp_path, edit))
    assert update.drafts == []
    ch = m._channels[("m1", "z")]
    assert (ch.hi.learned_at_s, ch.onset_s, ch.trend.active) == (learned_at, onset, active)
    history_rebuilt = edit in HISTORY_ONLY.values()
    assert (ch.history.to_dict() != bins) is history_rebuilt
    state.update(update.state)
    later = run(m, 32, 80, 2.0, 1.9)  # 800 s still degraded, past the 300 s clear hold
    assert not_revisions(later) == []  # the episode goes on: no clear, no new raise
    assert m._channels[("m1", "z")].trend.active >= 1
    resumed = Monitor(degraded_config(tmp_path, edit), state=state)
    resumed.update(vib(32, 2.0, 1.9))
    again = resumed._channels[("m1", "z")]
    assert (again.hi.learned_at_s, again.onset_s) == (learned_at, onset)


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        ({"assets.0.machine.rpm": 990}, "machine.rpm 1480 -> 990"),
        (
            {"sensors.0.modbus.profile": "machinesaver-trivibe"},
            "modbus.profile banner-qm30vt2 -> modbus.profile machinesaver-trivibe",
        ),
    ],
    ids=["speed", "register profile"],
)
def test_a_change_that_invalidates_the_baseline_closes_the_trend_alert_saying_why(
    tmp_path: Path, edit: dict[str, Any], what: str
) -> None:
    """Before: the baseline was relearned from the degraded machine with the trend alert
    left open, which then cleared (a plain "cleared", as if the machine had recovered)
    clear_hold_s after the new baseline; a profile change kept the old baseline. Now the
    reload closes it at once with a record saying why, and nothing clears later."""
    m, _ = degrade(tmp_path)
    at = T0 + timedelta(minutes=6)
    update = m.reconfigure(degraded_config(tmp_path, edit), at)
    (draft,) = update.drafts
    assert (draft.kind, draft.state, draft.detected_at) == ("trend", "cleared", at)
    reason = f"cleared by a reload: baseline relearned after {what}"
    assert draft.evidence["reason"] == reason
    assert draft.evidence["closed_level"] == "critical"
    assert (
        draft.no_estimate_reason
        == f"no time to failure until the new baseline is learned: {reason}"
    )
    assert json.loads(update.state["press-7/m1/z/trend"])["active"] == 0
    ch = m._channels[("m1", "z")]
    assert (ch.hi.ready, ch.onset_s, ch.trend.active) == (False, None, 0)
    assert not_revisions(run(m, 32, 80, 2.0, 1.9)) == []  # no later clear (nor a raise)
    assert m._channels[("m1", "z")].hi.ready  # relearned


def test_a_new_baseline_length_applies_to_a_baseline_still_learning(tmp_path: Path) -> None:
    m = Monitor(degraded_config(tmp_path))
    run(m, 0, 5, 1.0, 1.0)
    m.reconfigure(degraded_config(tmp_path, {"assets.0.alerting.baseline_readings": 20}))
    run(m, 5, 10, 1.0, 1.0)
    ch = m._channels[("m1", "z")]
    assert (ch.hi.ready, ch.hi.samples_seen) == (False, 15)  # the 5 kept, 20 needed
    run(m, 15, 5, 1.0, 1.0)
    assert ch.hi.ready
