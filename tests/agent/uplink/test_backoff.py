"""Retry timing: full jitter stays in bounds, Retry-After is honoured and capped."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from agent.uplink import full_jitter, parse_retry_after, retry_delay


def test_full_jitter_bounds_grow_and_cap() -> None:
    rng = random.Random(7)
    for failures, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (10, 30.0), (10_000, 30.0)):
        delays = [full_jitter(failures, base_s=0.5, cap_s=30.0, rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread across the whole range


def test_parse_retry_after_seconds_date_and_garbage() -> None:
    now = datetime(2026, 11, 21, 8, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(date, now=now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None and parse_retry_after("1e9") is None
    assert parse_retry_after("Wed, 21 Oct 99999999999999999999 07:28:00 GMT") is None
    assert parse_retry_after("9" * 400) == float("inf")  # then capped like any other
    assert parse_retry_after(None) is None


def test_retry_delay_honours_retry_after_within_cap() -> None:
    rng = random.Random(1)
    assert retry_delay(1, 5.0, base_s=0.5, cap_s=60.0, rng=rng) == 5.0
    assert retry_delay(1, 3600.0, base_s=0.5, cap_s=60.0, rng=rng) == 60.0
    assert retry_delay(1, float("inf"), base_s=0.5, cap_s=60.0, rng=rng) == 60.0
    # Retry-After: 0 (or a date in the past) again and again: the jittered backoff still
    # grows, so a backend answering it cannot make us hammer it.
    assert max(retry_delay(8, 0.0, base_s=0.5, cap_s=60.0, rng=rng) for _ in range(50)) > 30
    assert retry_delay(50, None, base_s=0.5, cap_s=2.0, rng=rng) <= 2.0
