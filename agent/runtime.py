"""The agent's lifetime: one TaskGroup that owns every task (pollers, analysis, uplinks).

sensors -> pollers -> bounded reading queue -> monitor -> store (fsync) -> uplinks
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from agent import maintenance as maint
from agent.analysis.monitor import Monitor, Update
from agent.config import Config
from agent.control import ControlServer
from agent.fds import loop_exception_handler
from agent.feeds import OutboxFeeds
from agent.health import HealthServer, Snapshot
from agent.identity import agent_identity, store_created_at
from agent.mqtt_inputs import build_mqtt
from agent.pending import PendingWrites
from agent.sdnotify import SystemdNotifier
from agent.sensor_faults import SensorFaultTracker, SensorHealth
from agent.sources import BREAKER_FAILURES, build_sources
from agent.store import StoreError, outbox_for, store_lock
from agent.uplink import build_uplinks
from agent.watchdog import Watchdog, WatchdogLimits
from drivers.profiles import ProfileLibrary
from drivers.reading import Reading, utc_now

log = logging.getLogger(__name__)

# The reading queue holds this many seconds of every sensor's readings (at least
# READING_QUEUE_MIN): enough to ride out a burst (start-up, a big store commit) without
# dropping, bounded so an analysis that cannot keep up shows as counted drops, not memory.
READING_QUEUE_S = 5.0
READING_QUEUE_MIN = 1000
SENSOR_WATCH_INTERVAL_S = 1.0
STORE_RETRY_POLL_S = 0.5  # how often the writer looks again while the store fails
POLLER_STOP_S = 2.0  # bound on waiting for pollers at shutdown (then they are abandoned)
SHUTDOWN_DRAIN_S = 10.0  # well inside systemd's TimeoutStopSec=30
STATS_TIMEOUT_S = 2.0  # /healthz answers even when the store writer is stuck
LAG_TICK_S = 0.1
STARTS_PER_S = 500.0
ANALYSIS_SLICE_S = 0.005  # analysis yields the event loop at least this often...
ANALYSIS_SLICE_MAX_S = 0.05  # ...or this often while it is behind (well under any timeout)


@dataclass(slots=True)
class PipelineCounters:
    readings_total: int = 0
    readings_dropped_total: int = 0
    alerts_total: int = 0
    alerts_lost_total: int = 0
    store_errors_total: int = 0
    analysis_errors_total: int = 0
    summaries_total: int = 0
    summaries_dropped_total: int = 0
    store_faults_total: int = 0


class Agent:
    """Builds the pipeline from a configuration and runs it until `stop()`.

    Args:
        config: validated configuration.
        on_records: called with the records the store committed (for the demo display).
        watchdog: bounds past which the agent counts as hung (systemd then restarts it).
    """

    def __init__(
        self,
        config: Config,
        *,
        on_records: Callable[[list[dict[str, Any]]], None] | None = None,
        watchdog: WatchdogLimits | None = None,
    ) -> None:
        self.config = config
        self.counters = PipelineCounters()
        self.feeds = OutboxFeeds(config, self._persist, self.counters)
        self.outbox = outbox_for(config, on_fault=self.feeds.store_fault)
        self.monitor: Monitor | None = None
        self.faults: SensorFaultTracker | None = None
        # An MQTT sensor's rate is its publisher's; one message per second per channel is
        # the usual case (a burst beyond the queue is counted, not lost silently).
        per_second = sum(
            len(s.channels) / (s.poll_interval_s if s.modbus is not None else 1.0)
            for s in config.sensors
        )
        self.queue_size = max(READING_QUEUE_MIN, int(per_second * READING_QUEUE_S))
        self._queue: asyncio.Queue[Reading] = asyncio.Queue(maxsize=self.queue_size)
        self.pending = PendingWrites(self.outbox, self.counters, on_records=on_records)
        self._stopping = False
        self._accepting = True
        self._stop = asyncio.Event()
        self._wake_writer = asyncio.Event()
        self._started = time.monotonic()
        self._drop_logged = False
        self._lag_max_s = 0.0
        self._analysis_failing: set[tuple[str, str]] = set()
        sources = build_sources(config, ProfileLibrary.load(config.profiles_dir), self._enqueue)
        self.buses = sources.buses
        self.pollers = list(sources.pollers)
        self.mqtt = build_mqtt(config, self._enqueue)
        self.uplinks = build_uplinks(config, self.outbox)
        self.health: HealthServer | None = None
        self.control: ControlServer | None = None
        self.identity = agent_identity(config, None)
        self.watchdog = Watchdog(
            SystemdNotifier(),
            writer_busy=lambda: self.outbox.writer_busy_s,
            limits=watchdog or WatchdogLimits(),
        )
        self.ready = asyncio.Event()

    def stop(self) -> None:
        """Ask the agent to flush and exit (signal handlers call this)."""
        self._stop.set()

    def _enqueue(self, reading: Reading) -> None:
        if not self._accepting:
            return  # stopping: a reading that raced the stop is not analysed
        try:
            self._queue.put_nowait(reading)
        except asyncio.QueueFull:
            self.counters.readings_dropped_total += 1
            if not self._drop_logged:  # once per overload episode
                self._drop_logged = True
                log.warning(
                    "analysis queue full (%d): dropping readings, counted in edge_readings_dropped",
                    self.queue_size,
                )

    async def run(self) -> None:
        """Run until stop() is called; returns after a clean shutdown."""
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(loop_exception_handler)
        try:
            with store_lock(self.config.store.path):
                await self._run()
        finally:
            loop.set_exception_handler(previous)
        log.info("agent stopped cleanly")

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        """Open the store, then the local endpoints (each one failing alone)."""
        await stack.enter_async_context(self.outbox)
        state = await self.outbox.load_state()
        fleet = await self.outbox.fleet_lives()
        self.monitor = Monitor(self.config, state=state, fleet=fleet)
        self.faults = SensorFaultTracker(
            self.config, state=state, breaker_failures=BREAKER_FAILURES
        )
        try:
            created = await asyncio.to_thread(store_created_at, self.config.store.path)
        except (OSError, sqlite3.Error) as exc:
            log.warning("store identity unreadable (%s): clients check gateway and path", exc)
            created = None
        self.identity = agent_identity(self.config, created)
        hc, cc = self.config.health, self.config.control
        self.health = await stack.enter_async_context(
            HealthServer(self.snapshot, host=hc.host, port=hc.port, expose=hc.expose)
        )
        self.control = await stack.enter_async_context(
            ControlServer(
                cc.socket,
                group=cc.group,
                identity=lambda: self.identity,
                handlers={maint.OP: maint.control_handler(self.maintenance)},
            )
        )

    async def _run(self) -> None:
        notifier = self.watchdog.notifier
        async with contextlib.AsyncExitStack() as stack:
            await self._open(stack)
            polls: list[asyncio.Task[None]] = []
            try:
                async with asyncio.TaskGroup() as tg:
                    # Pollers run beside the group, not in it: shutdown waits for them a
                    # bounded time and can abandon one, which a group cannot. First polls
                    # spread over at least a second, longer for a large estate
                    # (STARTS_PER_S): thousands of connects and first analyses in the same
                    # instant would delay every answer past its timeout.
                    ramp_s = max(1.0, len(self.pollers) / STARTS_PER_S)
                    polls = [
                        asyncio.create_task(
                            p.run(start_delay_s=random.uniform(0.0, ramp_s)),
                            name=f"poll[{p.sensor_id}]",
                        )
                        for p in self.pollers
                    ]
                    polls += [
                        asyncio.create_task(link.run(), name=f"mqtt[{link.id}]")
                        for link in self.mqtt.links
                    ]
                    for t in polls:
                        t.add_done_callback(_poller_ended)
                    analysis = tg.create_task(self._analyse(), name="analysis")
                    writer = tg.create_task(self._write_loop(), name="store-writer")
                    watch = tg.create_task(self._watch_sensors(), name="sensor-watch")
                    ups = [tg.create_task(u.run(), name=f"uplink[{u.name}]") for u in self.uplinks]
                    ups.append(tg.create_task(self.feeds.faults(self.outbox), name="store-faults"))
                    ups.append(tg.create_task(self.feeds.summaries(self.outbox), name="summaries"))
                    watchdog = tg.create_task(self.watchdog.run(), name="watchdog")
                    lag = tg.create_task(self._measure_lag(), name="loop-lag")
                    notifier.notify("READY=1")
                    self.ready.set()
                    log.info(
                        "agent %s running: %d sensors on %d buses, %d MQTT sensors on %d "
                        "brokers, %d uplinks",
                        self.config.gateway.id,
                        len(self.pollers),
                        len(self.buses),
                        len(self.mqtt.sensors),
                        len(self.mqtt.links),
                        len(self.uplinks),
                    )
                    await self._stop.wait()
                    notifier.notify("STOPPING=1")
                    # Order matters: stop reading, analyse what was read, persist, then
                    # stop the uplinks (undelivered alerts wait on disk for the next start).
                    await self._stop_pollers(polls)
                    try:
                        async with asyncio.timeout(SHUTDOWN_DRAIN_S):
                            await self._queue.join()
                    except TimeoutError:
                        log.error(
                            "analysis did not drain %d readings within %.0f s at shutdown",
                            self._queue.qsize(),
                            SHUTDOWN_DRAIN_S,
                        )
                    # With the lock held no writer can be inside a store write when it is
                    # cancelled; whatever was made is already held in `pending`.
                    async with self.pending.lock:
                        self._stopping = True
                        for t in (analysis, watch, writer):
                            t.cancel()
                        await asyncio.gather(analysis, watch, writer, return_exceptions=True)
                        await self.pending.flush(final=True)
                    for t in [*ups, watchdog, lag]:
                        t.cancel()
            finally:
                for t in polls:
                    t.cancel()
                for bus in self.buses:
                    bus.close()
                if len(self.pending) and not self._stopping:  # a task crashed
                    async with self.pending.lock:
                        await self.pending.flush(final=True)

    async def _stop_pollers(self, polls: list[asyncio.Task[None]]) -> None:
        """Stop every poller, certainly and within POLLER_STOP_S.

        The stop flag is checked after every await in a poller, so even a cancellation a
        library swallowed ends it; no reading is accepted from here on either way.
        """
        self._accepting = False
        for p in self.pollers:
            p.stop()
        for link in self.mqtt.links:
            link.stop()
        for t in polls:
            t.cancel()
        if not polls:
            return
        _, stuck = await asyncio.wait(polls, timeout=POLLER_STOP_S)
        if stuck:
            names = sorted(t.get_name() for t in stuck)
            log.error(
                "%d pollers did not stop within %.0f s; abandoned: %s",
                len(stuck),
                POLLER_STOP_S,
                ", ".join(names[:10]),
            )

    async def _write_loop(self) -> None:
        """Persist what analysis and the sensor watch produced, in batches, in order.

        Analysis never waits for a disk flush: it only holds its updates here and wakes
        this task; a store that fails is retried with back-off (PendingWrites).
        """
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            async with self.pending.lock:
                await self.pending.flush()
            if len(self.pending):  # the store failed or more arrived: look again soon
                await asyncio.sleep(STORE_RETRY_POLL_S if not self._wake_writer.is_set() else 0)
                self._wake_writer.set()

    async def _measure_lag(self) -> None:
        """How late the event loop runs a timer: the delay every poll and reading suffers."""
        while True:
            asked = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            lag = time.monotonic() - asked - LAG_TICK_S
            self._lag_max_s = max(self._lag_max_s, lag)

    async def _analyse(self) -> None:
        assert self.monitor is not None
        slice_end = time.monotonic() + ANALYSIS_SLICE_S
        behind = self.queue_size // 10
        while True:
            if time.monotonic() >= slice_end:
                # Queue.get() does not yield while readings are waiting: without this a
                # backlog would be analysed in one go, stalling every poller's timers (and
                # turning the backlog into timeouts, then sensor faults). A longer slice
                # while the queue is filling: the timers can wait a little, readings can't.
                await asyncio.sleep(0)
                deep = self._queue.qsize() > behind
                slice_end = time.monotonic() + (ANALYSIS_SLICE_MAX_S if deep else ANALYSIS_SLICE_S)
            reading = await self._queue.get()
            try:
                self.counters.readings_total += 1
                if self._queue.qsize() == 0:
                    self._drop_logged = False
                try:
                    update = self.monitor.update(reading)
                except Exception:  # a bug on one reading must not stop the analysis
                    self.counters.analysis_errors_total += 1
                    key = (reading.sensor_id, reading.channel)
                    if key not in self._analysis_failing:  # log once per channel
                        self._analysis_failing.add(key)
                        log.exception(
                            "analysis failed for %s/%s (counted in "
                            "edge_analysis_errors; logged once)",
                            *key,
                        )
                    continue
                if update.drafts or update.state:
                    self._persist(update)
                self.feeds.reading(reading)
            finally:
                self._queue.task_done()

    async def maintenance(
        self, request: maint.MaintenanceRequest, requested_by: maint.Requester
    ) -> list[dict[str, Any]]:
        """Record a repair on an asset: reset its baselines and trends, store the event.

        It goes through the same ordered queue as every alert, so no older held update can
        overwrite the reset. The record names who asked (`evidence.requested_by`). A
        replacement (request.replaced) stores the part's completed life in the fleet history
        of its class, in the same transaction.

        Raises:
            KeyError: unknown asset.
            StoreError: the agent is stopping, or the store is unwritable now (the event is
                then held and stored once it can be).
        """
        assert self.monitor is not None
        if self._stopping:
            raise StoreError("the agent is stopping; record the event after it restarts")
        update = self.monitor.maintenance(
            request.asset, utc_now(), request.note, replaced=request.replaced
        )
        records = await self.pending.write(maint.stamp_requester(update, requested_by), now=True)
        if records is None:
            raise StoreError("the store is unwritable now; the event is held and retried")
        log.info(
            "maintenance on %s recorded as %s, requested by %s",
            request.asset,
            records[0]["alert_id"],
            requested_by,
        )
        return records

    async def _watch_sensors(self) -> None:
        """Raise and clear sensor_fault alerts: breakers that open and close, and sensors
        that answer only implausible values for longer than their bad_values_fault_s."""
        assert self.faults is not None
        while True:
            await asyncio.sleep(SENSOR_WATCH_INTERVAL_S)
            now = utc_now()
            for p in self.pollers:
                health = SensorHealth(
                    p.sensor_id,
                    p.state,
                    p.consecutive_failures,
                    p.last_error,
                    p.last_ok_at,
                    p.bad_for_s,
                    p.last_bad,
                )
                update = self.faults.update(health, now)
                if update.drafts or update.state:
                    self._persist(update)
            for m in self.mqtt.sensors:
                health = SensorHealth(
                    m.sensor_id,
                    m.state,
                    0,
                    m.last_error,
                    m.last_ok_at,
                    m.bad_for_s,
                    m.last_bad,
                    m.silent_for_s,
                )
                update = self.faults.update(health, now)
                if update.drafts or update.state:
                    self._persist(update)

    def _persist(self, update: Update) -> None:
        """Hold an update for the writer (no I/O here): from now on it is written, or
        counted as lost."""
        self.pending.hold(update)
        self._wake_writer.set()

    def _take_lag(self) -> float:
        lag, self._lag_max_s = self._lag_max_s, 0.0
        return lag

    async def snapshot(self) -> Snapshot:
        """The agent's status, as /healthz and /metrics show it."""
        now_mono = time.monotonic()
        now = utc_now()
        sensors = []
        for p in self.pollers:
            st = p.status
            last_ok = st.last_ok_at
            sensors.append(
                {
                    "id": p.sensor_id,
                    "bus": p.bus.name,
                    "state": st.state,
                    "last_ok_age_s": (now - last_ok).total_seconds() if last_ok else None,
                    "consecutive_failures": st.consecutive_failures,
                    "polls_total": st.polls_total,
                    "errors_total": st.errors_total,
                    "errors_by_kind": st.errors_by_kind,
                    "missed_ticks": st.missed_ticks,
                    "bad_values": st.bad_values,
                    "bad_for_s": st.bad_for_s,
                    "last_bad": list(st.last_bad),
                    "last_rtt_s": st.last_rtt_s,
                    "last_error": st.last_error,
                }
            )
        sensors += [m.status() for m in self.mqtt.sensors]
        mqtt_links = [link.status() for link in self.mqtt.links]
        buses = [asdict(b.status()) for b in self.buses if b.kind != "tcp"]
        channels = [
            {
                "asset": v.asset_id,
                "sensor": v.sensor_id,
                "channel": v.channel,
                "value": v.value,
                "zone": v.zone,
                "active_level": v.active_level,
                "flaps": {"severity": v.flaps[0], "trend": v.flaps[1]},
            }
            for v in (self.monitor.views() if self.monitor else [])
        ]
        try:
            async with asyncio.timeout(STATS_TIMEOUT_S):
                store: dict[str, Any] = asdict(await self.outbox.stats())
        except StoreError as exc:
            store = {"error": str(exc)}
        except TimeoutError:
            store = {"error": f"the store writer did not answer within {STATS_TIMEOUT_S} s"}
        wd = self.watchdog
        backlogs = store.get("uplinks", {})
        uplinks = [{**asdict(u.status), "backlog": backlogs.get(u.name)} for u in self.uplinks]
        degraded = (
            any(s["state"] not in ("ok", "starting") for s in sensors)
            or any(not link["connected"] for link in mqtt_links)
            or any(u.get("consecutive_failures", 0) > 0 for u in uplinks)
            or bool(len(self.pending))
            or "error" in store
            or wd.withheld is not None
        )
        return {
            "gateway": self.config.gateway.id,
            "agent": self.identity,
            "status": "degraded" if degraded else "ok",
            "uptime_s": round(now_mono - self._started, 3),
            "sensors": sensors,
            "buses": buses,
            "mqtt": mqtt_links,
            "channels": channels,
            "uplinks": uplinks,
            "store": store,
            "pipeline": {
                **asdict(self.counters),
                "unsaved_updates": len(self.pending),
                "queue_depth": self._queue.qsize(),
                "queue_size": self.queue_size,
                "loop_lag_max_s": round(self._take_lag(), 4),
            },
            "process": {
                "open_fds": wd.fds[0],
                "fd_limit": wd.fds[1],
                "loop_lag_seconds": round(wd.loop_lag_s, 3),
                "store_writer_busy_seconds": round(self.outbox.writer_busy_s, 3),
                "hung": wd.withheld,
            },
        }


def _poller_ended(task: asyncio.Task[None]) -> None:
    """A poller (or broker link) only ends when stopped; say so loudly if one ended any
    other way."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s ended unexpectedly: %r", task.get_name(), task.exception())


async def run_until_signal(agent: Agent) -> None:
    """Run the agent; SIGTERM and SIGINT ask it to flush and exit."""
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, agent.stop)
    await agent.run()
