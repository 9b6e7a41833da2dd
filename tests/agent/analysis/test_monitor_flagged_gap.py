"""An alert clears only after its readings have stayed below the clear level for
clear_hold_s: time covered by flagged readings (a railed or saturated sensor, garbage: not
analysed) is no time below it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.analysis.monitor import Monitor
from drivers.reading import Reading
from tests.agent._configs import press_config

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def feats(v: float) -> dict[str, float]:
    return {"velocity_rms_mm_s": v, "accel_rms_g": 0.05 * v, "hf_accel_rms_g": 0.02 * v}


def run(m: Monitor, plan: list[tuple[float, str]]) -> list[tuple[int, str, str]]:
    """One reading a minute: (velocity, quality); (index, kind, state) of the drafts."""
    out = []
    for i, (v, quality) in enumerate(plan):
        flags = ("velocity_rms_mm_s:saturated",) if quality == "bad" else ()
        r = Reading("m1", "z", T0 + timedelta(minutes=i), feats(v), mono_s=60.0 * i,
                    quality=quality, flags=flags)  # fmt: skip
        out += [(i, d.kind, d.state) for d in m.update(r).drafts]
    return out


def test_a_railed_sensor_does_not_count_toward_clearing_a_zone_d_alert(tmp_path: Path) -> None:
    """Before: zone D, one reading at 1 mm/s, 2 h of saturated readings, then two at 1 mm/s:
    the alert cleared, its 30 min hold met by the 2 h nobody measured the machine."""
    m = Monitor(press_config(tmp_path, baseline_readings=30))
    hold_min = int(press_config(tmp_path).assets[0].alerting.clear_hold_s // 60)
    plan = [(1.0, "good")] * 60 + [(6.0, "good")] * 10 + [(1.0, "good")]
    plan += [(1.0, "bad")] * 120 + [(1.0, "good")] * (hold_min + 5)
    out = run(m, plan)
    assert (62, "severity", "raised") in out
    cleared = [i for i, kind, state in out if (kind, state) == ("severity", "cleared")]
    back = 60 + 10 + 1 + 120  # the first analysed reading after the railed sensor
    assert cleared and cleared[0] >= back + hold_min - 1, (cleared, out)


def test_a_lone_flagged_reading_delays_a_clear_by_its_own_time_only(tmp_path: Path) -> None:
    """Garbage now and then does not restart the hold: it only leaves out its own time."""
    m = Monitor(press_config(tmp_path, baseline_readings=30))
    hold_min = int(press_config(tmp_path).assets[0].alerting.clear_hold_s // 60)
    low = [(1.0, "good") if i % 10 else (1.0, "bad") for i in range(1, hold_min + 20)]
    out = run(m, [(1.0, "good")] * 60 + [(6.0, "good")] * 10 + low)
    cleared = [i for i, kind, state in out if (kind, state) == ("severity", "cleared")]
    assert cleared and cleared[0] <= 70 + hold_min + hold_min // 5 + 3, (cleared, hold_min)
