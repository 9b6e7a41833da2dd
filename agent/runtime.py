"""The agent's lifetime: one TaskGroup that owns every task (pollers, analysis, uplinks).

sensors -> pollers -> bounded reading queue -> monitor -> store (fsync) -> uplinks
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import maintenance as maint
from agent import reload
from agent.analysis.monitor import Monitor, Update
from agent.config import Config
from agent.control import ControlServer
from agent.fds import loop_exception_handler
from agent.feeds import OutboxFeeds
from agent.health import HealthServer, Snapshot
from agent.identity import agent_identity, store_created_at
from agent.mqtt_inputs import RunningMqtt, build_mqtt
from agent.pending import PendingWrites
from agent.reload import Reloader
from agent.sdnotify import SystemdNotifier
from agent.sensor_faults import SensorFaultTracker, SensorHealth
from agent.sensor_tasks import RunningSensors
from agent.snapshot import agent_snapshot
from agent.sources import BREAKER_FAILURES, build_sources
from agent.store import StoreError, outbox_for, store_lock
from agent.uplink import Delivery, build_uplinks
from agent.watchdog import Watchdog, WatchdogLimits
from drivers.modbus import Bus, ModbusPoller
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
RELOAD_SETTLE_S = 8.0  # a reload applying when stop begins (bounded stops: 2 + 2 + 5 s)
LAG_TICK_S = 0.1
STARTS_PER_S = 500.0
ANALYSIS_SLICE_S = 0.005  # analysis yields the event loop at least this often...
ANALYSIS_SLICE_MAX_S = 0.05  # ...or this often while it is behind (well under any timeout)
# Updates without an alert (model and lifecycle state) wait up to this long for others to
# share their transaction: thousands of channels' periodic saves then cost a few commits a
# second instead of one each. An update with an alert is written at once, with them.
STATE_BATCH_S = 0.25


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
        config_path: the file it came from; SIGHUP and `edge-agent reload` re-read it
            (None: no reload, as in the demo and tests that build a Config in code).
        on_records: called with the records the store committed (for the demo display).
        watchdog: bounds past which the agent counts as hung (systemd then restarts it).
    """

    poller_stop_s = POLLER_STOP_S

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        on_records: Callable[[list[dict[str, Any]]], None] | None = None,
        watchdog: WatchdogLimits | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.counters = PipelineCounters()
        self.feeds = OutboxFeeds(config, self._persist, self.counters)
        self.outbox = outbox_for(config, on_fault=self.feeds.store_fault)
        self.monitor: Monitor | None = None
        self.faults: SensorFaultTracker | None = None
        self.queue_size = self.wanted_queue_size(config)
        self._queue: asyncio.Queue[Reading] = asyncio.Queue(maxsize=self.queue_size)
        self.pending = PendingWrites(self.outbox, self.counters, on_records=on_records)
        self._stopping = False
        self._accepting = True
        self._stop = asyncio.Event()
        self._wake_writer = asyncio.Event()
        self._alert_held = asyncio.Event()  # an update with drafts waits: write now
        self.started = time.monotonic()
        self._drop_logged = False
        self._lag_max_s = 0.0
        self._analysis_failing: set[tuple[str, str]] = set()
        self.sink = self._enqueue
        self.persist = self._persist
        self.library = ProfileLibrary.load(config.profiles_dir)
        sources = build_sources(config, self.library, self._enqueue)
        self.sensors = RunningSensors()
        self.sensors.add_buses(sources.buses)
        self._first_pollers = sources.pollers
        self.mqtt = RunningMqtt(build_mqtt(config, self._enqueue))
        self._first_uplinks = build_uplinks(config, self.outbox)
        self.deliveries: dict[str, tuple[Delivery, asyncio.Task[None]]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self.health: HealthServer | None = None
        self.control: ControlServer | None = None
        self.reloader = None if config_path is None else Reloader(self, config_path)
        self.identity = agent_identity(config, None, config_path)
        self.watchdog = Watchdog(
            SystemdNotifier(),
            writer_busy=lambda: self.outbox.writer_busy_s,
            limits=watchdog or WatchdogLimits(),
        )
        self.ready = asyncio.Event()

    @property
    def pollers(self) -> list[ModbusPoller]:
        """The sensors' pollers: the running ones (before start, the ones built)."""
        return list(self.sensors.pollers.values() if self._tg else self._first_pollers)

    @property
    def buses(self) -> list[Bus]:
        return self.sensors.buses()

    @property
    def uplinks(self) -> list[Delivery]:
        return [d for d, _ in self.deliveries.values()] if self._tg else list(self._first_uplinks)

    @staticmethod
    def wanted_queue_size(config: Config) -> int:
        """The reading queue a configuration needs (READING_QUEUE_S of every reading)."""
        # An MQTT sensor's rate is its publisher's; one message per second per channel is
        # the usual case (a burst beyond the queue is counted, not lost silently).
        per_second = sum(
            len(s.channels) / (s.poll_interval_s if s.modbus is not None else 1.0)
            for s in config.sensors
        )
        return max(READING_QUEUE_MIN, int(per_second * READING_QUEUE_S))

    def stop(self) -> None:
        """Ask the agent to flush and exit (signal handlers call this)."""
        self._stop.set()

    def start_uplink(self, delivery: Delivery) -> None:
        """Run an uplink's delivery loop in the agent's task group (at start, at a reload)."""
        assert self._tg is not None
        task = self._tg.create_task(delivery.run(), name=f"uplink[{delivery.name}]")
        self.deliveries[delivery.name] = (delivery, task)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def started_or_stopping(self) -> None:
        """Wait until the agent runs, or is asked to stop (it may never get to run)."""
        if self.ready.is_set() or self._stop.is_set():
            return
        waits = [asyncio.ensure_future(e.wait()) for e in (self.ready, self._stop)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def rebind_health(self) -> str | None:
        """Serve /healthz and /metrics where the (reloaded) configuration says; why not,
        when it cannot listen there (the agent runs on without them)."""
        await self._close_health()
        hc = self.config.health
        self.health = HealthServer(self.snapshot, host=hc.host, port=hc.port, expose=hc.expose)
        await self.health.__aenter__()
        return self.health.error

    async def _close_health(self) -> None:
        if self.health is not None:
            await self.health.__aexit__(None, None, None)

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
            if self.reloader is not None:  # SIGHUP reloads end (refused) before we return
                await self.reloader.close(timeout_s=POLLER_STOP_S)
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
        self.identity = agent_identity(self.config, created, self.config_path)
        stack.push_async_callback(self._close_health)
        await self.rebind_health()
        cc = self.config.control
        handlers = {maint.OP: maint.control_handler(self.maintenance)}
        if self.reloader is not None:
            handlers[reload.OP] = self.reloader.control_handler()
        self.control = await stack.enter_async_context(
            ControlServer(
                cc.socket, group=cc.group, identity=lambda: self.identity, handlers=handlers
            )
        )

    async def _run(self) -> None:
        notifier = self.watchdog.notifier
        async with contextlib.AsyncExitStack() as stack:
            await self._open(stack)
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    # Pollers run beside the group (agent.sensor_tasks). First polls spread
                    # over at least a second, longer for a large estate (STARTS_PER_S).
                    ramp_s = max(1.0, len(self._first_pollers) / STARTS_PER_S)
                    self.sensors.start(self._first_pollers, ramp_s=ramp_s)
                    self.mqtt.start()
                    analysis = tg.create_task(self._analyse(), name="analysis")
                    writer = tg.create_task(self._write_loop(), name="store-writer")
                    watch = tg.create_task(self._watch_sensors(), name="sensor-watch")
                    for u in self._first_uplinks:
                        self.start_uplink(u)
                    ups = [tg.create_task(self.feeds.faults(self.outbox), name="store-faults")]
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
                    self._accepting = False
                    # Nothing starts from here, whatever a reload in flight asks; one that
                    # is applying ends first, so what it stops is waited for below.
                    self.sensors.closed = self.mqtt.closed = True
                    if self.reloader is not None:
                        await self.reloader.settle(timeout_s=RELOAD_SETTLE_S)
                    await self.sensors.close(timeout_s=POLLER_STOP_S)
                    await self.mqtt.close(timeout_s=POLLER_STOP_S)
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
                    for t in [*ups, *(t for _, t in self.deliveries.values()), watchdog, lag]:
                        t.cancel()
            finally:
                self.sensors.cancel_all()
                self.mqtt.cancel_all()
                if len(self.pending) and not self._stopping:  # a task crashed
                    async with self.pending.lock:
                        await self.pending.flush(final=True)

    async def _write_loop(self) -> None:
        """Persist what analysis and the sensor watch produced, in batches, in order.

        Analysis never waits for a disk flush: it only holds its updates here and wakes
        this task; a store that fails is retried with back-off (PendingWrites).
        """
        while True:
            await self._wake_writer.wait()
            if not self._alert_held.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STATE_BATCH_S):
                        await self._alert_held.wait()
            self._wake_writer.clear()
            self._alert_held.clear()
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
            queue = self._queue
            reading = queue.get_nowait() if queue.qsize() else await queue.get()
            try:
                if not self.monitor.knows(reading.sensor_id):
                    continue  # queued before a reload removed its sensor
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
        that answer only implausible values for longer than their bad_values_fault_s, and
        MQTT sensors silent for longer than their stale_after_s."""
        assert self.faults is not None
        while True:
            await asyncio.sleep(SENSOR_WATCH_INTERVAL_S)
            now = utc_now()
            for p in list(self.sensors.pollers.values()):
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
            links = {link.id: link for link in self.mqtt.links}
            for m in self.mqtt.sensors:
                link = links.get(m.broker)
                error = m.last_error
                if link is not None and not link.connected:
                    # Silent because the broker is out of reach: say so in the fault.
                    error = f"broker {link.id} not connected: {link.last_error or 'connecting'}"
                health = SensorHealth(
                    m.sensor_id,
                    m.state,
                    0,
                    error,
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
        if update.drafts or update.lives:
            self._alert_held.set()
        self._wake_writer.set()

    def take_lag(self) -> float:
        """The longest event-loop lag since the last call."""
        lag, self._lag_max_s = self._lag_max_s, 0.0
        return lag

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def snapshot(self) -> Snapshot:
        """The agent's status, as /healthz and /metrics show it (agent.snapshot)."""
        return await agent_snapshot(self)


async def run_until_signal(agent: Agent) -> None:
    """Run the agent; SIGTERM and SIGINT ask it to flush and exit, SIGHUP to reload its
    configuration file (agent.reload)."""
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, agent.stop)
    if agent.reloader is not None:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, agent.reloader.on_signal)
    await agent.run()
