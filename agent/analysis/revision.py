"""Taking back a critical that did not come true: its due time, and the failure metric's level.

A critical on a time to failure (the trend's level 2) keeps when its estimate said the
failure would come (note_due); once that time has passed without failure, the failure metric
has not grown toward its threshold and the estimate is out of the planning horizon for the
debounce, it is revised to a warning in the same episode (revision, with
agent.analysis.lifecycle.revise).
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

__all__ = ["REVISE_BINS", "grown", "note_due", "recent_level", "revision"]

# The failure metric's level, to tell a failure that is late from one that is not coming
# (grown): the geometric mean of this many bins (10 min at the default 60 s bin).
REVISE_BINS = 10


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
    has_grown = not soon and grown(ch)
    debounce = ch.asset.alerting.debounce
    if not revise(st, soon=soon, grown=has_grown, now_s=t_s, debounce=debounce):
        return None
    return revision_evidence(ch, ch.estimate_now(), hours, escalated_at, upper)
