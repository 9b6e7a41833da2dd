"""Memory sampling for the benchmarks: RSS from /proc, tracemalloc, a least-squares slope."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

MAX_SAMPLES = 10_000  # bound on the sample list


def rss_bytes() -> int:
    """This process's resident set size (VmRSS), bytes."""
    # A /proc read returns in microseconds: harmless on the event loop.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def slope_per_1000(points: list[tuple[int, int]]) -> float | None:
    """Least-squares slope of bytes over alerts, in bytes per 1000 alerts."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return round(1000.0 * sxy / sxx, 1)


def mib(n: int | float | None) -> float | None:
    return None if n is None else round(n / 2**20, 2)


class Sampler:
    """RSS and traced memory against the number of alerts appended so far."""

    def __init__(self) -> None:
        self.samples: list[dict[str, int]] = []

    def take(self, alerts: int) -> dict[str, int]:
        cur, peak = tracemalloc.get_traced_memory() if tracemalloc.is_tracing() else (0, 0)
        s = {"alerts": alerts, "rss": rss_bytes(), "traced": cur, "traced_peak": peak}
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(s)
        return s

    def at(self, alerts: int) -> dict[str, int]:
        """The first sample taken at or after `alerts` appended."""
        for s in self.samples:
            if s["alerts"] >= alerts:
                return s
        return self.samples[-1]
