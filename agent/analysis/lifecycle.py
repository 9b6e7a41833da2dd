"""The alert state machine for one asset/sensor/channel/kind.

Raise after N consecutive readings at or above a level (debounce), escalate after N
consecutive readings at a higher level, clear only after N consecutive readings below the
clear threshold (threshold minus hysteresis) spanning at least clear_hold_s of reading time
(hysteresis in time as well as level: a level that dips below and comes back within the hold
is one episode, not a clear and a new raise; each such return is counted as a flap). Only
transitions produce records, so nothing that has not changed is re-sent. The state is a
small dataclass the store persists in the same transaction as the alert it produced: a
restart neither forgets nor repeats an alert.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Transition = Literal["raised", "escalated", "cleared"]


@dataclass(slots=True)
class LifecycleState:
    """Persisted per key. `active` is the raised level (0: no alert active)."""

    active: int = 0
    streak_level: int = 0  # lowest level seen over the current exceedance streak
    streak: int = 0  # consecutive readings towards a raise or an escalation
    clear_streak: int = 0  # consecutive readings below the clear threshold
    raised_at: str | None = None  # UTC ISO time of the raise, for the record's evidence
    cleared_at_s: float | None = None  # reading time (s) of the last clear, for the hold-off
    below_since_s: float | None = None  # reading time the current run below the clear level began
    flaps: int = 0  # returns above the limit after a run below that would have cleared
    # A critical on a time to failure (the trend's level 2): the reading time its estimate
    # said the failure would come by at the latest (its upper bound), the estimate and that
    # bound, when it was sent and the failure metric's recent level then, for revise().
    due_s: float | None = None
    due_hours: float | None = None
    due_upper_hours: float | None = None
    escalated_at: str | None = None
    due_level: float | None = None
    revise_streak: int = 0  # consecutive readings past due_s with the estimate out of horizon
    # When the episode's first critical was sent (it opened the episode's CMMS work order),
    # kept through a revision: a later escalation says so, and opens no second work order.
    critical_at: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> LifecycleState:
        known = {k: data[k] for k in cls.__slots__ if k in data}  # type: ignore[attr-defined]
        return cls(**known)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Step:
    """What one reading did: a transition (or None) and the level it concerns."""

    transition: Transition | None
    level: int


_QUIET = Step(None, 0)  # the step of almost every reading (immutable, so shared)


def step(
    state: LifecycleState,
    level: int,
    *,
    below_clear: bool,
    debounce: int,
    now_iso: str | None = None,
    now_s: float | None = None,
    holdoff_s: float = 0.0,
    clear_hold_s: float = 0.0,
) -> Step:
    """Advance the state machine by one reading (mutates `state`).

    Args:
        state: the key's state, updated in place.
        level: the reading's level (0 none, 1 warning, 2 critical...).
        below_clear: the reading is below the clear threshold (threshold minus hysteresis).
        debounce: consecutive readings needed to raise, escalate or clear.
        now_iso: the reading's UTC time, kept as raised_at on a raise (callers that
            format timestamps only when needed pass None and fill raised_at).
        now_s: the reading's time in seconds (any fixed epoch), for the hold-off.
        holdoff_s: after a clear, no new raise until this much reading time has passed
            (the exceedance streak keeps counting, so a real fault raises right after).
        clear_hold_s: an active alert clears only once its readings have stayed below the
            clear threshold this long (needs now_s).
    """
    if state.active == 0:
        state.clear_streak, state.below_since_s = 0, None
        if level <= 0:
            state.streak, state.streak_level = 0, 0
            return _QUIET
        state.streak_level = level if state.streak == 0 else min(state.streak_level, level)
        state.streak += 1
        held = (
            now_s is not None
            and state.cleared_at_s is not None
            and 0.0 <= now_s - state.cleared_at_s < holdoff_s  # a clock set back: no hold
        )
        if state.streak >= debounce and not held:
            state.active, state.raised_at = state.streak_level, now_iso
            state.streak, state.streak_level, state.critical_at = 0, 0, None
            return Step("raised", state.active)
        return Step(None, state.active)

    # An alert is active: look for an escalation and for a clear, independently.
    if level > state.active:
        state.streak_level = level if state.streak == 0 else min(state.streak_level, level)
        state.streak += 1
    else:
        state.streak, state.streak_level = 0, 0
    if below_clear:
        state.clear_streak += 1
        if state.below_since_s is None or (now_s is not None and now_s < state.below_since_s):
            state.below_since_s = now_s  # (a clock set back restarts the hold)
    else:
        if state.clear_streak >= debounce and level > 0:
            state.flaps += 1  # it would have cleared on level alone: one episode goes on
        state.clear_streak, state.below_since_s = 0, None
    held_long = (
        now_s is None or state.below_since_s is None or now_s - state.below_since_s >= clear_hold_s
    )

    if state.streak >= debounce:
        state.active = state.streak_level
        state.revise_streak = 0
        state.streak, state.streak_level = 0, 0
        return Step("escalated", state.active)
    if state.clear_streak >= debounce and held_long:
        cleared_level = state.active
        state.active, state.clear_streak, state.raised_at = 0, 0, None
        state.below_since_s = None
        state.due_s = state.due_hours = state.due_upper_hours = None
        state.escalated_at = state.due_level = state.critical_at = None
        state.revise_streak = 0
        state.cleared_at_s = now_s
        state.streak, state.streak_level = 0, 0
        return Step("cleared", cleared_level)
    return Step(None, state.active)


def revise(state: LifecycleState, *, soon: bool, grown: bool, now_s: float, debounce: int) -> bool:
    """Take back a critical sent on a time to failure that did not come true (mutates state).

    True when the alert is at level 2 with a predicted failure time (due_s: the estimate's
    upper bound, the point being about the remaining L10, early by design), that time has
    passed (the caller has seen no failure: its metric is under the threshold, or the
    estimate would be 0 h and `soon`), the failure metric has not grown toward its threshold
    since (`grown` False) and the estimate has been out of the planning horizon (`soon`
    False: longer, or no estimate at all), both for `debounce` consecutive readings: the
    alert goes back to level 1, the same episode (a step then flat, a load change: the trend
    said minutes, the machine ran on). Not before the predicted time (a late warning costs a
    failure), nor while the metric climbs (the failure is late, not called off). A later
    estimate under the horizon escalates again, as any would.
    """
    if state.active < 2 or state.due_s is None or soon or grown or now_s < state.due_s:
        state.revise_streak = 0
        return False
    state.revise_streak += 1
    if state.revise_streak < debounce:
        return False
    state.active, state.revise_streak = 1, 0
    state.streak, state.streak_level = 0, 0
    state.due_s = state.due_hours = state.due_upper_hours = None
    state.escalated_at = state.due_level = None
    return True
