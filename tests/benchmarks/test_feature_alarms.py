"""Baseline learning, ISO 20816-1 alarm levels, reset, persistence; FEMTO false alarms."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.analysis.features import waveform_features
from agent.analysis.severity import iso_alarm_level

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "analytics"))
from feature_alarms import Baseline

FEMTO = Path(__file__).resolve().parents[3] / "shared" / "data" / "femto"


def _learn(b: Baseline, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        b.update(
            float(i),
            {
                "velocity_rms_mm_s": 1.0 + rng.normal(0, 0.05),
                "kurtosis": 3.0 + rng.normal(0, 0.1),
                "accel_rms_g": 0.3 + rng.normal(0, 0.01),
            },
        )


def test_iso_rule() -> None:
    assert iso_alarm_level(1.0, 4.5) == pytest.approx(2.125)
    assert iso_alarm_level(5.0, 4.5) == pytest.approx(5.625)  # capped at 1.25 x B/C


def test_learns_then_alarms() -> None:
    b = Baseline(learn_readings=50, iso_bc_mm_s=4.5)
    _learn(b, 49)
    assert not b.ready and b.levels() == {}
    _learn(b, 1)
    assert b.ready
    levels = b.levels()
    assert levels["velocity_rms_mm_s"][0] == pytest.approx(iso_alarm_level(1.0, 4.5), rel=0.02)
    assert levels["accel_rms_g"][0] >= 2.0 * 0.3 * 0.95
    assert b.exceedances({"accel_rms_g": 0.31, "velocity_rms_mm_s": 1.1}) == []
    ex = b.exceedances({"accel_rms_g": 1.0, "velocity_rms_mm_s": 2.5, "kurtosis": 3.1})
    assert {e.feature for e in ex} == {"accel_rms_g", "velocity_rms_mm_s"}


def test_time_based_learning_and_reset() -> None:
    b = Baseline(learn_readings=10_000, learn_s=3600.0, min_readings=20)
    for i in range(100):
        b.update(i * 60.0, {"accel_rms_g": 0.3})
    assert b.ready and b.baseline("accel_rms_g") == pytest.approx(0.3)
    b.reset()
    assert not b.ready and b.readings_seen == 0


def test_learning_memory_is_bounded() -> None:
    b = Baseline(learn_readings=100_000, max_samples=64)
    for i in range(5000):
        b.update(float(i), {"accel_rms_g": 0.3})
    assert all(len(s) <= 64 for s in b._samples.values())


def test_state_round_trip() -> None:
    b = Baseline(learn_readings=30, iso_bc_mm_s=2.8)
    _learn(b, 10)
    again = Baseline.from_dict(json.loads(json.dumps(b.to_dict())))
    _learn(b, 20, seed=1)
    _learn(again, 20, seed=1)
    assert again.ready and again.levels() == b.levels()


@pytest.mark.femto
@pytest.mark.skipif(not FEMTO.exists(), reason="../shared/data/femto not present (user clone)")
def test_femto_no_alarm_in_healthy_first_half() -> None:
    """Bearing1_1 (life 7.8 h, onset near mid-life): default levels stay quiet early on."""
    with np.load(FEMTO / "Bearing1_1.npz") as d:
        acc, scale, fs = d["acc"], float(d["scale_g"]), float(d["fs_hz"])
    b = Baseline(learn_readings=60)
    run, raised = 0, 0
    for i in range(0, 1200):  # first ~43 % of life, before the degradation onset
        f = waveform_features(acc[i, :, 0] * scale, fs)
        if not b.ready:
            b.update(i * 10.0, f)
            continue
        run = run + 1 if b.exceedances(f) else 0
        raised += run == 3
    assert raised == 0
