"""Taking back a critical that did not come true: its due time, and the failure metric's level.

A critical on a time to failure (the trend's level 2) keeps when its estimate said the
failure would come (note_due); once that time has passed without failure, the failure metric
has not grown toward its threshold and the estimate is out of the planning horizon for the
debounce, it is revised to a warning in the same episode (revision, with
agent.analysis.lifecycle.revise). A metric that grew after the escalation but has stopped
growing (a ramp of 15-30 min, then flat: a load change, a loose part) counts as not grown once
its last STOP_BINS bins show a growth rate consistent with zero (stopped): before, such a
critical stayed for as long as the machine ran (7 h and more in the tests), however flat.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np

from agent.analysis.channel import Channel
from agent.analysis.drafts import revision_evidence
from agent.analysis.forecast import JUMP_SHARE
from agent.analysis.lifecycle import revise
from agent.analysis.ttf import Estimate
from agent.records import format_ts

__all__ = ["REVISE_BINS", "STOP_BINS", "grown", "note_due", "recent_level", "revision", "stopped"]

# The failure metric's level, to tell a failure that is late from one that is not coming
# (grown): the geometric mean of this many bins (10 min at the default 60 s bin).
REVISE_BINS = 10
# The growth has stopped when the slope of ln(metric) over this many bins (20 min at 60 s)
# is within STOP_T of its standard error of zero (or below it): with a ramp ending, that is
# about 15-20 min after its end, so the critical of a 15-30 min ramp then flat is revised
# within 1 h of the ramp's end (tests/agent/analysis/test_monitor_flat.py). A failure that
# still grows keeps it, and the rest of the rule (due time passed, estimate out of the
# horizon) is unchanged: the FEMTO replays have no revision before failure.
STOP_BINS = 20
STOP_T = 2.0


def note_due(ch: Channel, t_s: float, at: datetime) -> None:
    """A critical on the time to failure: keep when its estimate said the failure would
    come, so that a failure that does not come by then can take it back (revision). The
    estimate as of this reading: the record's hours count from its detected_at."""
    est = ch.estimate_now()
    if isinstance(est, Estimate):
        # Overdue only past the upper bound: the point is about the remaining L10 (ttf.py),
        # so a failure that comes after it but inside the bounds is the forecast coming true
        # (FEMTO Bearing1_1 v: 0.48 h [0.33, 4.0], revised at 29 min, failed at 45). At most
        # the planning horizon, the critical's own claim: a bound mixing in the reliability
        # prior (36000 h) would otherwise hold it for years.
        latest = max(min(est.upper_hours, ch.asset.planning_horizon_hours), est.hours)
        ch.trend.due_s, ch.trend.due_hours = t_s + latest * 3600.0, est.hours
        ch.trend.due_upper_hours = latest
        ch.trend.escalated_at, ch.trend.due_level = format_ts(at), recent_level(ch, peak=True)


def recent_level(ch: Channel, *, peak: bool = False) -> float | None:
    """The failure metric over its last REVISE_BINS bins (None without any): their geometric
    mean, a level that noise or a value alternating between two readings hardly moves, or
    (peak) their highest bin."""
    v = ch.history.points()[1][-REVISE_BINS:]
    v = v[np.isfinite(v) & (v > 0.0)]
    if not v.shape[0]:
        return None
    return float(v.max()) if peak else float(np.exp(np.log(v).mean()))


def stopped(ch: Channel) -> tuple[float, float] | None:
    """(slope, standard error) of ln(failure metric) per hour over the last STOP_BINS bins
    when that growth is consistent with zero (slope under STOP_T standard errors), else
    None (still growing, or too few bins to tell)."""
    t, v = ch.history.points()
    t, v = t[-STOP_BINS:], v[-STOP_BINS:]
    ok = np.isfinite(v) & (v > 0.0)
    t, y = t[ok] / 3600.0, np.log(v[ok])
    if t.shape[0] < STOP_BINS:
        return None
    dt = t - t.mean()
    sxx = float(dt @ dt)
    if not sxx > 0.0:
        return None
    slope = float(dt @ (y - y.mean())) / sxx
    resid = y - y.mean() - slope * dt
    se = math.sqrt(float(resid @ resid) / (t.shape[0] - 2) / sxx)
    return (slope, se) if slope <= STOP_T * se else None


def grown(ch: Channel) -> bool:
    """Whether the failure metric has grown toward its threshold since the escalation: its
    recent level above the highest bin before the escalation by more than JUMP_SHARE of its
    log distance to the threshold (unknown counts as grown: the critical stays)."""
    then, now = ch.trend.due_level, recent_level(ch)
    _, threshold = ch.failure()
    if then is None or now is None or not 0.0 < then < threshold:
        return True
    return math.log(now / then) > JUMP_SHARE * math.log(threshold / then)


def revision(ch: Channel, t_s: float) -> dict[str, object] | None:
    """The evidence of a critical taken back (agent.analysis.lifecycle.revise), or None.

    A step then flat (a rebalanced or re-mounted machine, a load change) fits, right after
    the step, only a growth that reaches the threshold in seconds, and a failure's last
    minutes start with the same jump (FEMTO), so the critical is sent; once the predicted
    failure time has passed without failure (to the end of its upper bound), the metric
    has not grown and the estimate has been out of the horizon for the debounce, the record
    says it was revised and why, in the same episode.
    """
    st = ch.trend
    if st.active < 2 or st.due_s is None:  # almost every reading: nothing to revise
        st.revise_streak = 0
        return None
    hours, upper, escalated_at = st.due_hours, st.due_upper_hours, st.escalated_at
    told = ch.hours_now()  # as of this reading, as the revision's record says
    soon = told is not None and told < ch.asset.planning_horizon_hours
    halt = None if soon else stopped(ch)
    has_grown = not soon and grown(ch) and halt is None
    debounce = ch.asset.alerting.debounce
    if not revise(st, soon=soon, grown=has_grown, now_s=t_s, debounce=debounce):
        return None
    ev = revision_evidence(ch, ch.estimate_now(), hours, escalated_at, upper)
    if halt is not None:  # why a metric above its level at the escalation no longer counts
        ev["growth_stopped"] = {
            "bins": STOP_BINS,
            "log_rate_per_hour": round(halt[0], 5),
            "standard_error": round(halt[1], 5),
        }
    return ev
