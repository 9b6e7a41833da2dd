"""A burst of garbage inside the valid range is no step of the machine: a reading that
jumps tenfold is analysed only once the jump lasts (agent.analysis.confirm), while a real
step still raises, at most JUMP_CONFIRM - 1 readings later than without the rule."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.analysis.confirm import JUMP_CONFIRM, RECUR_BURSTS, RECUR_READINGS
from agent.analysis.monitor import Monitor
from agent.config import Config
from drivers.reading import Reading
from tests.agent._configs import press_config

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
HEALTHY = 1.0  # mm/s, zone A (group 2 rigid: C/D at 4.5)


def feats(factor: float, i: int) -> dict[str, float]:
    wobble = 1.0 + 0.03 * ((i * 7) % 5 - 2) / 2  # deterministic +/- 3 % noise
    v = HEALTHY * factor * wobble
    return {"velocity_rms_mm_s": v, "accel_rms_g": 0.05 * v, "hf_accel_rms_g": 0.02 * v}


def feed(m: Monitor, factors: dict[int, float], n: int) -> list[tuple[int, str, str, str]]:
    """One reading a minute, at HEALTHY x factors.get(i, 1); (i, kind, state, detected_at)."""
    out = []
    for i in range(n):
        at = T0 + timedelta(minutes=i)
        r = Reading("m1", "z", at, feats(factors.get(i, 1.0), i), mono_s=60.0 * i)
        out += [(i, d.kind, d.state, d.record(gateway_id="g", seq=1)["detected_at"])
                for d in m.update(r).drafts]  # fmt: skip
    return out


@pytest.mark.parametrize("burst", [2, 3])
@pytest.mark.parametrize("factor", [30.0, 1000.0])  # 30 mm/s: inside a QM30VT2's valid 0-50
def test_a_burst_of_garbage_raises_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, burst: int, factor: float
) -> None:
    """Before: three readings of 30 mm/s raised ISO zone D (and a trend alert); two made the
    health index's smoothed value stay over its level for the debounce: a trend warning."""
    m = Monitor(press_config(tmp_path, baseline_readings=30))
    garbage = {i: factor for i in range(60, 60 + burst)}
    garbage |= {i: factor for i in range(90, 90 + burst)}  # a second burst: counted only
    with caplog.at_level(logging.WARNING, logger="agent.analysis.monitor"):
        assert feed(m, garbage, 150) == []
    assert m.unconfirmed_total == 2 * burst
    assert [v.unconfirmed for v in m.views()] == [2 * burst]  # status and /metrics
    logged = [r.getMessage() for r in caplog.records if "taken as garbage" in r.getMessage()]
    assert len(logged) == 1, logged
    assert f"{burst} reading(s) from 2026-11-23T09:00:00.000Z" in logged[0]


@pytest.mark.parametrize("factor", [20.0, 1000.0])
def test_a_real_step_still_raises_zone_d_within_the_confirmation(
    tmp_path: Path, factor: float
) -> None:
    """A bearing that fails in one step: zone D from the debounce's reading of the step (its
    detected_at), sent by the JUMP_CONFIRM-th reading of the step at the latest."""
    m = Monitor(press_config(tmp_path, baseline_readings=30))
    step = 60
    out = feed(m, {i: factor for i in range(step, 120)}, 120)
    severity = [(i, state, at) for i, kind, state, at in out if kind == "severity"]
    assert severity[0][:2] == (step + JUMP_CONFIRM - 1, "raised")
    assert severity[0][2] == "2026-11-23T09:02:00.000Z"  # the step's 3rd reading (debounce)
    assert any(kind == "trend" for _, kind, _, _ in out)


def test_a_step_under_tenfold_is_not_held(tmp_path: Path) -> None:
    m = Monitor(press_config(tmp_path, baseline_readings=30))
    out = feed(m, {i: 6.0 for i in range(60, 120)}, 120)  # 6 mm/s: zone D, a x6 step
    assert (62, "severity", "raised") in [(i, k, s) for i, k, s, _ in out]
    assert m.unconfirmed_total == 0


def test_a_peak_that_jumps_tenfold_for_one_reading_is_analysed(tmp_path: Path) -> None:
    """A spall's impact lifts peak acceleration tenfold for one snapshot for real (FEMTO
    Bearing3_1: its trend raised one snapshot late when such a peak, its failure metric, was
    held and dropped as garbage). Only RMS values are judged for a jump."""
    data = press_config(tmp_path, baseline_readings=30).model_dump(mode="json", by_alias=True)
    data["assets"][0]["failure"] = {"metric": "accel_peak_g", "threshold": 20.0}
    m = Monitor(Config.model_validate(data))
    for i in range(80):
        f = feats(1.0, i) | {"accel_peak_g": 0.2 * (12.0 if i == 60 else 1.0)}
        m.update(Reading("m1", "z", T0 + timedelta(minutes=i), f, mono_s=60.0 * i))
    assert m.unconfirmed_total == 0
    assert max(m._channels[("m1", "z")].history.points()[1]) > 2.0  # the impact is in it


def test_jumps_that_keep_falling_back_are_analysed_not_dropped_forever(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An intermittent fault (an impacting bearing) alternating x12 and normal readings:
    before, every high reading was a burst that fell back, dropped forever (1 reading in 2
    counted as garbage, no alert ever). The third burst within RECUR_READINGS readings is
    analysed, and so is every jump after it: the trend alert is raised."""
    m = Monitor(press_config(tmp_path, baseline_readings=30))
    with caplog.at_level(logging.WARNING, logger="agent.analysis.monitor"):
        out = feed(m, {i: 12.0 for i in range(60, 400, 2)}, 400)
    assert [(k, s) for _, k, s, _ in out][:1] == [("trend", "raised")]
    assert m.unconfirmed_total == RECUR_BURSTS - 1  # the first two bursts only
    assert [v.unconfirmed for v in m.views()] == [RECUR_BURSTS - 1]
    logged = [r.getMessage() for r in caplog.records if "they recur" in r.getMessage()]
    assert len(logged) == 1, logged


def test_recurring_jumps_are_held_again_once_they_stop(tmp_path: Path) -> None:
    """After RECUR_READINGS readings without a jump, a lone burst is garbage again."""
    m = Monitor(press_config(tmp_path, baseline_readings=30))
    garbage = {i: 30.0 for i in (60, 62, 64)}  # recurring: the third is analysed
    garbage |= {i: 30.0 for i in (64 + RECUR_READINGS + 60, 64 + RECUR_READINGS + 61)}
    feed(m, garbage, 64 + RECUR_READINGS + 100)
    assert m.unconfirmed_total == RECUR_BURSTS - 1 + 2
