"""How late the event loop runs a timer: the delay every poll and reading suffers.

/metrics shows the longest lag since the last scrape (`loop_lag_max_s`); the watchdog
(agent.watchdog) keeps its own, coarser measure for deciding that the agent is hung.
"""

from __future__ import annotations

import asyncio
import time

LAG_TICK_S = 0.1


class LoopLag:
    """Measures the event loop's lag every LAG_TICK_S and keeps the longest."""

    def __init__(self) -> None:
        self._max_s = 0.0

    async def run(self) -> None:
        """Measure until cancelled."""
        while True:
            asked = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            lag = time.monotonic() - asked - LAG_TICK_S
            self._max_s = max(self._max_s, lag)

    def take(self) -> float:
        """The longest lag since the last call."""
        lag, self._max_s = self._max_s, 0.0
        return lag
