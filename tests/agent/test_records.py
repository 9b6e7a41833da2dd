"""Timestamps in records: UTC, milliseconds, Z; alert ids stable and zero-padded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from agent.records import alert_id, format_ts, parse_ts


def test_format_ts_is_utc_with_millis_and_z() -> None:
    local = datetime(2026, 11, 21, 9, 15, 2, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert format_ts(local) == "2026-11-21T08:15:02.123Z"
    assert parse_ts("2026-11-21T08:15:02.123Z") == datetime(
        2026, 11, 21, 8, 15, 2, 123000, tzinfo=UTC
    )


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_ts(datetime(2026, 1, 1))


def test_alert_id() -> None:
    assert alert_id("gw-01", 42) == "gw-01-000000000042"
