"""A trend record's severity.zone is the channel's ISO zone at its reading wherever the
velocity was measured, whatever raised it (health index, ISO 20816-1 alarm, time to
failure): the integrator sees an early warning in zone A as such."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema

from agent.analysis.monitor import Monitor
from drivers.reading import Reading
from tests.agent._configs import press_config

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[3] / "agent" / "schemas" / "alert-v1.json").read_text()
)
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def test_a_health_index_trend_alert_carries_the_measured_zone(tmp_path: Path) -> None:
    """Before: velocity 1.01 mm/s measured (zone A), the trend warning said zone null."""
    m = Monitor(press_config(tmp_path, baseline_readings=30))
    records = []
    for i in range(120):
        wobble = 1.0 + 0.03 * ((i * 7) % 5 - 2) / 2
        accel = 3.0 if i >= 60 else 1.0  # the bearing's acceleration rises, velocity does not
        f = {"velocity_rms_mm_s": 1.01 * wobble, "accel_rms_g": 0.05 * accel * wobble,
             "hf_accel_rms_g": 0.02 * accel * wobble}  # fmt: skip
        r = Reading("m1", "z", T0 + timedelta(minutes=i), f, mono_s=60.0 * i)
        records += [d.record(gateway_id="g", seq=1) for d in m.update(r).drafts]
    trend = [r for r in records if r["kind"] == "trend"]
    assert trend and trend[0]["state"] == "raised"
    assert trend[0]["severity"]["metric"] == "health_index"
    assert trend[0]["severity"]["zone"] == "A"
    assert all(r["kind"] == "trend" for r in records)  # velocity stayed in zone A
    for rec in records:
        jsonschema.validate(rec, SCHEMA)
