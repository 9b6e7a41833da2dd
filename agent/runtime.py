"""The agent's lifetime: one TaskGroup that owns every task (pollers, analysis, uplinks).

sensors -> pollers -> bounded reading queue -> monitor -> store (fsync) -> uplinks
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.analysis.monitor import Monitor, Update
from agent.config import Config
from agent.health import HealthServer, Snapshot
from agent.sdnotify import SystemdNotifier
from agent.sensor_faults import SensorFaultTracker, SensorHealth
from agent.store import Outbox, StoreError
from agent.uplink import HttpUplink
from drivers.modbus import ModbusTcpPoller, silence_pymodbus_logging
from drivers.reading import Reading, utc_now

log = logging.getLogger(__name__)

READING_QUEUE_SIZE = 1000
# Updates (drafts + state) held in memory while the store cannot be written (disk full).
UNSAVED_LIMIT = 10_000
STORE_RETRY_MAX_S = 30.0
# Failed polls in a row that open a poller's breaker and raise a sensor_fault alert.
BREAKER_FAILURES = 3
SENSOR_WATCH_INTERVAL_S = 1.0
SHUTDOWN_DRAIN_S = 10.0  # well inside systemd's TimeoutStopSec=30


@dataclass(slots=True)
class PipelineCounters:
    readings_total: int = 0
    readings_dropped_total: int = 0
    alerts_total: int = 0
    alerts_lost_total: int = 0
    store_errors_total: int = 0
    analysis_errors_total: int = 0


class StoreInUseError(RuntimeError):
    """Another agent process already runs on this store."""


def lock_path(store_path: Path) -> Path:
    """The lock file a running agent holds next to its store."""
    return store_path.with_name(store_path.name + ".lock")


@contextlib.contextmanager
def store_lock(store_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the store for this process's lifetime.

    Two agents writing one store would each number alerts and deliver the other's; the lock
    also tells `edge-agent maintenance` whether an agent is running.

    Raises:
        StoreInUseError: another process holds the lock.
    """
    path = lock_path(store_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StoreInUseError(
                f"another edge-agent is running on {store_path} (lock {path} is held)"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Agent:
    """Builds the pipeline from a configuration and runs it until `stop()`.

    Args:
        config: validated configuration.
        on_records: called with the records the store committed (for the demo display).
    """

    def __init__(
        self, config: Config, *, on_records: Callable[[list[dict[str, Any]]], None] | None = None
    ) -> None:
        self.config = config
        self.counters = PipelineCounters()
        self.outbox = Outbox(
            config.store.path, gateway_id=config.gateway.id, max_bytes=config.store.max_bytes
        )
        self.monitor: Monitor | None = None
        self.faults: SensorFaultTracker | None = None
        self._persist_lock = asyncio.Lock()  # the analysis and sensor watch both persist
        self._queue: asyncio.Queue[Reading] = asyncio.Queue(maxsize=READING_QUEUE_SIZE)
        self._unsaved: deque[Update] = deque()
        self._store_retry_at = 0.0
        self._store_backoff_s = 0.5
        self._on_records = on_records
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
        self.uplinks = [
            HttpUplink(u.http, self.outbox, name=f"http[{i}]") for i, u in enumerate(config.uplinks)
        ]
        self.health: HealthServer | None = None
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
        notifier = SystemdNotifier()
        silence_pymodbus_logging()  # our pollers log once per failure episode, with context
        with store_lock(self.config.store.path):
            await self._run(notifier)
        log.info("agent stopped cleanly")

    async def _run(self, notifier: SystemdNotifier) -> None:
        async with self.outbox:
            state = await self.outbox.load_state()
            self.monitor = Monitor(self.config, state=state)
            self.faults = SensorFaultTracker(
                self.config, state=state, breaker_failures=BREAKER_FAILURES
            )
            hc = self.config.health
            async with HealthServer(
                self.snapshot, host=hc.host, port=hc.port, maintenance=self.maintenance
            ) as health:
                self.health = health
                async with asyncio.TaskGroup() as tg:
                    polls = [
                        tg.create_task(p.run(), name=f"poll[{p.sensor_id}]") for p in self.pollers
                    ]
                    analysis = tg.create_task(self._analyse(), name="analysis")
                    watch = tg.create_task(self._watch_sensors(), name="sensor-watch")
                    ups = [tg.create_task(u.run(), name=f"uplink[{u.name}]") for u in self.uplinks]
                    watchdog = tg.create_task(self._watchdog(notifier), name="watchdog")
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
                    for t in [*polls, watch]:
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
                    analysis.cancel()
                    async with self._persist_lock:
                        await self._flush_unsaved(final=True)
                    for t in [*ups, watchdog]:
                        t.cancel()

    async def _watchdog(self, notifier: SystemdNotifier) -> None:
        if notifier.watchdog_interval_s is None:
            return
        while True:
            notifier.notify("WATCHDOG=1")
            await asyncio.sleep(notifier.watchdog_interval_s)

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
                if update.drafts or update.state or self._unsaved:
                    await self._persist(update)
            finally:
                self._queue.task_done()

    async def maintenance(self, asset_id: str, note: str) -> list[dict[str, Any]]:
        """Record a repair on an asset: reset its baselines and trends, store the event.

        Raises:
            KeyError: unknown asset.
            StoreError: the store is unwritable now; the event is held and stored later.
        """
        assert self.monitor is not None
        async with self._persist_lock:
            update = self.monitor.maintenance(asset_id, utc_now(), note)
            try:
                records = await self.outbox.append(update.drafts, update.state)
            except StoreError:
                self._unsaved.append(update)  # the reset happened: keep the record, retry
                raise
        self.counters.alerts_total += len(records)
        log.info("maintenance on %s recorded as %s", asset_id, records[0]["alert_id"])
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
                if update.drafts or update.state:
                    await self._persist(update)

    async def _persist(self, update: Update) -> None:
        async with self._persist_lock:
            await self._persist_locked(update)

    async def _persist_locked(self, update: Update) -> None:
        if update.drafts or update.state:
            if len(self._unsaved) >= UNSAVED_LIMIT:
                lost = self._unsaved.popleft()
                self.counters.alerts_lost_total += len(lost.drafts)
                log.error(
                    "store unwritable and %d updates held: dropping the oldest (%d alerts)",
                    UNSAVED_LIMIT,
                    len(lost.drafts),
                )
            self._unsaved.append(update)
        await self._flush_unsaved()

    async def _flush_unsaved(self, *, final: bool = False) -> None:
        """Write held updates in order; on a store error keep them and retry later."""
        if not final and time.monotonic() < self._store_retry_at:
            return
        while self._unsaved:
            update = self._unsaved[0]
            try:
                records = await self.outbox.append(update.drafts, update.state)
            except StoreError as exc:
                self.counters.store_errors_total += 1
                self._store_retry_at = time.monotonic() + self._store_backoff_s * random.uniform(
                    0.5, 1.0
                )
                self._store_backoff_s = min(self._store_backoff_s * 2, STORE_RETRY_MAX_S)
                log.error(
                    "store write failed (%s); %d updates held in memory, retrying",
                    exc,
                    len(self._unsaved),
                )
                if final:
                    self.counters.alerts_lost_total += sum(len(u.drafts) for u in self._unsaved)
                    log.critical(
                        "shutting down with %d unsaved alerts",
                        sum(len(u.drafts) for u in self._unsaved),
                    )
                return
            self._unsaved.popleft()
            self._store_backoff_s = 0.5
            self.counters.alerts_total += len(records)
            for r in records:
                log.info(
                    "alert %s %s %s %s/%s: %s",
                    r["alert_id"],
                    r["kind"],
                    r["state"],
                    r["asset"]["id"],
                    r["sensor"]["channel"],
                    (r.get("severity") or {}).get("zone"),
                )
            if records and self._on_records is not None:
                self._on_records(records)

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
            }
            for v in (self.monitor.views() if self.monitor else [])
        ]
        uplinks = [{"name": u.name, **asdict(u.status)} for u in self.uplinks]
        try:
            store: dict[str, Any] = asdict(await self.outbox.stats())
        except StoreError as exc:
            store = {"error": str(exc)}
        degraded = (
            any(s["state"] not in ("ok", "starting") for s in sensors)
            or any(u.get("consecutive_failures", 0) > 0 for u in uplinks)
            or bool(self._unsaved)
            or "error" in store
        )
        return {
            "gateway": self.config.gateway.id,
            "status": "degraded" if degraded else "ok",
            "uptime_s": round(now_mono - self._started, 3),
            "sensors": sensors,
            "channels": channels,
            "uplinks": uplinks,
            "store": store,
            "pipeline": {
                **asdict(self.counters),
                "unsaved_updates": len(self._unsaved),
                "queue_depth": self._queue.qsize(),
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
