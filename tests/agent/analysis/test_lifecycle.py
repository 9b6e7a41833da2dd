"""Each alert state machine transition, including a restart (persist + restore) in between."""

from __future__ import annotations

import json

from agent.analysis.lifecycle import LifecycleState, Step, step

T = "2026-11-23T10:00:00.000Z"


def feed(
    state: LifecycleState, levels: list[int], below: list[bool] | None = None, debounce: int = 3
) -> list[Step]:
    below = below or [False] * len(levels)
    return [
        step(state, lv, below_clear=b, debounce=debounce, now_iso=T)
        for lv, b in zip(levels, below, strict=True)
    ]


def transitions(steps: list[Step]) -> list[tuple[str, int]]:
    return [(s.transition, s.level) for s in steps if s.transition]


def test_raise_needs_n_consecutive_exceedances() -> None:
    st = LifecycleState()
    assert transitions(feed(st, [1, 1, 0, 1, 1])) == []  # streak broken by a 0
    assert transitions(feed(st, [1])) == [("raised", 1)]
    assert st.active == 1 and st.raised_at == T


def test_raise_at_the_lowest_level_of_the_streak_then_escalate() -> None:
    st = LifecycleState()
    assert transitions(feed(st, [1, 2, 2])) == [("raised", 1)]
    assert transitions(feed(st, [2, 2])) == []
    assert transitions(feed(st, [2])) == [("escalated", 2)]
    assert st.active == 2


def test_no_resend_while_unchanged() -> None:
    st = LifecycleState()
    feed(st, [2, 2, 2])
    assert transitions(feed(st, [2] * 50 + [1] * 50)) == []  # falling back to C is no news


def test_clear_needs_n_consecutive_readings_below_hysteresis() -> None:
    st = LifecycleState()
    feed(st, [1, 1, 1])
    # Level 0 but not below the clear threshold (inside the hysteresis band): stays raised.
    assert transitions(feed(st, [0, 0, 0, 0], below=[False] * 4)) == []
    assert transitions(feed(st, [0, 0, 1, 0], below=[True, True, False, True])) == []
    assert transitions(feed(st, [0, 0], below=[True, True])) == [("cleared", 1)]
    assert st.active == 0 and st.raised_at is None
    assert transitions(feed(st, [1, 1, 1])) == [("raised", 1)]  # can raise again


def test_restart_between_transitions_neither_repeats_nor_forgets() -> None:
    st = LifecycleState()
    feed(st, [1, 2, 2])  # raised at 1, escalation streak not started
    feed(st, [2, 2])  # two of three towards escalation
    saved = json.dumps(st.to_dict())
    restored = LifecycleState.from_dict(json.loads(saved))
    assert restored == st
    # After the restart, the same machine state yields no second "raised"...
    assert transitions(feed(restored, [2])) == [("escalated", 2)]
    # ...and a fresh state (a forgetful agent) would have raised again: the test can fail.
    assert transitions(feed(LifecycleState(), [2, 2, 2])) == [("raised", 2)]


def test_debounce_one_reacts_immediately() -> None:
    st = LifecycleState()
    assert transitions(feed(st, [2], debounce=1)) == [("raised", 2)]
    assert transitions(feed(st, [0], below=[True], debounce=1)) == [("cleared", 2)]


def test_a_clock_set_back_does_not_hold_new_alerts() -> None:
    st = LifecycleState()
    future = 1_900_000_000.0
    for lv, below in ((1, False), (1, False), (1, False), (0, True), (0, True), (0, True)):
        step(st, lv, below_clear=below, debounce=3, now_iso=T, now_s=future, holdoff_s=600)
    assert st.active == 0 and st.cleared_at_s == future
    now = future - 365 * 86400  # the clock is corrected, a year back
    steps = [step(st, 2, below_clear=False, debounce=3, now_iso=T, now_s=now + i,
                  holdoff_s=600) for i in range(3)]  # fmt: skip
    assert [s.transition for s in steps] == [None, None, "raised"]


def test_a_flapping_level_is_one_episode_and_each_return_a_flap() -> None:
    """Five dips below the clear level within an hour, each too short for the 30 min clear
    hold: one raise, no clear, five flaps; then a long quiet spell clears it once."""
    st = LifecycleState()
    out, now = [], 0.0

    def go(level: int, below: bool, n: int) -> None:
        nonlocal now
        for _ in range(n):
            out.append(step(st, level, below_clear=below, debounce=3, now_iso=T, now_s=now,
                            holdoff_s=600, clear_hold_s=1800))  # fmt: skip
            now += 60.0

    for _ in range(5):  # 12 minutes a cycle: 6 above, 6 below
        go(1, False, 6)
        go(0, True, 6)
    assert transitions(out) == [("raised", 1)]
    assert st.flaps == 4  # the fifth dip has not returned yet
    go(1, False, 1)
    assert st.flaps == 5
    go(0, True, 29)
    assert transitions(out) == [("raised", 1)]  # 29 min below: not yet
    go(0, True, 2)
    assert transitions(out) == [("raised", 1), ("cleared", 1)]
    # Without a time hold the same dips clear and re-raise (held off 10 min by resend).
    plain, now = LifecycleState(), 0.0
    steps = []
    for _ in range(5):
        for lv, below in [(1, False)] * 6 + [(0, True)] * 6:
            steps.append(step(plain, lv, below_clear=below, debounce=3, now_iso=T, now_s=now,
                              holdoff_s=0))  # fmt: skip
            now += 60.0
    assert len(transitions(steps)) == 10 and plain.flaps == 0


def test_the_clear_hold_and_flap_count_survive_a_restart() -> None:
    st = LifecycleState()
    for i, (lv, below) in enumerate([(1, False)] * 3 + [(0, True)] * 4 + [(1, False)]):
        step(st, lv, below_clear=below, debounce=3, now_iso=T, now_s=60.0 * i, clear_hold_s=1800)
    restored = LifecycleState.from_dict(json.loads(json.dumps(st.to_dict())))
    assert restored == st and restored.flaps == 1 and restored.active == 1
