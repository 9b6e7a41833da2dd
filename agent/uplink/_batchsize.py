"""How many items one send carries: halved on a timeout or a too-large refusal, grown back.

A batch that timed out is halved too (a link too slow to carry a full batch within
timeout_s, GPRS or a congested hop, would otherwise time out on every attempt and deliver
nothing ever again); like a too-large one, it doubles back with each success, but never
to within a quarter of a size that was too large, or that timed out right after a smaller
batch was delivered (the ceiling), else the size swings between one that fits and double
it and every other batch times out (a WARNING and a wasted timeout_s each). Timeouts with
nothing delivered before them (a backend that hangs, a link that black-holes packets)
say nothing about sizes and set no ceiling, so batches grow back to full size after such
an outage. The ceiling doubles every CEILING_DOUBLING_S without a new one, so a link
that got faster (or a body limit that was raised) gets its full batches back.
"""

from __future__ import annotations

import time

CEILING_DOUBLING_S = 120.0  # a batch size that timed out (or was too large) may be tried again
CEILING_MARGIN = 0.75  # batches grow back to at most this share of that size


class BatchSize:
    """The batch size of one uplink, between 1 and batch_size.

    Attributes:
        limit: items per send now.
        fitted: items the last attempt delivered (0: it failed).
    """

    def __init__(self, batch_size: int) -> None:
        self._batch = batch_size
        self.limit = batch_size
        self._ceiling: int | None = None  # the last batch size that timed out or was too large
        self._ceiling_at = 0.0  # ... at this monotonic time
        self.fitted = 0

    def halve(self, size: int, *, ceiling: bool = True) -> None:
        """Send smaller batches (each success doubles them back, below the ceiling, which
        `size` becomes unless told otherwise)."""
        self.limit = max(1, size // 2)
        if ceiling:
            self._ceiling, self._ceiling_at = size, time.monotonic()

    def grow_cap(self) -> int:
        """The largest batch to grow back to: batch_size, or below a size that failed."""
        if self._ceiling is None:
            return self._batch
        age = time.monotonic() - self._ceiling_at
        ceiling = self._ceiling * 2.0 ** min(age / CEILING_DOUBLING_S, 32.0)
        if ceiling * CEILING_MARGIN >= self._batch:
            self._ceiling = None  # decayed away: the link has had time to get better
            return self._batch
        return max(1, int(ceiling * CEILING_MARGIN))

    def delivered(self, count: int) -> None:
        """A send delivered `count` items: the size doubles back, up to grow_cap()."""
        self.fitted = count
        if self.limit < (cap := self.grow_cap()):
            self.limit = min(cap, self.limit * 2)
