"""The systemd watchdog, fed only while the agent can do its job.

A ping from a timer proves only that the event loop turns. The agent is hung just as surely
when the store writer thread is stuck (a dead SD card, a hung fsync: no alert can be
stored) or when the loop falls far behind (no reading is analysed on time). The watchdog
checks both at every tick and withholds the ping while either is past its bound, so
systemd restarts the agent after WatchdogSec.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from agent.fds import fd_usage
from agent.sdnotify import SystemdNotifier

log = logging.getLogger(__name__)

FD_WARN_FRACTION = 0.9


@dataclass(frozen=True, slots=True)
class WatchdogLimits:
    """Bounds past which the agent counts as hung.

    Attributes:
        max_loop_lag_s: the event loop ran this late on one tick.
        max_writer_busy_s: the store writer spent this long on one batch (SQLite's busy
            timeout is 5 s; a group commit takes milliseconds to a few seconds on slow flash).
        tick_s: how often the checks run (and the ping is sent, when due).
    """

    max_loop_lag_s: float = 10.0
    max_writer_busy_s: float = 30.0
    tick_s: float = 1.0


class Watchdog:
    """Checks liveness every tick; pings systemd only when the agent is live.

    Args:
        notifier: the sd_notify channel (pings only when systemd asked for a watchdog).
        writer_busy: seconds the store writer has been on its current batch.
        limits: the bounds.

    Attributes:
        loop_lag_s: how late the last tick ran.
        writer_busy_s: the writer's busy time at the last tick.
        fds: (open, limit) at the last tick.
        withheld: why pings are withheld now, or None.
    """

    def __init__(
        self,
        notifier: SystemdNotifier,
        *,
        writer_busy: Callable[[], float],
        limits: WatchdogLimits = WatchdogLimits(),
    ) -> None:
        self.notifier = notifier
        self._writer_busy = writer_busy
        self.limits = limits
        self.loop_lag_s = 0.0
        self.writer_busy_s = 0.0
        self.fds: tuple[int, int] = fd_usage()
        self.withheld: str | None = None
        self._fd_warned = False

    def problem(self) -> str | None:
        """Why the agent counts as hung now, or None."""
        if self.writer_busy_s > self.limits.max_writer_busy_s:
            return (
                f"the store writer has been on one batch for {self.writer_busy_s:.0f} s "
                f"(bound {self.limits.max_writer_busy_s:.0f} s)"
            )
        if self.loop_lag_s > self.limits.max_loop_lag_s:
            return (
                f"the event loop ran {self.loop_lag_s:.1f} s late "
                f"(bound {self.limits.max_loop_lag_s:.0f} s)"
            )
        return None

    async def run(self) -> None:
        """Tick until cancelled."""
        loop = asyncio.get_running_loop()
        tick = self.limits.tick_s
        if self.notifier.watchdog_s is not None:
            tick = min(tick, self.notifier.watchdog_s / 4)  # several chances per period
        while True:
            start = loop.time()
            await asyncio.sleep(tick)
            self.loop_lag_s = max(0.0, loop.time() - start - tick)
            self.writer_busy_s = self._writer_busy()
            self._check_fds()
            problem = self.problem()
            if problem is None:
                if self.notifier.watchdog_s is not None:
                    self.notifier.notify("WATCHDOG=1")
                if self.withheld is not None:
                    log.warning("watchdog: the agent is live again (was: %s)", self.withheld)
                    self.withheld = None
            elif self.withheld is None:
                self.withheld = problem
                log.error(
                    "watchdog: %s; the agent counts as hung and stops pinging systemd, "
                    "which restarts it after WatchdogSec",
                    problem,
                )

    def _check_fds(self) -> None:
        self.fds = used, limit = fd_usage()
        if used >= FD_WARN_FRACTION * limit and not self._fd_warned:
            self._fd_warned = True
            log.warning(
                "file descriptors nearly exhausted: %d open of limit %d; new sensor and HTTP "
                "connections will fail with EMFILE: raise LimitNOFILE= in the service unit",
                used,
                limit,
            )
        elif used < 0.8 * limit:
            self._fd_warned = False
