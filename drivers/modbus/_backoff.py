"""The poller's circuit breaker: how long to wait after failures in a row."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Circuit-breaker delays: none below ``threshold`` failures in a row, then doubling
    from ``base_s`` up to ``max_s``, each drawn uniformly from [d/2, d] (equal jitter) so
    devices that failed together do not retry together. The first probes come soon (a
    device that blinked is read again within about ``base_s``); only a device that stays
    dead is probed as rarely as ``max_s``.
    """

    base_s: float
    max_s: float = 30.0
    threshold: int = 3

    def delay(self, failures: int, rng: random.Random, *, floor_s: float = 0.0) -> float:
        """Seconds to wait after ``failures`` consecutive failures.

        ``floor_s`` raises the doubling's current step (never above ``max_s``): a device
        whose failures are costly to others skips the quick first probes.
        """
        if failures < self.threshold:
            return 0.0
        exponent = min(failures - self.threshold, 30)  # bounded: 2**30 is plenty
        step = max(self.base_s * 2.0**exponent, floor_s)
        cap = max(min(self.max_s, step), 0.0)
        return rng.uniform(cap / 2.0, cap)
