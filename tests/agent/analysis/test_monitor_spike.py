"""One glitched reading (a knock, a bad packet inside the valid range) is no degradation
onset: the health index takes it out before smoothing, so the debounce means readings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.analysis.monitor import Monitor
from drivers.reading import Reading
from tests.agent._configs import press_config

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def feed(m: Monitor, spikes: dict[int, float], n: int = 120) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        wobble = 1.0 + 0.03 * ((i * 7) % 5 - 2) / 2  # deterministic +/- 3 % noise
        f = spikes.get(i, 1.0)
        feats = {"velocity_rms_mm_s": wobble, "accel_rms_g": 0.05 * wobble * f,
                 "hf_accel_rms_g": 0.02 * wobble * f}  # fmt: skip
        at = T0 + timedelta(seconds=60 * i)
        out += [(d.kind, d.state) for d in m.update(Reading("m1", "z", at, feats)).drafts]
    return out


@pytest.mark.parametrize("factor", [12.0, 1000.0])
def test_one_glitched_reading_raises_no_trend_alert(tmp_path: Path, factor: float) -> None:
    m = Monitor(press_config(tmp_path, baseline_readings=30))
    assert feed(m, {60: factor}) == []


def test_a_lasting_rise_still_raises_after_the_debounce(tmp_path: Path) -> None:
    m = Monitor(press_config(tmp_path, baseline_readings=30))
    assert ("trend", "raised") in feed(m, dict.fromkeys(range(60, 120), 2.0))


def test_a_record_never_says_the_health_index_is_below_its_level_when_it_is_over(
    tmp_path: Path,
) -> None:
    """Before: a severity alert raised while the health index was already over its level
    (but not yet for the debounce) gave as its reason "the health index (0.44) is below its
    baseline alarm level (0.2)"."""
    m = Monitor(press_config(tmp_path, baseline_readings=30))
    for i in range(40):  # zone B baseline: its ISO 20816-1 alarm is min(2.5 + 0.7, 3.5) = 3.2
        feats = {"velocity_rms_mm_s": 2.5 + 0.01 * (i % 3), "accel_rms_g": 0.05,
                 "hf_accel_rms_g": 0.02}  # fmt: skip
        assert m.update(Reading("m1", "z", T0 + timedelta(minutes=i), feats)).drafts == []
    t = T0 + timedelta(minutes=40)
    feats = {"velocity_rms_mm_s": 3.0, "accel_rms_g": 0.5, "hf_accel_rms_g": 0.2}  # zone C
    drafts = [d for i in range(3) for d in m.update(
        Reading("m1", "z", t + timedelta(minutes=i), feats)).drafts]  # fmt: skip
    assert [(d.kind, d.state) for d in drafts] == [("severity", "raised")]
    hi = m._channels[("m1", "z")].hi
    assert hi.value is not None and hi.level is not None and hi.value > hi.level
    assert "is below" not in (drafts[0].no_estimate_reason or "")
    assert "is over its baseline alarm level" in (drafts[0].no_estimate_reason or "")
