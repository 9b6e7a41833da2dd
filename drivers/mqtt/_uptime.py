"""When a broker link was up: for /healthz, and for judging a silent sensor by the time
its link was connected (a BrokerLink's part)."""

from __future__ import annotations

import logging
import time
from collections import deque

from drivers.mqtt._settings import BrokerSettings

log = logging.getLogger("edge_agent.drivers.mqtt")

UPS_KEPT = 64  # connections remembered for connected_s_since (a few KiB per link)


class Uptime:
    """The link's connection times (the attributes are the link's own)."""

    settings: BrokerSettings
    connected: bool
    connects_total: int
    disconnects_total: int

    def _init_uptime(self) -> None:
        self.connected = False
        self.connects_total = 0
        self.disconnects_total = 0
        self._down_since: float | None = time.monotonic()
        self._up_since: float | None = None  # monotonic time of the current connection
        # When the first live (not retained) message came on it: the publishers (sensor
        # gateways) reconnect after a broker restart on their own schedule.
        self._heard_at: float | None = None
        # The last connections (monotonic start, end): how long the link was up during a
        # sensor's silence, however often it reconnected (bounded; see connected_s_since).
        self._ups: deque[tuple[float, float]] = deque(maxlen=UPS_KEPT)

    @property
    def down_for_s(self) -> float:
        """Seconds the link has been down (since start if it never connected), 0 when up."""
        if self.connected or self._down_since is None:
            return 0.0
        return time.monotonic() - self._down_since

    @property
    def up_for_s(self) -> float | None:
        """Seconds since the link last connected, None while it is down."""
        if not self.connected or self._up_since is None:
            return None
        return time.monotonic() - self._up_since

    def connected_s_since(self, since: float) -> float:
        """Seconds the link was connected from the monotonic time `since` to now, leaving
        out a connection that `since` fell in and that has ended since (a sensor silent
        when an outage began is judged from the reconnect on, as if it had just spoken).
        Before the oldest connection kept it counts as connected (a sensor silent through
        more reconnects than are kept is judged alone rather than held)."""
        now = time.monotonic()
        total = sum(end - start for start, end in self._ups if start >= since)
        if self.connected and self._up_since is not None:
            total += now - max(self._up_since, since)
        if len(self._ups) == self._ups.maxlen and self._ups[0][0] > since:
            total += self._ups[0][0] - since
        return total

    def unheard_s(self, since: float, bound_s: float) -> float:
        """Seconds of the current connection, from the monotonic time `since` on, before
        its first live message (to now while none has come), counting at most bound_s
        from the connection's start: a broker restarted is back before the sensors'
        publishers are, and their silence meanwhile is still the outage's. After bound_s
        with nothing at all, the sensors are judged alone (a publisher truly gone)."""
        if not self.connected or self._up_since is None:
            return 0.0
        now = time.monotonic()
        heard = self._heard_at if self._heard_at is not None else now
        return max(0.0, min(heard, self._up_since + bound_s) - max(self._up_since, since))

    def _heard(self) -> None:
        if self.connected and self._heard_at is None:
            self._heard_at = time.monotonic()

    def _mark_up(self) -> None:
        self.connected = True
        self.connects_total += 1
        down = time.monotonic() - (self._down_since or time.monotonic())
        self._down_since = None
        self._up_since = time.monotonic()
        self._heard_at = None
        log.info(
            "mqtt broker %s connected at %s (after %.1f s down)",
            self.settings.id,
            self.settings.address,
            down,
        )

    def _mark_down(self) -> None:
        if self.connected:
            self.disconnects_total += 1
            self._down_since = time.monotonic()
            if self._up_since is not None:
                self._ups.append((self._up_since, self._down_since))
        self.connected = False
        self._up_since = self._heard_at = None
