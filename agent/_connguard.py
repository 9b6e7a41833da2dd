"""A cap on a server's concurrent connections that idle clients cannot use to lock others out.

Every connection holds a file descriptor, and the agent shares its descriptor limit with its
sensor connections: 1100 idle connections to an uncapped endpoint once exhausted it, and
every sensor then failed. Past the cap, the connection that has been silent longest is
closed to make room: first those that never sent a byte (an idle crowd), then the oldest.
A real client speaks within milliseconds of connecting, so a crowd cannot keep it out as
long as the server accepts fewer connections per turn of the loop than the cap (the
listen backlog). Slow and idle connections are also timed out by the HTTP server itself
(keep-alive timeout), so the crowd drains on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class GuardStats:
    """For /metrics: connections open now, accepted and evicted since start."""

    open: int = 0
    accepted_total: int = 0
    evicted_total: int = 0


class _Guarded(asyncio.Protocol):
    """Passes everything to the real protocol; tells the guard when it opens, speaks, ends."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self.transport: asyncio.BaseTransport | None = None
        self.last_heard = time.monotonic()
        self.spoke = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.last_heard = time.monotonic()
        self._guard.admit(self)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.last_heard = time.monotonic()
        self.spoke = True
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.release(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class ConnectionGuard:
    """Caps the connections a protocol factory serves at `limit`.

    Args:
        limit: connections open at once; the longest-silent one is closed past it.
        name: for the log line.
    """

    def __init__(self, limit: int, *, name: str) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._name = name
        self._open: set[_Guarded] = set()
        self._crowded = False  # one log line per crowded episode
        self.stats = GuardStats()

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for loop.create_server that goes through the cap."""
        return lambda: _Guarded(self, factory())

    def admit(self, conn: _Guarded) -> None:
        """Count `conn` in, closing the longest-silent connection past the cap."""
        self.stats.accepted_total += 1
        if len(self._open) >= self._limit:
            victim = min(self._open, key=lambda c: (c.spoke, c.last_heard))
            self._open.discard(victim)
            self.stats.evicted_total += 1
            if victim.transport is not None:
                victim.transport.abort()  # frees the descriptor now
            if not self._crowded:
                self._crowded = True
                log.warning(
                    "%s: %d connections open (the cap): closing silent ones to serve new "
                    "requests (counted in edge_http_connections_evicted)",
                    self._name,
                    self._limit,
                )
        self._open.add(conn)
        self.stats.open = len(self._open)

    def release(self, conn: _Guarded) -> None:
        self._open.discard(conn)
        self.stats.open = len(self._open)
        if self._crowded and len(self._open) < self._limit // 2:
            self._crowded = False
            log.info("%s: connection crowd gone", self._name)
