"""A bus: one scheduled resource that several devices share (serial line, gateway).

A serial line, a TCP-to-RTU gateway or a device's own TCP connection is one ``Bus`` with
one or more links. Devices ask the bus for a turn; turns are granted first come, first
served, and a device has at most one request waiting (its poller never overlaps polls),
so the queue is round robin over the devices that are due: fair by construction. The
bus measures how busy its links are (line utilisation), which /metrics reports.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.modbus._link import Link, LinkDown
from drivers.modbus._peers import Peers

UTILISATION_WINDOW_S = 10.0


@dataclass(frozen=True, slots=True)
class BusStatus:
    """A snapshot of a bus for health endpoints.

    Attributes:
        name: the bus id (a device's own connection is named after its sensor).
        kind: ``tcp`` (own connection), ``gateway`` or ``rtu``.
        address: ``host:port`` or the serial port.
        devices: devices scheduled on it.
        utilisation: share of the last ~10 s its links were busy (0..1 per link).
        planned_utilisation: the poll plan's expected share, when it can be computed.
        queue_depth: requests waiting for a turn now.
        wait_s_max: the longest wait for a turn since the last snapshot.
        late_answers: answers dropped because their request had timed out.
        duplicate_answers: answers a device sent twice; the repeats were dropped (RTU).
        echoes: our requests read back by an echoing RS-485 adapter, dropped (RTU).
        noisy_reads: failed reads after which the line never fell quiet (RTU noise).
        noisy: the line is noisy now: the last failed read found it never quiet (RTU).
        sync_reads: reads sent before a block's read because its device still owed a late
            answer to an earlier read of it, so that it cannot pass for this one's (RTU).
    """

    name: str
    kind: str
    address: str
    devices: int
    utilisation: float
    planned_utilisation: float | None
    queue_depth: int
    wait_s_max: float
    late_answers: int
    duplicate_answers: int = 0
    echoes: int = 0
    noisy_reads: int = 0
    noisy: bool = False
    sync_reads: int = 0


class Bus:
    """Schedules reads on its links, one request per link at a time.

    Args:
        name: the bus id, for status and logs.
        kind: ``tcp``, ``gateway`` or ``rtu``.
        links: the connections (one for a serial line; ``max_connections`` for a gateway).
        planned_utilisation: the poll plan's expected share of the line (from the config).
    """

    def __init__(
        self,
        name: str,
        kind: str,
        links: Sequence[Link],
        *,
        planned_utilisation: float | None = None,
    ) -> None:
        if not links:
            raise ValueError("a bus needs at least one link")
        self.name, self.kind = name, kind
        self.links = tuple(links)
        self.address = self.links[0].address
        self.planned_utilisation = planned_utilisation
        self.devices = 0
        # The devices behind the same endpoint, whichever bus they use (None: each
        # device is judged alone); see drivers.modbus._peers.
        self.peers: Peers | None = None
        # A list and a lazily made deque: an empty deque is 0.6 kB, and most buses (a
        # device's own connection) never queue anyone.
        self._free: list[Link] = list(self.links)
        self._waiters: deque[asyncio.Future[Link]] | None = None
        self._busy_s = 0.0  # link-seconds busy in the current window
        self._window_start = time.monotonic()
        self._last_utilisation = 0.0
        self._wait_max = 0.0

    async def _acquire(self) -> Link:
        """Wait for a turn (the caller has seen no free link, or others waiting)."""
        fut: asyncio.Future[Link] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = deque()
        waiters = self._waiters
        waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(fut.result())  # granted as we were cancelled: pass it on
            elif fut in waiters:  # a release may already have passed over it
                waiters.remove(fut)
            raise

    def _release(self, link: Link) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(link)
                return
        self._free.append(link)

    def _account(self, busy_s: float) -> None:
        now = time.monotonic()
        self._busy_s += busy_s
        span = now - self._window_start
        if span >= UTILISATION_WINDOW_S:
            self._last_utilisation = self._busy_s / (span * len(self.links))
            self._busy_s, self._window_start = 0.0, now

    async def hold_off(self, device_id: int) -> None:
        """Return once ``device_id`` may be asked again. It answered moments ago, or failed
        and may still answer (an RTU line): others use the line while that answer dies
        out, so this is no wait for the line, nor line time."""
        if len(self.links) == 1 and self.links[0].hold_off_s(device_id) > 0:
            await self.links[0].wait_hold_off(device_id)

    async def read(
        self, device_id: int, function_code: int, address: int, count: int, timeout_s: float
    ) -> list[int]:
        """One read on the next free link (see Link.read for what it raises)."""
        await self.hold_off(device_id)
        asked = time.monotonic()
        # The free link is taken without a coroutine of its own: this runs on every poll.
        link = self._free.pop(0) if self._free and not self._waiters else await self._acquire()
        started = time.monotonic()
        self._wait_max = max(self._wait_max, started - asked)
        try:
            if not link.connected:
                await link.connect()
            return await link.read(device_id, function_code, address, count, timeout_s)
        finally:
            self._account(time.monotonic() - started)
            self._release(link)

    @property
    def heard_at(self) -> float:
        """Monotonic time its host last showed life on any link (-inf: never, or RTU)."""
        return max((getattr(link, "heard_at", -math.inf) for link in self.links), default=-math.inf)

    @property
    def refused_at(self) -> float:
        """Monotonic time a connect to its host was last refused (-inf: never, or RTU)."""
        return max(
            (getattr(link, "refused_at", -math.inf) for link in self.links), default=-math.inf
        )

    def status(self) -> BusStatus:
        """The current snapshot; resets the longest-wait gauge."""
        span = time.monotonic() - self._window_start
        utilisation = self._last_utilisation
        if span >= 1.0 and self._last_utilisation == 0.0:
            utilisation = self._busy_s / (span * len(self.links))  # first window
        wait, self._wait_max = self._wait_max, 0.0
        return BusStatus(
            self.name,
            self.kind,
            self.address,
            self.devices,
            round(utilisation, 4),
            self.planned_utilisation,
            len(self._waiters or ()),
            round(wait, 4),
            sum(link.late_answers for link in self.links),
            sum(link.duplicate_answers for link in self.links),
            sum(link.echoes for link in self.links),
            sum(link.noisy_reads for link in self.links),
            any(link.noisy for link in self.links),
            sum(link.sync_reads for link in self.links),
        )

    def close(self) -> None:
        """Close every link."""
        for link in self.links:
            link.close()


__all__ = ["Bus", "BusStatus", "LinkDown"]
