"""A time to failure is not extrapolated from a handful of bins right after a change: a step
gives none from the trend until the jump model has its 6 bins after it
(agent.analysis.degradation._recent_change), never the threshold "in seconds"."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.analysis.monitor import Monitor

from .test_monitor_step import config, run


@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.parametrize("to", [3.2, 4.2])
def test_the_readings_right_after_a_step_give_no_time_in_seconds(
    tmp_path: Path, prior: bool, to: float
) -> None:
    """Before: the 3rd-5th readings after 1.0 -> 3.2 (or 4.2) mm/s said 0.0004-0.009 h
    (1-30 s), before the jump model took over; now no estimate from the trend (the prior's
    alone, with one) until then, and the reason says how many bins it has."""
    m = Monitor(config(tmp_path, prior))
    hours: list[float | None] = []
    reasons: list[str] = []
    levels = [1.0] * 120 + [to] * 15
    for k in range(len(levels)):  # one reading at a time, to see each reason
        run(m, [levels[k]], hours=hours, minutes=[k], seed=k)
        est = m._channels[("m1", "z")].estimate
        reasons.append(getattr(est, "reason", None) or getattr(est, "basis", ""))
    after = [h for h in hours[120:] if h is not None]
    assert not after or min(after) >= 1.0, hours[120:]
    assert any("no estimate yet" in r and "since the change" in r for r in reasons[120:])
