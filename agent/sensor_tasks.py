"""The running sensors: one poller task per sensor id, started and stopped by id.

Pollers run beside the agent's TaskGroup, not in it: stopping waits for them a bounded time
and can abandon one, which a group cannot. Start-up, a reload and shutdown all go through
here, so a sensor is stopped the same certain way whichever asks. Once shutdown has
begun (`close`), nothing starts: a reload still under way cannot leave a poller behind.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable

from drivers.modbus import Bus, DeviceTimes, ModbusPoller, Peers

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
        # The devices behind each endpoint (host:port, gateway, serial line), by endpoint:
        # shared by the pollers a reload starts later (drivers.modbus._peers).
        self.peers: dict[str, Peers] = {}
        # What the devices on each serial port may still send (late answers), by port:
        # a serial line a reload rebuilds keeps it (drivers.modbus._rtu_devices).
        self.lines: dict[str, DeviceTimes] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Pollers being stopped (by a reload) until their task has ended: a shutdown that
        # overlaps that stop waits for them too.
        self._leaving: set[asyncio.Task[None]] = set()
        self.closed = False

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
        within its own poll interval (at most 1 s), as a reload starts a few. Once closed,
        none is started."""
        if self.closed:
            pollers = list(pollers)
            if pollers:
                log.info("%d pollers not started: the agent is stopping", len(pollers))
            return
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
            if not task.done():
                self._leaving.add(task)
                task.add_done_callback(self._leaving.discard)
        waited = {t for _, t in stopped} | (set(self._leaving) if ids is None else set())
        if waited:
            _, stuck = await asyncio.wait(waited, timeout=timeout_s)
            if stuck:
                names = sorted(t.get_name() for t in stuck)
                log.error(
                    "%d pollers did not stop within %.0f s; abandoned: %s",
                    len(stuck),
                    timeout_s,
                    ", ".join(names[:10]),
                )
        for p, _ in stopped:
            if p.bus.peers is not None and ids is not None:
                # A reload removed it (at shutdown the endpoints stay as they were: an
                # endpoint's silence is not over because the agent stops).
                for peers in p.bus.peers.groups:
                    peers.leave(p.sensor_id, p.ledger)
            if p.bus.kind == OWN_BUS:
                p.bus.close()
            else:
                p.bus.devices = max(0, p.bus.devices - 1)

    async def close(self, *, timeout_s: float) -> None:
        """Shutdown: stop every sensor (and wait for those a reload is stopping) and start
        none from here on."""
        self.closed = True
        await self.stop(timeout_s=timeout_s)

    def retire_buses(self, ids: Iterable[str]) -> None:
        """Close shared buses no sensor runs on any more (stop their sensors first)."""
        for bus_id in ids:
            bus = self.shared.pop(bus_id, None)
            if bus is not None:
                bus.close()

    def cancel_all(self) -> None:
        """Last resort on the way out: cancel what runs and close every bus."""
        self.closed = True
        for task in [*self._tasks.values(), *self._leaving]:
            task.cancel()
        for bus in self.buses():
            bus.close()


def _poller_ended(task: asyncio.Task[None]) -> None:
    """A poller only ends when stopped; say so loudly if one ended any other way."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s ended unexpectedly: %r", task.get_name(), task.exception())
