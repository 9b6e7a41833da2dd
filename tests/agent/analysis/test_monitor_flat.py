"""A ramp of 15-30 min then flat (a load change, a rebalanced but loose part: no further
degradation) is not a failure within hours for the rest of the day: its critical is revised
to a warning once the growth has stopped (agent.analysis.revision.stopped), within 1 h of
the ramp's end; growth that goes on keeps it."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from agent.analysis.monitor import Monitor

from .test_monitor_step import SCHEMA, T0, config, level, run


def at(rec: dict) -> datetime:
    return datetime.fromisoformat(rec["detected_at"].replace("Z", "+00:00"))


@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.parametrize(("ramp_min", "top"), [(15, 2.5), (20, 3.2), (30, 3.5)])
def test_a_ramp_then_flat_has_its_critical_revised_within_an_hour(
    tmp_path: Path, prior: bool, ramp_min: int, top: float
) -> None:
    """Before: the critical stayed 5 h (and for as long as the machine ran): the metric
    was above its level at the escalation (the ramp went on after it), which counted as
    'still growing' however flat it was since."""
    m = Monitor(config(tmp_path, prior))
    ramp = [top ** (min(i, ramp_min) / ramp_min) for i in range(ramp_min + 90)]
    recs = run(m, [1.0] * 120 + ramp)
    states = [(r["state"], level(r)) for r in recs]
    assert ("escalated", "critical") in states
    esc = states.index(("escalated", "critical"))
    rev = [r for r in recs[esc + 1 :] if r["evidence"].get("revision")]
    assert rev, states
    r = rev[0]
    ramp_end = T0 + timedelta(minutes=120 + ramp_min)
    assert at(r) <= ramp_end + timedelta(hours=1), r["detected_at"]
    assert (r["state"], level(r)) == ("escalated", "warning")
    stop = r["evidence"]["revision"].get("growth_stopped")  # absent: not grown at all
    assert stop is None or stop["log_rate_per_hour"] <= 2.0 * stop["standard_error"]
    jsonschema.validate(r, SCHEMA)
    # and it stays a warning: nothing escalates it again while it stays flat
    assert states[esc + 1 :] == [("escalated", "warning")]


def test_growth_that_goes_on_keeps_its_critical_to_the_threshold(tmp_path: Path) -> None:
    """The same ramp, then slower growth (1 %/min) to the threshold: never revised."""
    m = Monitor(config(tmp_path, False))
    ramp = [2.0 ** (i / 20) for i in range(20)] + [2.0 * math.exp(0.01 * i) for i in range(80)]
    recs = run(m, [1.0] * 120 + ramp)
    states = [(r["state"], level(r)) for r in recs]
    assert ("escalated", "critical") in states
    assert not [r for r in recs if r["evidence"].get("revision")], states
