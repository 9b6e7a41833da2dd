"""The Monitor's time to failure at every stage: prior before onset, the asset's age, fleet
lives from replacements, and severity only where the velocity band is measured."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from agent.analysis.forecast import REFRESH_SHARE
from agent.analysis.monitor import Monitor
from agent.analysis.reliability import life_prior
from agent.analysis.trend import NoEstimate
from agent.analysis.ttf import POINT_TAIL, tail_levels
from agent.config import Config
from drivers.reading import Reading, Waveform

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[3] / "agent" / "schemas" / "alert-v1.json").read_text()
)
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
FEATS = {"velocity_rms_mm_s": 1.0, "accel_rms_g": 0.2, "hf_accel_rms_g": 0.05}


def config(
    reliability: dict[str, Any] | None, failure: dict[str, Any] | None = None, **alerting: Any
) -> Config:
    asset: dict[str, Any] = {
        "id": "press-7",
        "name": "Press 7",
        "tier": 1,
        "machine": {"standard": "iso10816-3", "group": 2, "foundation": "rigid", "rpm": 1480},
        "alerting": alerting,
    }
    if reliability is not None:
        asset["reliability"] = reliability
    if failure is not None:
        asset["failure"] = failure
    return Config.model_validate({
        "gateway": {"id": "gw-t"},
        "assets": [asset],
        "sensors": [{"id": "m1", "asset": "press-7", "modbus": {"host": "127.0.0.1"}}],
        "store": {"path": "/nonexistent/o.db"},
    })  # fmt: skip


def reading(at: datetime, **feats: float) -> Reading:
    return Reading("m1", "z", at, {**FEATS, **feats})


def L10(prior: Any, age_h: float) -> float:
    """The reported point: the remaining L10 at that age."""
    hours = prior.remaining_quantiles(age_h, tail_levels(POINT_TAIL))
    return math.exp(sum(math.log(h) for h in hours) / len(hours))


def ttf_at(m: Monitor, at: datetime) -> tuple[Any, Any, Any, Any]:
    m.update(reading(at))
    cur = m.current("m1", "z")
    assert cur is not None
    return cur


def test_before_any_onset_the_prior_at_the_asset_age_and_the_record_says_so() -> None:
    m = Monitor(config({"lives_hours": [1000.0], "age_hours": 100.0}, debounce=1))
    prior = life_prior(lives_hours=[1000.0])
    assert prior is not None
    _, prog, ttf, reason = ttf_at(m, T0)
    assert prog is None and ttf is not None and ttf.model == "reliability-prior"
    assert ttf.hours == pytest.approx(L10(prior, 100.0), rel=1e-4)
    assert reason is not None and reason.startswith("no degradation seen yet (learning the base")
    # Ten hours later (the readings' clock) the asset is 110 h old.
    _, _, ttf, _ = ttf_at(m, T0 + timedelta(hours=10))
    assert ttf.hours == pytest.approx(L10(prior, 110.0), rel=1e-4)
    # A record (zone C) carries it, valid against the schema.
    (draft,) = m.update(reading(T0 + timedelta(hours=10, seconds=1), velocity_rms_mm_s=3.0)).drafts
    rec = draft.record(gateway_id="gw-t", seq=1)
    jsonschema.validate(rec, SCHEMA)
    assert rec["time_to_failure"]["model"] == "reliability-prior"
    assert rec["progression"] is None and "no degradation seen yet" in rec["no_estimate_reason"]
    assert rec["evidence"]["time_to_failure_basis"]["terms"] == {"reliability_prior": 1.0}


def test_without_a_prior_no_estimate_and_the_reason() -> None:
    m = Monitor(config(None))
    _, _, ttf, reason = ttf_at(m, T0)
    assert ttf is None and reason is not None
    assert "learning the baseline" in reason and "no reliability prior" in reason
    m = Monitor(config({"lives_hours": [1000.0]}))  # a prior but no age
    _, _, ttf, reason = ttf_at(m, T0)
    assert ttf is None and "age is unknown" in reason


def test_the_age_anchor_survives_a_restart_and_follows_a_changed_configuration() -> None:
    cfg = config({"lives_hours": [1000.0], "age_hours": 100.0})
    m = Monitor(cfg)
    saved = dict(m.update(reading(T0)).state)
    assert "press-7/*/*/life" in saved
    again = Monitor(cfg, state=saved)  # restarted 50 h later: still 150 h, not 100 h
    assert again.lives.life(cfg.assets[0], (T0 + timedelta(hours=50)).timestamp()).age_hours == (
        pytest.approx(150.0)
    )
    edited = config({"lives_hours": [1000.0], "age_hours": 10.0})  # the integrator fixed it
    fixed = Monitor(edited, state=saved)
    assert fixed.lives.life(edited.assets[0], (T0 + timedelta(hours=50)).timestamp()).age_hours == (
        pytest.approx(10.0)
    )
    installed = config({"lives_hours": [1000.0], "installed_at": "2026-11-20T08:00:00Z"})
    life = Monitor(installed).lives.life(installed.assets[0], T0.timestamp())
    assert life.age_hours == pytest.approx(72.0) and life.age_from == "installed_at"


def test_a_replacement_adds_the_completed_life_and_restarts_the_age() -> None:
    cfg = config({"class": "bearing-6204", "lives_hours": [1000.0], "age_hours": 100.0})
    m = Monitor(cfg)
    m.update(reading(T0))
    at = T0 + timedelta(hours=20)
    u = m.maintenance("press-7", at, "DE bearing replaced", replaced="failed")
    ((cls, life),) = u.lives
    assert (cls, life.asset, life.ended_at) == (
        "bearing-6204",
        "press-7",
        "2026-11-24T04:00:00.000Z",
    )
    assert life.hours == pytest.approx(120.0) and life.failed
    rec = u.drafts[0].record(gateway_id="gw-t", seq=1)
    jsonschema.validate(rec, SCHEMA)
    assert rec["evidence"]["replacement"] == {
        "replaced": "failed", "class": "bearing-6204", "completed_life_hours": 120.0,
        "fleet_lives": 1,
    }  # fmt: skip
    after = m.lives.life(cfg.assets[0], (at + timedelta(hours=1)).timestamp())
    assert after.age_hours == pytest.approx(1.0) and after.age_from == "replaced"
    assert after.prior is not None and "1 life in the fleet history" in after.prior.source
    # The next agent start reads the fleet history from the store and the anchors.
    again = Monitor(cfg, state=u.state, fleet={"bearing-6204": [life]})
    life2 = again.lives.life(cfg.assets[0], (at + timedelta(hours=2)).timestamp())
    assert life2.age_hours == pytest.approx(2.0) and life2.prior == after.prior
    # Replaced while healthy: a suspension; and with the age unknown nothing is recorded.
    healthy = m.maintenance("press-7", at + timedelta(hours=5), "", replaced="healthy")
    assert healthy.lives[0][1].failed is False
    unknown = Monitor(config({"lives_hours": [1000.0]}))
    u = unknown.maintenance("press-7", at, "", replaced="failed")
    assert u.lives == [] and "life_not_recorded" in u.drafts[0].evidence["replacement"]
    with pytest.raises(ValueError):
        m.maintenance("press-7", at, "", replaced="broken")


def _waveform(seconds: float, amp_g: float = 5.0) -> Waveform:
    fs = 25600.0
    t = np.arange(int(fs * seconds)) / fs
    return Waveform(amp_g * np.sin(2 * np.pi * 100.0 * t), fs)


def test_no_severity_from_a_velocity_band_the_waveform_does_not_resolve() -> None:
    """A 100 Hz, 5 g tone is 55 mm/s (zone D) when measured; a 0.1 s snapshot does not
    resolve the 10-1000 Hz band, so it raises nothing and the record says so."""
    m = Monitor(config(None, debounce=1))
    for i in range(5):
        r = Reading("m1", "z", T0 + timedelta(seconds=10 * i), {}, waveform=_waveform(0.1))
        assert [d.kind for d in m.update(r).drafts] == []
    sev, _, _, _ = m.current("m1", "z") or (None,) * 4
    assert sev is not None and sev.zone is None and sev.level == "info"
    assert "not measured" in sev.standard and "1 period" in sev.standard
    assert m.views()[0].zone is None
    long = Reading("m1", "z", T0 + timedelta(seconds=60), {}, waveform=_waveform(1.0))
    assert [(d.kind, d.severity.zone) for d in m.update(long).drafts] == [("severity", "D")]


def test_far_from_failure_the_estimate_is_refreshed_once_per_percent_of_its_lower_bound() -> None:
    """A posterior costs about half a millisecond: far from failure it is recomputed once
    1 % of its lower bound has passed (here about 18 min), not at every minute's bin; an
    estimate that is due is recomputed at the next reading."""
    m = Monitor(config({"lives_hours": [1000.0], "age_hours": 100.0}))
    hours, lower = [], []
    for minute in range(0, 121):
        ttf_at(m, T0 + timedelta(minutes=minute))
        (view,) = m.views()  # the estimate as computed (records count it down: below)
        assert view.estimate is not None and not isinstance(view.estimate, NoEstimate)
        hours.append(view.estimate.hours)
        lower.append(view.estimate.lower_hours)
    refresh_min = REFRESH_SHARE * min(lower) * 60
    assert 10 < refresh_min < 60, refresh_min  # the scenario is the one described
    changes = [i for i in range(1, len(hours)) if hours[i] != hours[i - 1]]
    assert changes, "never recomputed"
    gaps = np.diff([0, *changes])
    assert all(refresh_min - 1 <= g <= refresh_min + 1 for g in gaps), (gaps, refresh_min)
    # Each value is the estimate at the age it was computed, not a stale one.
    prior = life_prior(lives_hours=[1000.0])
    assert hours[changes[-1]] == pytest.approx(L10(prior, 100.0 + changes[-1] / 60), rel=1e-4)


def test_a_jump_of_the_failure_metric_refreshes_the_estimate_at_once() -> None:
    """Far from failure an estimate stands for 1 % of its lower bound (here ~16 h), but
    not past a step in the failure metric: velocity jumping to twice its failure threshold
    is "threshold reached" at the next reading, and the trend alert escalates, instead of
    the records carrying the earlier 4,000 h and no escalation for the next 16 h."""
    m = Monitor(config({"lives_hours": [20000.0], "age_hours": 100.0}, debounce=1))
    t = T0
    for _ in range(200):  # the baseline
        m.update(reading(t))
        t += timedelta(minutes=1)
    onset = {"accel_rms_g": 0.5, "hf_accel_rms_g": 0.2}
    raised = []
    for _ in range(5):  # the health index is smoothed: an onset within a few readings
        raised += [d.state for d in m.update(reading(t, **onset)).drafts if d.kind == "trend"]
        t += timedelta(minutes=1)
    assert raised == ["raised"]
    _, _, ttf, _ = m.current("m1", "z") or (None, None, None, None)
    assert ttf is not None and ttf.hours > 1000 and REFRESH_SHARE * ttf.lower_hours > 10
    drafts = m.update(reading(t, **onset, velocity_rms_mm_s=9.0)).drafts
    _, _, ttf, _ = m.current("m1", "z") or (None, None, None, None)
    assert ttf is not None and ttf.hours == 0.0 and ttf.model == "failure-threshold-reached"
    trend = [d for d in drafts if d.kind == "trend"]
    assert [(d.state, d.time_to_failure.hours) for d in trend] == [("escalated", 0.0)]
    severity = [d for d in drafts if d.kind == "severity"]
    assert [d.time_to_failure.hours for d in severity] == [0.0]


def test_an_installation_after_the_reading_time_gives_no_age_and_says_why() -> None:
    """installed_at in the future (a typo, or a gateway clock far behind) is no age of 0 h
    that silently outlives a later replacement: the record says what to correct."""
    cfg = config({"lives_hours": [1000.0], "installed_at": "2099-01-01T00:00:00Z"})
    m = Monitor(cfg)
    _, _, ttf, reason = ttf_at(m, T0)
    assert ttf is None and reason is not None
    assert "installed_at (2099-01-01T00:00:00.000Z) is after the reading's time" in reason
    u = m.maintenance("press-7", T0, "", replaced="failed")
    assert u.lives == [] and "is after" in u.drafts[0].evidence["replacement"]["life_not_recorded"]
    # The replacement is the asset's age from then on.
    life = m.lives.life(cfg.assets[0], (T0 + timedelta(hours=3)).timestamp())
    assert life.age_hours == pytest.approx(3.0) and life.age_from == "replaced"


def test_anchors_taken_with_a_clock_ahead_count_from_when_the_clock_is_right() -> None:
    """A gateway that booted a year ahead and then synced: the age_hours anchor it saved
    is in the future. The asset is then age_hours old, not 0 h for a year."""
    cfg = config({"lives_hours": [1000.0], "age_hours": 100.0})
    saved = dict(Monitor(cfg).update(reading(T0 + timedelta(days=365))).state)
    m = Monitor(cfg, state=saved)  # restarted with the right clock
    life = m.lives.life(cfg.assets[0], T0.timestamp())
    assert life.age_hours == pytest.approx(100.0) and life.age_from == "age_hours"
    later = m.lives.life(cfg.assets[0], (T0 + timedelta(hours=5)).timestamp())
    assert later.age_hours == pytest.approx(105.0)
    assert "press-7/*/*/life" in m.lives.take_changes()  # the corrected anchor is saved


def test_an_alert_record_counts_its_time_to_failure_from_its_own_detected_at() -> None:
    """Far from failure the estimate stands for 1 % of its lower bound (here ~18 min): a
    zone C record 10 min after it carried the figure of 10 min earlier as of its own
    detected_at, so the failure moment a planner derives (detected_at + hours) was 10 min
    late. Now hours and bounds are counted down to detected_at, and the basis says when the
    posterior was computed."""
    # The failure metric is not the velocity whose zone C makes the record (a step of
    # the failure metric would have the estimate recomputed at once).
    failure = {"metric": "accel_rms_g", "threshold": 5.0}
    m = Monitor(config({"lives_hours": [1000.0], "age_hours": 100.0}, failure, debounce=1))
    m.update(reading(T0))
    (view,) = m.views()
    made = view.estimate
    assert made is not None and not isinstance(made, NoEstimate)
    at = T0 + timedelta(minutes=10)
    (draft,) = m.update(reading(at, velocity_rms_mm_s=3.0)).drafts
    (view,) = m.views()
    assert view.estimate is made  # not recomputed: still fresh (the case described)
    rec = draft.record(gateway_id="gw-t", seq=1)
    jsonschema.validate(rec, SCHEMA)
    assert rec["detected_at"] == "2026-11-23T08:10:00.000Z"
    ttf = rec["time_to_failure"]
    for key in ("hours", "lower_hours", "upper_hours"):
        assert ttf[key] == pytest.approx(getattr(made, key) - 10 / 60, abs=1e-5), key
    assert rec["evidence"]["time_to_failure_basis"]["estimated_at"] == "2026-11-23T08:00:00.000Z"
    # Its status view (monitor.current) says the same, as of the last reading.
    _, _, cur, _ = m.current("m1", "z") or (None, None, None, None)
    assert cur is not None and cur.hours == ttf["hours"]


def test_a_figure_overtaken_by_the_time_since_is_0_bounds_too() -> None:
    """An estimate of less time than has passed since it was made is 0 h left, never
    negative (the schema's minimum), its bounds likewise."""
    from agent.analysis.ttf import Estimate, aged

    est = Estimate(0.01, 0.005, 0.02, "bayes-exponential", {}, "b")
    late = aged(est, 40.0)  # 40 s after a figure of 36 s
    assert (late.hours, late.lower_hours) == (0.0, 0.0)
    assert late.upper_hours == pytest.approx(0.02 - 40 / 3600)
    assert aged(est, float("nan")) is est and aged(est, -5.0) is est
