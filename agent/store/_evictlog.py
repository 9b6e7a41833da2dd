"""What the disk budget evicted, logged after the commit and in few lines.

A week's outage on a small budget evicts an alert at nearly every append: one ERROR line
each (thousands) buried the journal and could itself fill a small disk. Evictions are
collected during the transaction and counted only once it commits (a rolled-back
transaction evicted nothing), so the counts logged add up to the evicted_total counters.
The first eviction of a burst is logged at once; then at most one summary per `every_s`
(count, per tier, first/last alert_id, detected_at range, seq ranges, capped); what is
left when the outbox closes is logged then.

Thread side: begin/add/committed run on the store's writer thread; close after it stopped.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("agent.store._budget")  # where operators look for the budget

SUMMARY_EVERY_S = 60.0
MAX_RANGES = 20  # seq ranges named per line; more are counted


@dataclass(slots=True)
class _Window:
    """Evictions since the last line (bounded: counters and at most MAX_RANGES ranges)."""

    alerts: int = 0
    summaries: int = 0
    by_label: Counter[str] = field(default_factory=Counter)
    by_tier: Counter[int] = field(default_factory=Counter)
    first_id: str = ""
    last_id: str = ""
    earliest: str = ""
    latest: str = ""
    ranges: list[list[int]] = field(default_factory=list)
    more_ranges: int = 0

    def add(self, label: str, seq: int, alert_id: str, tier: int, detected_at: str) -> None:
        self.alerts += 1
        self.by_label[label] += 1
        self.by_tier[tier] += 1
        self.first_id = self.first_id or alert_id
        self.last_id = alert_id
        self.earliest = min(self.earliest or detected_at, detected_at)
        self.latest = max(self.latest, detected_at)
        if self.ranges and self.ranges[-1][1] + 1 == seq:
            self.ranges[-1][1] = seq
        elif len(self.ranges) < MAX_RANGES:
            self.ranges.append([seq, seq])
        else:
            self.more_ranges += 1

    def line(self, max_bytes: int) -> tuple[str, dict[str, object]]:
        kinds = ", ".join(f"{n} {label}" for label, n in sorted(self.by_label.items()))
        tiers = ", ".join(f"tier {t}: {n}" for t, n in sorted(self.by_tier.items()))
        seqs = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in self.ranges)
        if self.more_ranges:
            seqs += f" and {self.more_ranges} more"
        text = f"disk budget ({max_bytes} bytes): evicted {self.alerts} alert(s)"
        if self.alerts:
            text += (
                f" ({kinds}; {tiers}), {self.first_id} .. {self.last_id}, detected "
                f"{self.earliest} .. {self.latest}, seq {seqs}"
            )
        if self.summaries:
            text += f"; and {self.summaries} feature summaries not yet delivered"
        return text, {"evicted": self.alerts, "summaries_evicted": self.summaries}


class EvictionLog:
    """Collects one transaction's evictions; logs what committed, rate-limited."""

    def __init__(
        self,
        max_bytes: Callable[[], int],
        every_s: float = SUMMARY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_bytes = max_bytes
        self._every_s = every_s
        self._clock = clock
        self._txn: list[tuple[str, int, str, int, str]] = []
        self._txn_summaries = 0
        self._window = _Window()
        self._last_line: float | None = None  # monotonic time of the last line
        self.logged_alerts = 0  # alerts named in lines so far (equals evicted_total's rise)

    def begin(self) -> None:
        """A transaction starts: what an earlier one collected was rolled back."""
        self._txn.clear()
        self._txn_summaries = 0

    def add(self, label: str, seq: int, alert_id: str, tier: int, detected_at: str) -> None:
        self._txn.append((label, seq, alert_id, tier, detected_at))

    def add_summaries(self, n: int) -> None:
        self._txn_summaries += n

    def committed(self) -> None:
        """The transaction is on disk: its evictions count; a line if one is due."""
        for item in self._txn:
            self._window.add(*item)
        self._window.summaries += self._txn_summaries
        self.begin()
        if not (self._window.alerts or self._window.summaries):
            return
        now = self._clock()
        if self._last_line is None or now - self._last_line >= self._every_s:
            self._flush(now)

    def close(self) -> None:
        """The outbox closes: the rest is logged now."""
        if self._window.alerts or self._window.summaries:
            self._flush(self._clock())

    def _flush(self, now: float) -> None:
        text, extra = self._window.line(self._max_bytes())
        log.error(text, extra=extra)
        self.logged_alerts += self._window.alerts
        self._window = _Window()
        self._last_line = now
