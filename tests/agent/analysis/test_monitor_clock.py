"""A wall clock stepped by NTP while the agent runs: durations follow the monotonic clock.

Live readings carry the wall time they were taken (the record's detected_at) and the
monotonic time (`mono_s`). A step of the wall clock by hours, forward or back, must neither
cut the clear hold short (an early clear), nor defeat the re-raise hold-off (a new episode
for the same fault), nor stop the periodic save of the model state.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.analysis.monitor import Monitor
from drivers.reading import Reading
from tests.agent._configs import press_config

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
MONO0 = 5000.0  # monotonic seconds since boot, any value


def live(values: list[float], steps: dict[int, float]) -> list[Reading]:
    """One reading a second (monotonic); the wall clock jumps by steps[i] s before reading i."""
    out, shift = [], 0.0
    for i, v in enumerate(values):
        shift += steps.get(i, 0.0)
        wall = T0 + timedelta(seconds=i + shift)
        feats = {"velocity_rms_mm_s": v, "kurtosis": 3.1}
        out.append(Reading("m1", "z", wall, feats, mono_s=MONO0 + i))
    return out


def transitions(m: Monitor, rs: list[Reading]) -> list[tuple[str, str]]:
    return [(d.kind, d.state) for r in rs for d in m.update(r).drafts if d.kind == "severity"]


def test_a_clock_stepped_forward_does_not_cut_the_clear_hold_short(tmp_path: Path) -> None:
    m = Monitor(press_config(tmp_path, debounce=3, hysteresis=0.1, clear_hold_s=1800))
    # Zone C for 3 s (raised), then below the clear level for 20 s; NTP steps the clock
    # 2 h forward after 2 s of it. 20 s below is not the 30 min the hold asks for.
    rs = live([3.1] * 3 + [2.0] * 20, steps={5: 7200.0})
    assert transitions(m, rs) == [("severity", "raised")]


def test_a_clock_stepped_back_does_not_defeat_the_reraise_holdoff(tmp_path: Path) -> None:
    m = Monitor(
        press_config(tmp_path, debounce=3, hysteresis=0.1, resend_holdoff_s=600, clear_hold_s=0)
    )
    # Raised, cleared after 3 s below, then zone C again 5 s later: within the 10 min
    # hold-off, so no new raise. NTP steps the clock 1 h back in between.
    rs = live([3.1] * 3 + [2.0] * 3 + [3.1] * 10, steps={7: -3600.0})
    assert transitions(m, rs) == [("severity", "raised"), ("severity", "cleared")]


def test_a_clock_stepped_forward_does_not_defeat_the_reraise_holdoff(tmp_path: Path) -> None:
    m = Monitor(
        press_config(tmp_path, debounce=3, hysteresis=0.1, resend_holdoff_s=600, clear_hold_s=0)
    )
    rs = live([3.1] * 3 + [2.0] * 3 + [3.1] * 10, steps={7: 3600.0})
    assert transitions(m, rs) == [("severity", "raised"), ("severity", "cleared")]


def test_a_clock_stepped_back_keeps_saving_the_model(tmp_path: Path) -> None:
    m = Monitor(press_config(tmp_path, debounce=3, hysteresis=0.1))
    # Healthy, its baseline learned (60 readings); the clock goes 2 h back at 100 s.
    rs = live([1.0] * 300, steps={100: -7200.0})
    saved = [i for i, r in enumerate(rs) if any(k.endswith("/model") for k in m.update(r).state)]
    # The model state is written at most once a minute of reading time, and at least:
    # a kill -9 loses at most a minute of what the channel learned, clock step or not.
    after = [i for i in saved if i >= 100]
    assert after and after[0] - 100 <= 61, saved
    assert all(b - a <= 61 for a, b in itertools.pairwise(after)), saved


def test_readings_without_a_monotonic_time_keep_their_own_clock(tmp_path: Path) -> None:
    """A recording (replay) or a sensor's own timestamps: their clock is the only one."""
    m = Monitor(press_config(tmp_path, debounce=3, hysteresis=0.1, clear_hold_s=1800))
    vals = [3.1] * 3 + [2.0] * 5
    rs = [
        Reading("m1", "z", T0 + timedelta(seconds=i * 600), {"velocity_rms_mm_s": v})
        for i, v in enumerate(vals)
    ]  # ten minutes apart: 30 min below after the fourth low reading
    assert transitions(m, rs) == [("severity", "raised"), ("severity", "cleared")]
