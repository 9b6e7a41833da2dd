"""What a channel relearns when its readings change meaning, and the alerts that closes.

A reload, a restart with an edited configuration, or a baseline learned at standstill can
make a channel's model stale (agent.analysis.basis): a new failure metric, trend bin or
bearing rebuilds the history only; a new speed, profile or decoder relearns the baseline,
closing the open trend alert with the reason; another physical sensor at the sensor id
closes the open severity alert too (its readings are judged afresh). Closing, not clearing
later as a recovery: the readings no longer measure what the alert was raised on.
"""

from __future__ import annotations

import json
from datetime import datetime

from agent.analysis.basis import Basis, BasisChange, Resolved, basis_change
from agent.analysis.channel import Channel, model_state
from agent.analysis.health_index import HealthIndex
from agent.analysis.lifecycle import LifecycleState
from agent.analysis.outcome import Tuning, Update
from agent.analysis.removed import asset_ref, closing_draft
from agent.analysis.trend import Trend
from agent.config import Asset

__all__ = [
    "RELEARNED_AT_STANDSTILL",
    "RELEARNED_AT_START",
    "RELEARNED_BY_RELOAD",
    "closed",
    "judge_afresh",
    "new_history",
    "rebase",
    "relearn",
    "relearn_standstill",
]

RELEARNED_BY_RELOAD = "cleared by a reload: baseline relearned after {}"
RELEARNED_AT_START = "closed at start: baseline relearned after {} while the agent was stopped"
RELEARNED_AT_STANDSTILL = "cleared: baseline relearned from the running machine: {}"
# The severity alert of readings that are now another sensor's (or another conversion's).
_JUDGED_AFRESH = {
    RELEARNED_BY_RELOAD: "cleared by a reload: {}; the new readings are judged afresh",
    RELEARNED_AT_START: (
        "closed at start: {} while the agent was stopped; the new readings are judged afresh"
    ),
}


def new_history(asset: Asset, tuning: Tuning) -> Trend:
    """An empty failure-metric history for a channel of `asset`."""
    bin_s = asset.alerting.trend_bin_s or tuning.bin_s
    return Trend(model="exponential", bin_s=bin_s, window_bins=30, capacity=tuning.capacity)


def closed(
    ch: Channel, kind: str, state: LifecycleState, asset: Asset, at: datetime, out: Update,
    reason: str, lead: str,
) -> LifecycleState:  # fmt: skip
    """Close the channel's open `kind` alert (`state`) now, with the reason: its readings no
    longer measure what it was raised on, so it is not left to clear later as a recovery.
    Returns the channel's new (idle) state for that kind."""
    out.drafts.append(
        closing_draft(asset_ref(asset, asset.id), ch.sensor, kind, state.active,
                      state.raised_at, at, reason, lead)
    )  # fmt: skip
    idle = LifecycleState()
    out.state[ch.key(kind)] = json.dumps(idle.to_dict(), sort_keys=True)
    return idle


def rebase(
    ch: Channel, asset: Asset, now: Basis, at: datetime, out: Update, why: str, tuning: Tuning,
    resolved: Resolved | None = None,
) -> None:  # fmt: skip
    """Relearn what the channel's model lost by the change from the basis it was learned
    under to `now` (agent.analysis.basis; `resolved`: the host names looked up now),
    nothing more. A model saved without a basis (an older store) is kept as it is and
    learned on under `now`."""
    before, ch.basis = ch.basis, now
    change = BasisChange() if before is None else basis_change(before, now, resolved)
    if change.readings:
        judge_afresh(ch, asset, "; ".join(change.readings), at, out, why)
    if change.relearn is not None:
        relearn(ch, asset, change.relearn, at, out, why, tuning)
    elif change.history:
        ch.history = new_history(asset, tuning)
        out.state[ch.key("model")] = model_state(ch)


def judge_afresh(ch: Channel, asset: Asset, what: str, at: datetime, out: Update, why: str) -> None:
    """The channel's readings are now another sensor's (or another conversion's): its open
    severity alert, judged on the old ones, is closed now with the reason, not later as a
    recovery (or kept open by the new sensor's readings as the same episode); the new
    readings raise their own after the usual debounce."""
    if ch.severity.active:
        reason, lead = _JUDGED_AFRESH[why].format(what), "judged again from the next readings"
        ch.severity = closed(ch, "severity", ch.severity, asset, at, out, reason, lead)


def relearn(
    ch: Channel, asset: Asset, what: str, at: datetime, out: Update, why: str, tuning: Tuning
) -> None:
    """Start the channel's baseline and history again; its open trend alert (measured
    against the old baseline) is closed now, with the reason (`why` formatted with what
    changed), not later as a recovery."""
    if ch.trend.active:
        lead = "no time to failure until the new baseline is learned"
        ch.trend = closed(ch, "trend", ch.trend, asset, at, out, why.format(what), lead)
    ch.hi = HealthIndex(asset.alerting.baseline_readings, tuning.health)
    ch.history, ch.onset_s = new_history(asset, tuning), None
    ch.unwait()  # a new day from the next reading under the floor, logged again if so
    out.state[ch.key("model")] = model_state(ch)


def relearn_standstill(ch: Channel, at: datetime, out: Update, tuning: Tuning) -> None:
    """A baseline whose velocity median is under the machine's running floor was learned
    while the machine stood (saved by a version without the floor, or the floor since
    raised by a reload): every running reading would be an alert against it. It is learned
    again from the running machine; a trend alert measured against it is closed, saying
    why."""
    base, floor = ch.hi.velocity_median, ch.asset.machine.running_above_mm_s
    if not ch.hi.ready or base is None or base >= floor:
        return
    what = (
        f"the baseline was learned at standstill (velocity RMS median {base:.3g} mm/s, "
        f"under machine.running_above_mm_s {floor:g} mm/s)"
    )
    relearn(ch, ch.asset, what, at, out, RELEARNED_AT_STANDSTILL, tuning)
