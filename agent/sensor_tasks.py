"""The running sensors: one poller task per sensor id, started and stopped by id.

Pollers run beside the agent's TaskGroup, not in it: stopping waits for them a bounded time
and can abandon one, which a group cannot. Start-up, a reload and shutdown all go through
here, so a sensor is stopped the same certain way whichever asks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable

from drivers.modbus import Bus, ModbusPoller

log = logging.getLogger(__name__)

OWN_BUS = "tcp"  # the kind of a bus that serves one directly connected sensor


class RunningSensors:
    """Poller tasks by sensor id, and the shared buses (serial lines, gateways) by bus id.

    Attributes:
        pollers: the running pollers, by sensor id (configuration order at start).
        shared: the shared buses, by bus id; a sensor's own bus is its poller's `bus`.
    """

    def __init__(self) -> None:
        self.pollers: dict[str, ModbusPoller] = {}
        self.shared: dict[str, Bus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def buses(self) -> list[Bus]:
        """Every bus in use: the shared ones, then each directly connected sensor's."""
        own = [p.bus for p in self.pollers.values() if p.bus.kind == OWN_BUS]
        return [*self.shared.values(), *own]

    def add_buses(self, buses: Iterable[Bus]) -> None:
        """Keep the shared ones among freshly built buses (own buses live with a poller)."""
        for b in buses:
            if b.kind != OWN_BUS:
                self.shared[b.name] = b

    def start(self, pollers: Iterable[ModbusPoller], *, ramp_s: float | None = None) -> None:
        """Start each poller, its first poll at a random moment within ramp_s (thousands of
        connects and first analyses in the same instant would time each other out); None:
        within its own poll interval (at most 1 s), as a reload starts a few."""
        for p in pollers:
            delay = None if ramp_s is None else random.uniform(0.0, ramp_s)
            task = asyncio.create_task(p.run(start_delay_s=delay), name=f"poll[{p.sensor_id}]")
            task.add_done_callback(_poller_ended)
            self.pollers[p.sensor_id] = p
            self._tasks[p.sensor_id] = task

    async def stop(self, ids: Iterable[str] | None = None, *, timeout_s: float) -> None:
        """Stop these sensors (None: all), certainly and within timeout_s.

        They leave `pollers` at once and deliver nothing from here on (the stop flag is
        checked after every await, so even a cancellation a library swallowed ends them);
        a poller still running after timeout_s is abandoned, and said so. Each stopped
        sensor's own bus is closed; shared buses stay (see `retire_buses`).
        """
        chosen = list(self.pollers) if ids is None else [i for i in ids if i in self.pollers]
        stopped = [(self.pollers.pop(i), self._tasks.pop(i)) for i in chosen]
        for p, task in stopped:
            p.stop()
            task.cancel()
        if stopped:
            _, stuck = await asyncio.wait([t for _, t in stopped], timeout=timeout_s)
            if stuck:
                names = sorted(t.get_name() for t in stuck)
                log.error(
                    "%d pollers did not stop within %.0f s; abandoned: %s",
                    len(stuck),
                    timeout_s,
                    ", ".join(names[:10]),
                )
        for p, _ in stopped:
            if p.bus.kind == OWN_BUS:
                p.bus.close()
            else:
                p.bus.devices = max(0, p.bus.devices - 1)

    def retire_buses(self, ids: Iterable[str]) -> None:
        """Close shared buses no sensor runs on any more (stop their sensors first)."""
        for bus_id in ids:
            bus = self.shared.pop(bus_id, None)
            if bus is not None:
                bus.close()

    def cancel_all(self) -> None:
        """Last resort on the way out: cancel what runs and close every bus."""
        for task in self._tasks.values():
            task.cancel()
        for bus in self.buses():
            bus.close()


def _poller_ended(task: asyncio.Task[None]) -> None:
    """A poller only ends when stopped; say so loudly if one ended any other way."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s ended unexpectedly: %r", task.get_name(), task.exception())
