"""The bounded queue between the sensors and the analysis, and the task that empties it.

Every poller and MQTT sensor hands its readings to `put` (no I/O, never blocks); the
analysis task takes them in order, feeds the monitor and holds what it returns for the
store writer. A full queue drops the reading, counted: an analysis that cannot keep up
shows as counted drops, not as memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from agent.analysis.monitor import Monitor, Update
from agent.config import Config
from drivers.reading import Reading

log = logging.getLogger(__name__)

# The queue holds this many seconds of every sensor's readings (at least READING_QUEUE_MIN):
# enough to ride out a burst (start-up, a big store commit) without dropping.
READING_QUEUE_S = 5.0
READING_QUEUE_MIN = 1000
ANALYSIS_SLICE_S = 0.005  # analysis yields the event loop at least this often...
ANALYSIS_SLICE_MAX_S = 0.05  # ...or this often while it is behind (well under any timeout)
# One sensor holds at most this share of the queue: an MQTT publisher in a tight loop
# (thousands of messages a second) would otherwise fill it, and every other sensor's
# readings would be the ones dropped. Its own excess is dropped and counted instead.
SENSOR_SHARE = 0.75


class Counters(Protocol):
    readings_total: int
    readings_dropped_total: int
    analysis_errors_total: int


def wanted_queue_size(config: Config) -> int:
    """The reading queue a configuration needs (READING_QUEUE_S of every reading)."""
    # An MQTT sensor's rate is its publisher's; one message per second per channel is
    # the usual case (a burst beyond the queue is counted, not lost silently).
    per_second = sum(
        len(s.channels) / (s.poll_interval_s if s.modbus is not None else 1.0)
        for s in config.sensors
    )
    return max(READING_QUEUE_MIN, int(per_second * READING_QUEUE_S))


class ReadingQueue:
    """Readings waiting for analysis, at most `size` of them.

    Args:
        size: readings held at most (beyond it they are dropped and counted).
        counters: where readings analysed, dropped and analysis errors are counted.
    """

    def __init__(self, size: int, counters: Counters) -> None:
        self.size = size
        self._counters = counters
        self._queue: asyncio.Queue[Reading] = asyncio.Queue(maxsize=size)
        self._accepting = True
        self._drop_logged = False
        self._failing: set[tuple[str, str]] = set()
        self._per_sensor_max = max(1, int(size * SENSOR_SHARE))
        self._held: Counter[str] = Counter()  # sensor id -> readings it has queued
        self._hogs_logged: set[str] = set()  # sensors said to be over their share

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def put(self, reading: Reading) -> None:
        """The sensors' sink: queue a reading, or drop it (counted) when the queue is full."""
        if not self._accepting:
            return  # stopping: a reading that raced the stop is not analysed
        sensor = reading.sensor_id
        if self._held[sensor] >= self._per_sensor_max:
            self._counters.readings_dropped_total += 1
            if sensor not in self._hogs_logged:  # once per episode and sensor
                self._hogs_logged.add(sensor)
                log.warning(
                    "sensor %s sends faster than the analysis takes it: it holds %d of the "
                    "%d places of the analysis queue; its further readings are dropped "
                    "(counted in edge_readings_dropped) so the other sensors' get through",
                    sensor,
                    self._held[sensor],
                    self.size,
                    extra={"sensor_id": sensor},
                )
            return
        try:
            self._queue.put_nowait(reading)
            self._held[sensor] += 1
        except asyncio.QueueFull:
            self._counters.readings_dropped_total += 1
            if not self._drop_logged:  # once per overload episode
                self._drop_logged = True
                log.warning(
                    "analysis queue full (%d): dropping readings, counted in edge_readings_dropped",
                    self.size,
                )

    def close(self) -> None:
        """Shutdown: take no more readings (those queued are still analysed)."""
        self._accepting = False

    async def drain(self, *, timeout_s: float) -> None:
        """Wait until the analysis has taken every queued reading, at most timeout_s."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
        except TimeoutError:
            log.error(
                "analysis did not drain %d readings within %.0f s at shutdown",
                self._queue.qsize(),
                timeout_s,
            )

    async def analyse(
        self,
        monitor: Monitor,
        *,
        persist: Callable[[Update], None],
        analysed: Callable[[Reading], None],
    ) -> None:
        """The analysis task: each reading through the monitor, until cancelled.

        Args:
            monitor: the running monitor (a reload reconfigures it in place).
            persist: holds an update for the store writer (no I/O).
            analysed: called with every analysed reading (the summaries fold it).
        """
        slice_end = time.monotonic() + ANALYSIS_SLICE_S
        behind = self.size // 10
        queue = self._queue
        while True:
            if time.monotonic() >= slice_end:
                # Queue.get() does not yield while readings are waiting: without this a
                # backlog would be analysed in one go, stalling every poller's timers (and
                # turning the backlog into timeouts, then sensor faults). A longer slice
                # while the queue is filling: the timers can wait a little, readings can't.
                await asyncio.sleep(0)
                deep = queue.qsize() > behind
                slice_end = time.monotonic() + (ANALYSIS_SLICE_MAX_S if deep else ANALYSIS_SLICE_S)
            reading = queue.get_nowait() if queue.qsize() else await queue.get()
            self._release(reading.sensor_id)
            try:
                if not monitor.knows(reading.sensor_id):
                    continue  # queued before a reload removed its sensor
                self._counters.readings_total += 1
                if queue.qsize() == 0:
                    self._drop_logged = False
                try:
                    update = monitor.update(reading)
                except Exception:  # a bug on one reading must not stop the analysis
                    self._count_failure(reading)
                    continue
                if update.drafts or update.state:
                    persist(update)
                analysed(reading)
            finally:
                queue.task_done()

    def _release(self, sensor: str) -> None:
        """A reading of ``sensor`` left the queue."""
        left = self._held[sensor] - 1
        if left > 0:
            self._held[sensor] = left
        else:  # no key left behind per sensor ever seen (bounded by the configuration)
            del self._held[sensor]
            self._hogs_logged.discard(sensor)

    def _count_failure(self, reading: Reading) -> None:
        self._counters.analysis_errors_total += 1
        key = (reading.sensor_id, reading.channel)
        if key not in self._failing:  # log once per channel
            self._failing.add(key)
            log.exception(
                "analysis failed for %s/%s (counted in edge_analysis_errors; logged once)", *key
            )
