"""Retry timing, pure: full-jitter backoff and Retry-After parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def full_jitter(failures: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """A random delay in [0, min(cap, base x 2^(failures-1))] (AWS "full jitter").

    Many gateways coming back after one outage then spread their retries out instead of
    hitting the backend together.
    """
    exp = min(failures - 1, 62)  # 2**62 already exceeds any cap; avoids overflow
    ceiling = min(cap_s, base_s * (2.0 ** max(exp, 0)))
    return rng.uniform(0.0, ceiling)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date).

    Returns None when absent or unparseable (a negative number, garbage); never negative;
    0 for a date in the past. Any size is returned: the delivery loop waits at most its
    max_backoff_s (agent.uplink._delivery), so a far-future date cannot stall it.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is True too
        return float(value)  # 400 digits: inf, capped by the caller like any other
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        # OverflowError: a year beyond a C long ("... Oct 99999999999999999999 ..."); it
        # would escape the HTTP client and fail an answer that was a delivery.
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def retry_delay(
    failures: int, retry_after_s: float | None, *, base_s: float, cap_s: float, rng: random.Random
) -> float:
    """The wait before the next attempt: jitter, at least Retry-After, at most the cap."""
    delay = full_jitter(failures, base_s=base_s, cap_s=cap_s, rng=rng)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return min(delay, cap_s)
