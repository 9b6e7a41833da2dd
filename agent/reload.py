"""Reload without restart: SIGHUP or `edge-agent reload` re-read the configuration file.

The file is validated exactly as `edge-agent check` does (profile library, cross
references); an invalid file, or a change a running agent cannot take (gateway id, store
path: agent.reload_plan), is refused with the reasons and the running configuration stays
in force, whole. A valid file is applied by difference: untouched sensors poll on with
their analysis state, removed and changed ones stop (bounded, as at shutdown), added and
changed ones start; uplinks are rebuilt by name, each keeping its delivery position in the
store (a removed or renamed one leaves what it had not received there, under its name);
the store, its outbox and the held writes are never touched. Reloads run one at a time;
each is logged with what changed and who asked, and counted in /metrics.

A reload and a shutdown never overlap: one that arrives once stopping has begun, or finds
it begun before it changes anything, is refused ("the agent is stopping"); one already
applying its changes is waited for by the shutdown (`settle`), so everything it starts is
there for the shutdown to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.analysis.basis import Resolved, source_digests
from agent.config import CheckResult, Config, check_file
from agent.control import Handler, Peer, Refused
from agent.host_names import resolve_names
from agent.mqtt_inputs import MqttInputs, build_mqtt
from agent.records import format_ts
from agent.reload_plan import ReloadPlan, plan_reload
from agent.sources import Sources, build_sources, planned_utilisation
from agent.store import StoreError, uplink_carries
from agent.uplink import Delivery, UplinkStatus, build_uplinks
from drivers.payloads import DecoderLibrary
from drivers.profiles import ProfileLibrary
from drivers.reading import utc_now

if TYPE_CHECKING:
    from agent.runtime import Agent

log = logging.getLogger(__name__)

OP = "reload"
UPLINK_STOP_S = 5.0  # a send under way may finish this long before its loop is cancelled
STOPPING = "the agent is stopping; it reads the file when it starts"
# Counters a rebuilt uplink carries over, so /metrics counters do not drop at a reload.
_KEPT_COUNTERS = tuple(f.name for f in fields(UplinkStatus) if f.name.endswith("_total"))


@dataclass(slots=True)
class ReloadCounters:
    """Reloads for /healthz and /metrics."""

    reloads_total: int = 0
    reload_failures_total: int = 0
    last_reload_at: str | None = None
    last_reload_ok: bool | None = None


class ReloadRefused(Exception):
    """The reload changed nothing; the message says why (and what to change)."""


@dataclass(frozen=True, slots=True)
class _Prepared:
    """Everything a reload starts, built before anything changes (construction only)."""

    sources: Sources
    deliveries: dict[str, Delivery]
    mqtt: MqttInputs | None = None  # the rebuilt MQTT inputs, when an MQTT setting changed


@dataclass(frozen=True, slots=True)
class _Files:
    """The data files a configuration names, read with it."""

    profiles: ProfileLibrary
    decoders: DecoderLibrary


def _read(path: Path) -> tuple[CheckResult, _Files | None]:
    """The file checked as `edge-agent check` does, and its register profiles and payload
    decoders (a thread: reading files must not block the event loop)."""
    result = check_file(path)
    if result.config is None:
        return result, None
    config = result.config
    return result, _Files(
        ProfileLibrary.load(config.profiles_dir), DecoderLibrary.load(config.decoders_dir)
    )


class Reloader:
    """Reloads one agent from its configuration file, one reload at a time.

    Args:
        agent: the running agent.
        path: the configuration file the agent was started with.
    """

    def __init__(self, agent: Agent, path: Path) -> None:
        self._agent = agent
        self.path = path
        self.counters = ReloadCounters()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._signal_waiting = False
        self._closed = False

    def on_signal(self) -> None:
        """SIGHUP: reload in the background (the outcome goes to the log). Signals that
        arrive while one already waits its turn are that one: it reads the newest file."""
        if self._closed:
            log.warning("SIGHUP ignored: %s", STOPPING)
            return
        if self._signal_waiting:
            return
        self._signal_waiting = True
        task = asyncio.get_running_loop().create_task(self._quiet("SIGHUP"), name="reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _quiet(self, requester: str) -> None:
        with contextlib.suppress(ReloadRefused):  # logged by reload()
            await self.reload(requester, signalled=True)

    def control_handler(self) -> Handler:
        """The control-socket operation `reload` (args: {"config": the client's file})."""

        async def handle(args: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
            given = args.get("config")
            if not isinstance(given, str) or not given:
                raise Refused('expected {"config": "<path of the configuration file>"}')
            # Resolved now, not at start: a deployment that swaps the link the agent was
            # started with names the new release, which is what a reload reads.
            real = await asyncio.to_thread(os.path.realpath, self.path)
            self._agent.identity = {**self._agent.identity, "config": real}
            if await asyncio.to_thread(os.path.realpath, given) != real:
                raise Refused(
                    f"this agent runs with {real}, not {given}: edit that file "
                    "and reload it (a different file needs a restart with -c)"
                )
            who = await asyncio.to_thread(peer.describe, "control socket")  # NSS may block
            try:
                return await self.reload(_who(who))
            except ReloadRefused as exc:
                raise Refused(str(exc)) from None

        return handle

    async def reload(self, requester: str, *, signalled: bool = False) -> dict[str, Any]:
        """Re-read the file and apply it; what changed.

        Raises:
            ReloadRefused: nothing was changed (invalid file, or a change needing a restart).
        """
        log.info("reload requested by %s", requester)
        async with self._lock:
            await self._agent.started_or_stopping()
            if signalled:
                self._signal_waiting = False  # from here a new signal reads the file again
            if self._agent.stopping:
                self._count(ok=False)
                log.warning("reload refused (requested by %s): %s", requester, STOPPING)
                raise ReloadRefused(STOPPING)
            notifier = self._agent.watchdog.notifier
            notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                outcome = await self._reload(requester)
            except ReloadRefused as exc:
                self._count(ok=False)
                log.error(
                    "reload refused (requested by %s); the running configuration stays: %s",
                    requester,
                    exc,
                    extra={"requested_by": requester},
                )
                raise
            finally:
                # Not READY once stopping began: systemd must go on seeing a stop.
                notifier.notify("STOPPING=1" if self._agent.stopping else "READY=1")
            self._count(ok=True)
            log.info(
                "configuration reloaded from %s, requested by %s: %s%s",
                self.path,
                requester,
                "; ".join(outcome["changes"]) or "nothing changed",
                "".join(f"; NOT APPLIED: {n}" for n in outcome["needs_restart"]),
                extra={"requested_by": requester, "changes": outcome["changes"]},
            )
            return outcome

    async def settle(self, *, timeout_s: float) -> bool:
        """Shutdown: wait until no reload is applying changes (a reload that has not yet
        changed anything is refused as it notices the stop). False when one still ran
        after timeout_s (it then starts nothing: sensors and links are closed)."""
        try:
            async with asyncio.timeout(timeout_s), self._lock:
                return True
        except TimeoutError:
            log.error("a reload still ran %.0f s after stopping began; stopping anyway", timeout_s)
            return False

    async def close(self, *, timeout_s: float) -> None:
        """The agent stopped: SIGHUP is ignored from here on; reloads a signal started end
        (each is refused at once now), bounded."""
        self._closed = True
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
        for task in list(self._tasks):
            task.cancel()

    def _count(self, *, ok: bool) -> None:
        c = self.counters
        if ok:
            c.reloads_total += 1
        else:
            c.reload_failures_total += 1
        c.last_reload_at, c.last_reload_ok = format_ts(utc_now()), ok

    async def _reload(self, requester: str) -> dict[str, Any]:
        agent = self._agent
        result, files = await asyncio.to_thread(_read, self.path)
        if agent.stopping:  # a stop began while the file was read: change nothing
            raise ReloadRefused(STOPPING)
        if result.config is None or files is None:
            issues = "\n".join(str(i) for i in result.issues)
            raise ReloadRefused(f"{self.path} is not valid (as `edge-agent check` says):\n{issues}")
        new = result.config
        assert agent.monitor is not None
        # Bounded (RESOLVE_S): a device now written by its address, once by its name (or
        # the reverse), is the same device when the name resolves to it.
        resolved = await resolve_names(agent.monitor.host_names(new))
        if agent.stopping:
            raise ReloadRefused(STOPPING)
        plan = plan_reload(
            agent.config,
            new,
            agent.library,
            files.profiles,
            old_decoders=agent.decoders,
            new_decoders=files.decoders,
            resolved=resolved,
        )
        if plan.refused:
            raise ReloadRefused("; ".join(plan.refused))
        before = agent.config
        # The step that can fail (an unwritable store); what removed uplinks leave behind.
        plan.count_left(await self._register_uplinks(new))
        try:
            prepared = self._prepare(new, files, plan)
        except Exception as exc:  # a surprise (a bug) must leave the agent as it was
            log.exception("reload: building the new sensors or uplinks failed")
            with contextlib.suppress(ReloadRefused):
                await self._register_uplinks(before)
            raise ReloadRefused(f"cannot build what {self.path} describes: {exc}") from exc
        if agent.stopping:  # a stop began meanwhile: nothing has changed yet; leave it so
            with contextlib.suppress(ReloadRefused):
                await self._register_uplinks(before)
            raise ReloadRefused(STOPPING)
        # From here to the first await in _apply nothing yields: a shutdown that begins
        # later finds this reload applying and waits for it (settle).
        needs = list(plan.needs_restart)
        needs += await self._apply(new, files, plan, prepared, resolved)
        if agent.queue_size < agent.wanted_queue_size(new):
            needs.append(
                f"analysis queue: {agent.queue_size} readings now, "
                f"{agent.wanted_queue_size(new)} for these sensors after a restart"
            )
        return {"config": str(self.path), "changes": plan.changes, "needs_restart": needs,
                "requested_by": requester}  # fmt: skip

    def _prepare(self, new: Config, files: _Files, plan: ReloadPlan) -> _Prepared:
        agent, library = self._agent, files.profiles
        kept = {i: b for i, b in agent.sensors.shared.items() if i not in plan.buses_retired}
        sources = build_sources(
            new,
            library,
            agent.sink,
            only=set(plan.start),
            shared=kept,
            peers=agent.sensors.peers,
            lines=agent.sensors.lines,
        )
        built = {d.name: d for d in build_uplinks(new, agent.outbox)}
        mqtt = build_mqtt(new, agent.sink, files.decoders, agent.sessions) if plan.mqtt else None
        return _Prepared(sources, {n: built[n] for n in plan.uplinks_start}, mqtt)

    async def _register_uplinks(self, new: Config) -> dict[str, int]:
        """The store's uplinks as `new` names them (refused when the store cannot now);
        for each uplink unregistered, the items it had not received (kept under its name)."""
        outbox = self._agent.outbox
        names = new.uplink_names()
        carries = uplink_carries(new)
        if names == outbox.uplinks and carries == outbox.carries:
            return {}
        try:
            return await outbox.register_uplinks(names, carries)
        except StoreError as exc:
            raise ReloadRefused(f"the store cannot register the uplinks now: {exc}") from exc

    async def _apply(
        self, new: Config, files: _Files, plan: ReloadPlan, prepared: _Prepared,
        resolved: Resolved,
    ) -> list[str]:  # fmt: skip
        """Apply a checked plan; what could not be (a health port taken, the agent stopping)."""
        agent = self._agent
        assert agent.monitor is not None and agent.faults is not None
        # Analysis first, in the same loop step as the removed pollers leave (no await in
        # between): from here no reading of a removed sensor is analysed.
        # A removed or moved sensor's open alerts are closed with the state that says so.
        library = files.profiles
        digests = source_digests(new, library, files.decoders)
        agent.persist(agent.monitor.reconfigure(new, digests=digests, resolved=resolved))
        agent.persist(agent.faults.reconfigure(new))
        agent.feeds.reconfigure(new)
        agent.config, agent.library, agent.decoders = new, library, files.decoders
        sensors = agent.sensors
        await sensors.stop(plan.stop, timeout_s=agent.poller_stop_s)
        sensors.retire_buses(plan.buses_retired)  # a serial port is free before it reopens
        for bus_cfg in new.buses:
            bus = sensors.shared.get(bus_cfg.id)
            if bus is not None:
                bus.planned_utilisation = planned_utilisation(new, bus_cfg, library)
        sensors.add_buses(prepared.sources.buses)
        problems = []
        if agent.stopping:  # the shutdown stops everything next: start nothing now
            problems += [f"sensor {p.sensor_id}: {STOPPING}" for p in prepared.sources.pollers]
        else:
            sensors.start(prepared.sources.pollers)
        if prepared.mqtt is not None:
            await agent.mqtt.replace(prepared.mqtt, timeout_s=agent.poller_stop_s)
        # Old uplinks end side by side: stopping is bounded by one UPLINK_STOP_S, not by n.
        leaving = [(n, agent.deliveries.pop(n)) for n in plan.uplinks_stop if n in agent.deliveries]
        await asyncio.gather(*(d.stop(t, timeout_s=UPLINK_STOP_S) for _, (d, t) in leaving))
        for name, (delivery, _) in leaving:
            if name in prepared.deliveries:
                _carry_counters(delivery, prepared.deliveries[name])
        if agent.stopping:  # its task group takes no new task: the uplinks start next time
            problems += [f"uplink {n}: {STOPPING}" for n in prepared.deliveries]
        else:
            for delivery in prepared.deliveries.values():
                agent.start_uplink(delivery)
        agent.outbox.max_bytes = new.store.max_bytes
        if plan.health and not agent.stopping:
            error = await agent.rebind_health()
            if error is not None:
                problems.append(
                    f"health endpoint not served: {error}; the agent takes the port as soon as "
                    "it is free (or fix health.* and reload)"
                )
        agent.expire_status()
        return problems


def _carry_counters(old: Delivery, new: Delivery) -> None:
    for name in _KEPT_COUNTERS:
        setattr(new.status, name, getattr(old.status, name))


def _who(described: Mapping[str, Any]) -> str:
    """A requester in one phrase: uid 1000 (ana), pid 4242, via control socket."""
    user = f" ({described['user']})" if described.get("user") else ""
    return f"uid {described['uid']}{user}, pid {described['pid']}, via {described['via']}"
