"""The disk budget's eviction log: after the commit, the first at once, then a summary a
minute, the rest at close; counts that add up."""

from __future__ import annotations

import logging

import pytest

from agent.store._evictlog import MAX_RANGES, EvictionLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "evicted" in r.message]


def evict(ev: EvictionLog, seqs: range, tier: int = 3) -> None:
    ev.begin()
    for s in seqs:
        ev.add("UNDELIVERED", s, f"gw-01-{s:012d}", tier, f"2026-11-21T08:{s % 60:02d}:00.000Z")


def test_first_at_once_then_one_summary_a_minute_then_the_rest_at_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    clock = Clock()
    ev = EvictionLog(lambda: 1 << 20, clock=clock)
    evict(ev, range(1, 2))
    ev.committed()
    assert [getattr(r, "evicted", None) for r in lines(caplog)] == [1]  # said at once
    for minute_part in range(1, 60):  # a minute of evictions: one per commit, no line
        clock.now += 1.0
        evict(ev, range(1 + minute_part, 2 + minute_part), tier=2 if minute_part == 5 else 3)
        ev.committed()
    assert len(lines(caplog)) == 1
    evict(ev, range(500, 503))  # rolled back: begin() of the next transaction drops it
    evict(ev, range(60, 61))
    clock.now += 1.0
    ev.committed()  # a minute after the first line: the summary
    [_, summary] = lines(caplog)
    assert getattr(summary, "evicted", None) == 60
    assert "tier 2: 1, tier 3: 59" in summary.message
    assert "gw-01-000000000002 .. gw-01-000000000060" in summary.message
    assert "seq 2-60" in summary.message and "500" not in summary.message
    evict(ev, range(70, 72))
    ev.committed()  # within the minute: held
    ev.close()
    assert [getattr(r, "evicted", None) for r in lines(caplog)] == [1, 60, 2]
    assert ev.logged_alerts == 63
    ev.close()  # nothing left: no line
    assert len(lines(caplog)) == 3


def test_a_summary_is_bounded_however_scattered_the_seqs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    ev = EvictionLog(lambda: 1 << 20, clock=Clock())
    ev.begin()
    ev.committed()  # nothing evicted: nothing said
    assert not lines(caplog)
    evict(ev, range(0, 2000, 2))  # 1000 alerts, none adjacent
    ev.add_summaries(7)
    ev.committed()
    [line] = lines(caplog)
    assert getattr(line, "evicted", None) == 1000
    assert f"and {1000 - MAX_RANGES} more" in line.message
    assert "7 feature summaries" in line.message
    assert len(line.message) < 1200
