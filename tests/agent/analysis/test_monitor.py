"""The monitor turns readings into schema-valid alert drafts and persistable state."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from agent.analysis.monitor import Monitor
from agent.config import Config
from drivers.reading import Reading
from tests.agent._configs import press_config

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[3] / "agent" / "schemas" / "alert-v1.json").read_text()
)


def config(tmp_path: Path, debounce: int = 3, clear_hold_s: float = 0.0) -> Config:
    """press-7; clears on level alone (clear_hold_s 0) unless a test sets the time hold."""
    return press_config(tmp_path, debounce=debounce, hysteresis=0.1, clear_hold_s=clear_hold_s)


def readings(values: list[float], start: datetime | None = None) -> list[Reading]:
    t0 = start or datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    return [
        Reading("m1", "z", t0 + timedelta(seconds=i), {"velocity_rms_mm_s": v, "kurtosis": 3.1})
        for i, v in enumerate(values)
    ]


def run(monitor: Monitor, values: list[float]) -> list[dict]:
    out = []
    for seq, r in enumerate(readings(values), start=1):
        for d in monitor.update(r).drafts:
            out.append(d.record(gateway_id="gw-t", seq=seq))
    return out


def test_zone_c_then_d_then_clear(tmp_path: Path) -> None:
    m = Monitor(config(tmp_path))
    recs = run(m, [1.0, 2.9, 3.0, 3.1, 4.6, 4.7, 4.8, 2.6, 2.0, 2.0, 2.0])
    assert [(r["state"], r["severity"]["zone"], r["severity"]["level"]) for r in recs] == [
        ("raised", "C", "warning"),
        ("escalated", "D", "critical"),
        ("cleared", "B", "info"),
    ]
    raised = recs[0]
    assert raised["severity"]["value"] == 3.1 and raised["severity"]["threshold"] == 2.8
    assert raised["severity"]["standard"] == "ISO 10816-3 group 2 rigid"
    assert raised["detected_at"] == "2026-11-23T08:00:03.000Z"
    assert raised["asset"] == {"id": "press-7", "name": "Press 7", "tier": 1}
    assert raised["evidence"]["features"]["kurtosis"] == 3.1
    assert recs[1]["severity"]["threshold"] == 4.5
    assert recs[2]["severity"]["threshold"] == pytest.approx(2.52)
    for r in recs:
        jsonschema.validate(r, SCHEMA)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    m = Monitor(cfg)
    saved: dict[str, str] = {}
    for r in readings([3.0, 3.0, 3.0, 3.0]):
        saved.update(m.update(r).state)
    assert set(saved) == {"press-7/m1/z/severity", "press-7/m1/z/model"}
    again = Monitor(cfg, state=saved)
    drafts = [d for r in readings([3.0] * 10) for d in again.update(r).drafts]
    assert drafts == []  # the raised alert is remembered, not re-sent as new
    forgetful = Monitor(cfg)
    assert [d.state for r in readings([3.0] * 3) for d in forgetful.update(r).drafts] == ["raised"]


def test_bad_quality_and_missing_velocity_are_skipped(tmp_path: Path) -> None:
    m = Monitor(config(tmp_path, debounce=1))
    t = datetime(2026, 11, 23, tzinfo=UTC)
    assert m.update(Reading("m1", "z", t, {"velocity_rms_mm_s": 9.0}, quality="bad")).drafts == []
    assert m.update(Reading("m1", "z", t, {"kurtosis": 9.0})).drafts == []
    assert m.update(Reading("m1", "z", t, {"velocity_rms_mm_s": float("nan")})).drafts == []
    assert m.skipped_total == 3
    assert [
        d.state for d in m.update(Reading("m1", "z", t, {"velocity_rms_mm_s": 9.0})).drafts
    ] == ["raised"]


def test_unconfigured_sensor_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        Monitor(config(tmp_path)).update(
            readings([1.0])[0].__class__(
                "ghost", "z", datetime(2026, 1, 1, tzinfo=UTC), {"velocity_rms_mm_s": 1.0}
            )
        )


def test_maintenance_resets_and_closes_active_alerts(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    m = Monitor(cfg)
    saved: dict[str, str] = {}
    for r in readings([3.0] * 3):
        saved.update(m.update(r).state)
    at = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    u = m.maintenance("press-7", at, "bearing replaced")
    saved.update(u.state)
    (d,) = u.drafts
    rec = d.record(gateway_id="gw-t", seq=9)
    jsonschema.validate(rec, SCHEMA)
    assert (rec["kind"], rec["state"]) == ("maintenance", "cleared")
    assert rec["evidence"]["closed_alerts"] == [
        {"sensor": "m1", "channel": "z", "kind": "severity", "level": "warning"}
    ]
    # After a restart the reset state is what is remembered: a new fault raises anew.
    again = Monitor(cfg, state=saved)
    assert [d.state for r in readings([3.0] * 3) for d in again.update(r).drafts] == ["raised"]
    with pytest.raises(KeyError):
        m.maintenance("ghost", at, "")


def test_hold_off_rate_limits_a_flapping_alert(tmp_path: Path) -> None:
    m = Monitor(config(tmp_path, debounce=1))
    states = [d.state for r in readings([3.0, 1.0, 3.0, 3.0]) for d in m.update(r).drafts]
    assert states == ["raised", "cleared"]  # re-raise held for resend_holdoff_s (600 s)


def test_iso_20816_1_baseline_alarm_fires_before_zone_c(tmp_path: Path) -> None:
    """A machine that ran at 1.0 mm/s: ISO 20816-1 alarm = 1.0 + 0.25 x 2.8 = 1.7 mm/s,
    reached in zone B, long before the zone C limit of 2.8 mm/s."""
    m = Monitor(config(tmp_path))
    t0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    accel = {"accel_rms_g": 0.2, "hf_accel_rms_g": 0.05}  # health-index features stay flat
    values = [1.0 + 0.01 * (i % 3) for i in range(60)] + [1.5] * 5 + [1.8] * 4
    recs = []
    for i, v in enumerate(values):
        r = Reading("m1", "z", t0 + timedelta(seconds=10 * i), {"velocity_rms_mm_s": v, **accel})
        recs += [d.record(gateway_id="gw-t", seq=i) for d in m.update(r).drafts]
    assert [(r["kind"], r["state"]) for r in recs] == [("trend", "raised")]
    sev = recs[0]["severity"]
    assert sev["metric"] == "velocity_rms_mm_s" and sev["zone"] == "B"
    assert sev["standard"] == "ISO 20816-1 alarm from the learned baseline"
    assert sev["threshold"] == pytest.approx(1.01 + 0.7, abs=0.011)
    assert recs[0]["detected_at"] == "2026-11-23T08:11:10.000Z"  # third reading at 1.8 (i=67)
    jsonschema.validate(recs[0], SCHEMA)


def test_iso_20816_1_alarm_is_capped_at_1_25_bc(tmp_path: Path) -> None:
    m = Monitor(config(tmp_path))
    t0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    for i in range(60):  # a rough machine: baseline 2.9 mm/s
        m.update(Reading("m1", "z", t0 + timedelta(seconds=i), {"velocity_rms_mm_s": 2.9}))
    ch = m._channels[("m1", "z")]
    assert ch.iso_alarm() == pytest.approx(1.25 * 2.8)  # not 2.9 + 0.7


def test_velocity_alarm_needs_a_waveform_long_enough_for_the_band() -> None:
    import numpy as np

    from agent.analysis.features import waveform_features
    from agent.analysis.severity import velocity_band_hz, velocity_resolved

    noise = np.random.default_rng(0).normal(0, 0.1, 25600)
    short = waveform_features(noise[:2560], 25600.0, band_hz=velocity_band_hz(1800))  # 0.1 s
    long = waveform_features(noise, 25600.0, band_hz=velocity_band_hz(1800))  # 1 s
    slow = waveform_features(noise, 25600.0, band_hz=velocity_band_hz(300))  # 2 Hz band
    assert not velocity_resolved(short)  # one period of 10 Hz
    assert velocity_resolved(long)  # ten periods
    assert not velocity_resolved(slow)  # two periods of 2 Hz
    assert velocity_resolved({"velocity_rms_mm_s": 1.0})  # a smart sensor's own value


def test_infinite_velocity_is_skipped_not_stored(tmp_path: Path) -> None:
    m = Monitor(config(tmp_path, debounce=1))
    t = datetime(2026, 11, 23, tzinfo=UTC)
    assert m.update(Reading("m1", "z", t, {"velocity_rms_mm_s": float("inf")})).drafts == []
    assert m.skipped_total == 1


def _learned(tmp_path: Path) -> tuple[Monitor, datetime]:
    m = Monitor(config(tmp_path))
    t0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    for i in range(60):
        feats = {"velocity_rms_mm_s": 1.0, "accel_rms_g": 0.2 + 0.002 * (i % 3),
                 "hf_accel_rms_g": 0.05}  # fmt: skip
        m.update(Reading("m1", "z", t0 + timedelta(seconds=10 * i), feats))
    return m, t0 + timedelta(seconds=600)


def test_missing_health_features_never_clear_an_active_trend_alert(tmp_path: Path) -> None:
    m, t = _learned(tmp_path)
    kinds = []
    for i in range(20):  # acceleration doubles: the health index crosses its level
        feats = {"velocity_rms_mm_s": 1.0, "accel_rms_g": 0.4, "hf_accel_rms_g": 0.1}
        kinds += [(d.kind, d.state) for d in m.update(
            Reading("m1", "z", t + timedelta(seconds=10 * i), feats)).drafts]  # fmt: skip
    assert ("trend", "raised") in kinds
    later = t + timedelta(seconds=300)
    for i in range(10):  # the sensor stops reporting acceleration (0 = no information)
        feats = {"velocity_rms_mm_s": 1.0, "accel_rms_g": 0.0, "hf_accel_rms_g": 0.0}
        r = Reading("m1", "z", later + timedelta(seconds=10 * i), feats)
        assert [(d.kind, d.state) for d in m.update(r).drafts] == []


def test_a_model_state_from_another_version_keeps_the_active_alerts(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    m = Monitor(cfg)
    saved: dict[str, str] = {}
    for r in readings([3.0] * 5):
        saved.update(m.update(r).state)
    model = json.loads(saved["press-7/m1/z/model"])
    model["hi"]["version"] = 999
    saved["press-7/m1/z/model"] = json.dumps(model)
    again = Monitor(cfg, state=saved)
    assert [d.state for r in readings([3.0] * 10) for d in again.update(r).drafts] == []
