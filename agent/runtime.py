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
from agent.pending import PendingWrites
from agent.sdnotify import SystemdNotifier
from agent.sensor_faults import SensorFaultTracker, SensorHealth
from agent.store import StoreError, outbox_for, store_lock
from agent.uplink import build_uplinks
from agent.watchdog import Watchdog, WatchdogLimits
from drivers.modbus import ModbusTcpPoller, silence_pymodbus_logging
from drivers.reading import Reading, utc_now

log = logging.getLogger(__name__)

READING_QUEUE_SIZE = 1000
# Failed polls in a row that open a poller's breaker and raise a sensor_fault alert.
BREAKER_FAILURES = 3
SENSOR_WATCH_INTERVAL_S = 1.0
SHUTDOWN_DRAIN_S = 10.0  # well inside systemd's TimeoutStopSec=30
STATS_TIMEOUT_S = 2.0  # /healthz answers even when the store writer is stuck


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
        self._queue: asyncio.Queue[Reading] = asyncio.Queue(maxsize=READING_QUEUE_SIZE)
        self.pending = PendingWrites(self.outbox, self.counters, on_records=on_records)
        self._stopping = False
        self._stop = asyncio.Event()
        self._started = time.monotonic()
        self._drop_logged = False
        self._analysis_failing: set[tuple[str, str]] = set()
        self.pollers = [
            ModbusTcpPoller(
                s.id,
                host=s.modbus.host,
                port=s.modbus.port,
                device_id=s.modbus.device_id,
                profile=s.modbus.profile,
                channels=s.channels,
                timeout_s=s.modbus.timeout_s,
                poll_interval_s=s.poll_interval_s,
                sink=self._enqueue,
                failure_threshold=BREAKER_FAILURES,
            )
            for s in config.sensors
        ]
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
        try:
            self._queue.put_nowait(reading)
        except asyncio.QueueFull:
            self.counters.readings_dropped_total += 1
            if not self._drop_logged:  # once per overload episode
                self._drop_logged = True
                log.warning(
                    "analysis queue full (%d): dropping readings, counted in edge_readings_dropped",
                    READING_QUEUE_SIZE,
                )

    async def run(self) -> None:
        """Run until stop() is called; returns after a clean shutdown."""
        silence_pymodbus_logging()  # our pollers log once per failure episode, with context
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
            try:
                async with asyncio.TaskGroup() as tg:
                    polls = [
                        tg.create_task(p.run(), name=f"poll[{p.sensor_id}]") for p in self.pollers
                    ]
                    analysis = tg.create_task(self._analyse(), name="analysis")
                    watch = tg.create_task(self._watch_sensors(), name="sensor-watch")
                    ups = [tg.create_task(u.run(), name=f"uplink[{u.name}]") for u in self.uplinks]
                    ups.append(tg.create_task(self.feeds.faults(self.outbox), name="store-faults"))
                    ups.append(tg.create_task(self.feeds.summaries(self.outbox), name="summaries"))
                    watchdog = tg.create_task(self.watchdog.run(), name="watchdog")
                    notifier.notify("READY=1")
                    self.ready.set()
                    log.info(
                        "agent %s running: %d sensors, %d uplinks",
                        self.config.gateway.id,
                        len(self.pollers),
                        len(self.uplinks),
                    )
                    await self._stop.wait()
                    notifier.notify("STOPPING=1")
                    # Order matters: stop reading, analyse what was read, persist, then
                    # stop the uplinks (undelivered alerts wait on disk for the next start).
                    for t in polls:
                        t.cancel()
                    await asyncio.gather(*polls, return_exceptions=True)
                    try:
                        async with asyncio.timeout(SHUTDOWN_DRAIN_S):
                            await self._queue.join()
                    except TimeoutError:
                        log.error(
                            "analysis did not drain %d readings within %.0f s at shutdown",
                            self._queue.qsize(),
                            SHUTDOWN_DRAIN_S,
                        )
                    # With the lock held neither writer can be inside a store write when
                    # it is cancelled; whatever it made is already held in `pending`.
                    async with self.pending.lock:
                        self._stopping = True
                        for t in (analysis, watch):
                            t.cancel()
                        await asyncio.gather(analysis, watch, return_exceptions=True)
                        await self.pending.flush(final=True)
                    for t in [*ups, watchdog]:
                        t.cancel()
            finally:
                if len(self.pending) and not self._stopping:  # a task crashed
                    async with self.pending.lock:
                        await self.pending.flush(final=True)

    async def _analyse(self) -> None:
        assert self.monitor is not None
        while True:
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
                if update.drafts or update.state or len(self.pending):
                    await self._persist(update)
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
        """Raise and clear sensor_fault alerts as pollers' breakers open and close."""
        assert self.faults is not None
        while True:
            await asyncio.sleep(SENSOR_WATCH_INTERVAL_S)
            for p in self.pollers:
                st = p.status
                health = SensorHealth(
                    p.sensor_id, st.state, st.consecutive_failures, st.last_error, st.last_ok_at
                )
                update = self.faults.update(health, utc_now())
                if update.drafts or update.state or len(self.pending):
                    await self._persist(update)  # also retries what a full disk held

    async def _persist(self, update: Update) -> None:
        await self.pending.write(update)  # held before it waits: a shutdown cannot lose it

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
                    "state": st.state,
                    "last_ok_age_s": (now - last_ok).total_seconds() if last_ok else None,
                    "consecutive_failures": st.consecutive_failures,
                    "polls_total": st.polls_total,
                    "errors_total": st.errors_total,
                    "last_rtt_s": st.last_rtt_s,
                    "last_error": st.last_error,
                }
            )
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
            "channels": channels,
            "uplinks": uplinks,
            "store": store,
            "pipeline": {
                **asdict(self.counters),
                "unsaved_updates": len(self.pending),
                "queue_depth": self._queue.qsize(),
            },
            "process": {
                "open_fds": wd.fds[0],
                "fd_limit": wd.fds[1],
                "loop_lag_seconds": round(wd.loop_lag_s, 3),
                "store_writer_busy_seconds": round(self.outbox.writer_busy_s, 3),
                "hung": wd.withheld,
            },
        }


async def run_until_signal(agent: Agent) -> None:
    """Run the agent; SIGTERM and SIGINT ask it to flush and exit."""
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, agent.stop)
    await agent.run()
