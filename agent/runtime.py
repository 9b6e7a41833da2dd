"""The agent's lifetime: one TaskGroup that owns every task (pollers, analysis, uplinks).

sensors -> pollers -> bounded reading queue -> monitor -> store (fsync) -> uplinks

This module builds the pieces and wires them; each runs from its own module: the reading
queue and the analysis (agent.reading_queue), the store writer (agent.pending), the
sensor watch (agent.sensor_watch), the ordered stop (agent.shutdown), reloads
(agent.reload) and the status (agent.snapshot).
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
from agent.analysis.basis import source_digests
from agent.analysis.monitor import Monitor, Update
from agent.config import Config
from agent.control import ControlServer
from agent.fds import loop_exception_handler
from agent.feeds import OutboxFeeds
from agent.health import HEALTH_NOTE, HealthServer, Snapshot, health_note, health_status
from agent.host_names import resolve_names
from agent.identity import agent_identity, store_created_at
from agent.loop_lag import LAG_TICK_S, LoopLag
from agent.mqtt_inputs import RunningMqtt, SessionSubscriptions, build_mqtt
from agent.pending import STATE_BATCH_S, STORE_RETRY_POLL_S, PendingWrites, UpdateWriter
from agent.reading_queue import (
    ANALYSIS_SLICE_MAX_S,
    ANALYSIS_SLICE_S,
    READING_QUEUE_MIN,
    READING_QUEUE_S,
    ReadingQueue,
    wanted_queue_size,
)
from agent.reload import Reloader
from agent.sdnotify import SystemdNotifier
from agent.sensor_faults import SensorFaultTracker
from agent.sensor_tasks import RunningSensors
from agent.sensor_watch import SENSOR_WATCH_INTERVAL_S, watch_sensors
from agent.shutdown import (
    EXIT_STOP_LOST_DATA,
    POLLER_STOP_S,
    RELOAD_SETTLE_S,
    SHUTDOWN_DRAIN_S,
    PipelineTasks,
    shut_down,
)
from agent.snapshot import agent_snapshot
from agent.sources import BREAKER_FAILURES, build_sources
from agent.store import StoreError, check_path, outbox_for, refuse_squatted, store_lock
from agent.uplink import Delivery, build_uplinks
from agent.watchdog import Watchdog, WatchdogLimits
from drivers.modbus import Bus, ModbusPoller
from drivers.payloads import DecoderLibrary
from drivers.profiles import ProfileLibrary
from drivers.reading import utc_now

__all__ = [
    # The bounds below moved to the modules that use them; importable here as before.
    "ANALYSIS_SLICE_MAX_S",
    "ANALYSIS_SLICE_S",
    "LAG_TICK_S",
    "POLLER_STOP_S",
    "READING_QUEUE_MIN",
    "READING_QUEUE_S",
    "RELOAD_SETTLE_S",
    "SENSOR_WATCH_INTERVAL_S",
    "SHUTDOWN_DRAIN_S",
    "STARTS_PER_S",
    "STATE_BATCH_S",
    "STORE_RETRY_POLL_S",
    "Agent",
    "PipelineCounters",
    "run_until_signal",
]

log = logging.getLogger(__name__)

# The store writer is stuck: the health endpoint's note waits no longer than this.
HEALTH_NOTE_TIMEOUT_S = 2.0
STARTS_PER_S = 500.0  # first polls spread over len(pollers) / this (at least 1 s)


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
    wanted_queue_size = staticmethod(wanted_queue_size)

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
        self.feeds = OutboxFeeds(config, self.persist, self.counters)
        self.outbox = outbox_for(config, on_fault=self.feeds.store_fault)
        self.monitor: Monitor | None = None
        self.faults: SensorFaultTracker | None = None
        self.queue_size = wanted_queue_size(config)  # sized at start; a reload keeps it
        self.readings = ReadingQueue(self.queue_size, self.counters)
        self.pending = PendingWrites(self.outbox, self.counters, on_records=on_records)
        self.writer = UpdateWriter(self.pending)
        self._stop = asyncio.Event()
        self.started = time.monotonic()
        self.lag = LoopLag()
        self.sink = self.readings.put
        self.library = ProfileLibrary.load(config.profiles_dir)
        self.decoders = DecoderLibrary.load(config.decoders_dir)  # as this config reads them
        self.sensors = RunningSensors()
        sources = build_sources(
            config, self.library, self.sink, peers=self.sensors.peers, lines=self.sensors.lines
        )
        self.sensors.add_buses(sources.buses)
        self._first_pollers = sources.pollers
        # What persistent MQTT sessions hold (loaded with the store, before links run).
        self.sessions = SessionSubscriptions(lambda state: self.persist(Update(state=state)))
        self.mqtt = RunningMqtt(build_mqtt(config, self.sink, self.decoders, self.sessions))
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

    @property
    def queue_depth(self) -> int:
        return self.readings.depth

    def persist(self, update: Update) -> None:
        """Hold an update for the store writer (no I/O here): from now on it is written,
        or counted as lost."""
        self.writer.persist(update)

    def take_lag(self) -> float:
        """The longest event-loop lag since the last call."""
        return self.lag.take()

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
        self.health = HealthServer(
            self.snapshot,
            host=hc.host,
            port=hc.port,
            expose=hc.expose,
            on_state=self._note_health,
        )
        await self.health.__aenter__()
        return self.health.error

    async def _note_health(self, why: str | None) -> None:
        """Why /healthz is not served, noted in the store (None: drop the note): `status`
        reads it there, as it cannot ask an agent without its health endpoint. systemd's
        STATUS= says it too (`systemctl status`), as whoever holds the port meanwhile
        answers Prometheus as if it were the agent."""
        self.watchdog.notifier.notify(health_status(why))
        timeout_s = HEALTH_NOTE_TIMEOUT_S
        if (deadline := self.outbox.close_deadline) is not None:  # stopping: within its time
            timeout_s = min(timeout_s, max(0.0, deadline - asyncio.get_running_loop().time()))
        try:
            async with asyncio.timeout(timeout_s):
                await self.outbox.note(HEALTH_NOTE, health_note(why, utc_now()))
        except (StoreError, TimeoutError) as exc:
            why = str(exc) or f"the store did not answer within {timeout_s:g} s"
            log.warning("the health endpoint's state not noted in the store: %s", why)

    async def _close_health(self) -> None:
        if self.health is not None:
            await self.health.__aexit__(None, None, None)

    async def run(self) -> None:
        """Run until stop() is called; returns after a clean shutdown."""
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(loop_exception_handler)
        try:
            path = self.config.store.path
            # Before the lock: another application's file is refused with no lock file
            # left beside it. Damage is ours (quarantined when the store opens, as there).
            # Another user's file in /tmp first: SQLite run as root opening their -wal
            # makes it root's (and a FIFO there fails it), so store_lock's check came late.
            refuse_squatted(path)
            with contextlib.suppress(sqlite3.Error, OSError):  # unreadable now: opening says
                check_path(path, timeout=maint.PRECHECK_BUSY_S, damage_is_ours=True)
            with store_lock(path):
                await self._run()
        finally:
            if self.reloader is not None:  # SIGHUP reloads end (refused) before we return
                await self.reloader.close(timeout_s=POLLER_STOP_S)
            loop.set_exception_handler(previous)
        if self.writer.gave_up:
            log.critical(
                "agent stopped, NOT cleanly: the store did not finish writing in the stop's "
                "time, up to %d alert(s) and the latest state may be lost (exit status %d)",
                self.writer.lost_alerts,
                EXIT_STOP_LOST_DATA,
            )
        else:
            log.info("agent stopped cleanly")

    @property
    def stop_lost_data(self) -> bool:
        """The stop gave up on a store that did not commit: held writes may be lost."""
        return self.writer.gave_up

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        """Open the store, then the local endpoints (each one failing alone)."""
        await stack.enter_async_context(self.outbox)
        state = await self.outbox.load_state()
        fleet = await self.outbox.fleet_lives()
        self.sessions.load(state)
        digests = source_digests(self.config, self.library, self.decoders)
        self.monitor = Monitor(self.config, state=state, fleet=fleet, digests=digests)
        # Saved models learned at a device's name compare with its address now (bounded).
        self.monitor.resolved = await resolve_names(self.monitor.host_names())
        self.faults = SensorFaultTracker(
            self.config, state=state, breaker_failures=BREAKER_FAILURES
        )
        # Alerts persisted for sensors this configuration no longer has on that asset
        # would stay open forever: closed now (the writer stores them once it runs); a
        # model learned under settings edited while stopped is relearned as a reload would.
        self.persist(self.monitor.close_unconfigured())
        self.persist(self.faults.close_unconfigured())
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
        async with contextlib.AsyncExitStack() as stack:
            await self._open(stack)
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    tasks = self._start(tg)
                    self.watchdog.notifier.notify("READY=1")
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
                    await shut_down(self, tasks)
            finally:
                self.sensors.cancel_all()
                self.mqtt.cancel_all()
                await self.writer.flush_after_crash()

    def _start(self, tg: asyncio.TaskGroup) -> PipelineTasks:
        """Start every task: the sensors beside the group, the pipeline in it."""
        assert self.monitor is not None and self.faults is not None
        # Pollers run beside the group (agent.sensor_tasks). First polls spread over at
        # least a second, longer for a large estate (STARTS_PER_S).
        ramp_s = max(1.0, len(self._first_pollers) / STARTS_PER_S)
        self.sensors.start(self._first_pollers, ramp_s=ramp_s)
        self.mqtt.start()
        analysis = self.readings.analyse(
            self.monitor, persist=self.persist, analysed=self.feeds.reading
        )
        watch = watch_sensors(self.faults, self.sensors, self.mqtt, self.persist)
        producers = (
            tg.create_task(analysis, name="analysis"),
            tg.create_task(self.writer.run(), name="store-writer"),
            tg.create_task(watch, name="sensor-watch"),
        )
        for u in self._first_uplinks:
            self.start_uplink(u)
        others = (
            tg.create_task(self.feeds.faults(self.outbox), name="store-faults"),
            tg.create_task(self.feeds.summaries(self.outbox), name="summaries"),
            tg.create_task(self.watchdog.run(), name="watchdog"),
            tg.create_task(self.lag.run(), name="loop-lag"),
        )
        return PipelineTasks(producers, others)

    async def maintenance(
        self, request: maint.MaintenanceRequest, requested_by: maint.Requester
    ) -> list[dict[str, Any]]:
        """Record a repair on an asset: reset its baselines and trends, store the event
        (agent.maintenance.record_running).

        Raises:
            KeyError: unknown asset.
            StoreError: the agent is stopping, or the store is unwritable now (the event is
                then held and stored once it can be).
        """
        assert self.monitor is not None
        if self.writer.closed:
            raise StoreError("the agent is stopping; record the event after it restarts")
        try:
            return await maint.record_running(self.monitor, self.pending, request, requested_by)
        finally:
            self.expire_status()

    def expire_status(self) -> None:
        """The state changed: /healthz (and `status`) answer from a snapshot made after it."""
        if self.health is not None:
            self.health.expire()

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
