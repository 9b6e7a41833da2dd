"""What a reload changes: the running configuration against the file's, as a plan.

Pure (no I/O, no asyncio): agent.reload applies the plan. A sensor is a *transport* (what
its poller is built from: its modbus block, its bus, its register profile, its cadence and
channels) plus an *analysis* (its asset and that asset's settings, its fault delay), keyed
by the sensor's id. A changed transport restarts the sensor's poller; a changed analysis
alone leaves the poller running and updates the analysis in place (agent.analysis.monitor
`reconfigure` says what keeps its learned baseline). A sensor of another kind (MQTT) is one
more branch in `_transport`.

Some changes cannot be applied to a running agent: a new gateway id (it numbers the alerts)
or store path (the store holds every buffered alert) refuses the whole reload; a changed
control socket is listed as needing a restart while the rest applies.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from agent.analysis.basis import Resolved, basis_change, basis_of, source_digests
from agent.config import Config, Sensor
from drivers.payloads import DecoderLibrary
from drivers.profiles import ProfileLibrary

RESTART = "systemctl restart edge-agent"


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """A sensor as a reload compares it."""

    transport: Hashable
    analysis: Hashable


def _transport(
    config: Config, s: Sensor, library: ProfileLibrary, decoders: DecoderLibrary | None
) -> Hashable:
    """What a sensor's poller is built from (agent.sources). The one branch per kind."""
    if s.mqtt is not None:  # agent.mqtt_inputs: its subscription, its broker, its channels,
        # its decoder as its file now says (one edited under the same name is another)
        decoder = _decoder(decoders, s.mqtt.decoder)
        broker = config.broker(s.mqtt.broker)
        return ("mqtt", s.mqtt, broker, s.channels, config.decoders_dir, decoder)
    m = s.modbus
    assert m is not None
    bus = config.bus(m.bus) if m.bus is not None else None
    return ("modbus", m, bus, library.get(m.profile), s.poll_interval_s, s.channels)


def _decoder(decoders: DecoderLibrary | None, name: str) -> Hashable:
    if decoders is None:
        return None
    try:
        return decoders.get(name)
    except ValueError:  # unknown (DecoderError): `check` refused the file before this
        return name


def sensor_specs(
    config: Config, library: ProfileLibrary, decoders: DecoderLibrary | None = None
) -> dict[str, SensorSpec]:
    """Every configured sensor's spec, by id (decoders: the payload decoders as loaded
    for this configuration; None: MQTT sensors compared by their settings alone)."""
    return {
        s.id: SensorSpec(
            _transport(config, s, library, decoders),
            (
                s.asset,
                config.asset(s.asset),
                s.channels,
                s.bad_values_fault_s,
                config.stuck_rule(s),
            ),
        )
        for s in config.sensors
    }


def _uplink_specs(config: Config) -> dict[str, Hashable]:
    """Each uplink's settings by name (a CMMS uplink also depends on the assets and site);
    the name itself is the key, not a setting (`name: http` given to the unnamed http
    uplink changes nothing)."""
    out: dict[str, Hashable] = {}
    for name, u in zip(config.uplink_names(), config.uplinks, strict=True):
        extra = (config.assets, config.gateway.site) if u.cmms is not None else None
        out[name] = (u.model_copy(update={"name": None}), extra)
    return out


def gone_change(name: str, renamed_to: str | None, left: int | None = None) -> str:
    """The change line of an uplink no longer configured under `name` (removed, or its
    settings now under another name); `left`: the items it had not received, when known.

    What the store does (agent.store._routing.register): delivery state is kept by name;
    the rows of an uplink no longer configured stay, and an uplink configured again under
    that name resumes what it still lacks; meanwhile they hold nothing back, so items every
    configured uplink has are complete, the first the disk budget prunes.
    """
    what = (
        "what it had not received stays"
        if left is None
        else f"the {left} item(s) it had not received stay"
    )
    kept = (
        f"{what} in the store under the name {name}, sent when an "
        f"uplink named {name} is configured again (meanwhile they hold nothing back: once "
        "every configured uplink has them, the disk budget may prune them)"
    )
    if renamed_to is None:
        return f"uplink {name} removed: {kept}"
    return (
        f"uplink {name} renamed {renamed_to}: delivery state is kept by name, so "
        f"{renamed_to} starts as a new uplink, sent every stored item not yet delivered "
        f"everywhere (some perhaps again); {kept}"
    )


@dataclass(slots=True)
class ReloadPlan:
    """The differences between the running configuration and the new one.

    Attributes:
        refused: changes that need a restart and make the whole reload refused.
        needs_restart: changes not applied (the rest is), each with why.
        start: sensors to start (added, or restarted with a changed transport).
        stop: sensors to stop (removed, or restarted).
        reanalyse: sensors whose poller keeps running while their analysis changes.
        buses_retired: shared buses to close (removed or rebuilt) after their sensors stop.
        uplinks_stop / uplinks_start: uplinks to stop and (re)build, by name.
        uplinks_gone: uplinks no longer configured under their name -> the name their
            settings now have (renamed), or None (removed).
        health: the health endpoint's settings changed (it is rebound).
        mqtt: an MQTT setting changed: the broker links are rebuilt as a whole (a
            persistent session keeps the QoS 1 messages of the moment between).
        changes: one human line per change, for the log and the reload command.
    """

    refused: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)
    start: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    reanalyse: list[str] = field(default_factory=list)
    buses_retired: list[str] = field(default_factory=list)
    uplinks_stop: list[str] = field(default_factory=list)
    uplinks_start: list[str] = field(default_factory=list)
    uplinks_gone: dict[str, str | None] = field(default_factory=dict)
    health: bool = False
    mqtt: bool = False
    changes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.changes or self.needs_restart)

    def count_left(self, left: Mapping[str, int]) -> None:
        """Say how many items each uplink no longer configured had not received (the
        store's count as it unregistered them: agent.store.Outbox.register_uplinks)."""
        for name, to in self.uplinks_gone.items():
            if name in left:
                at = self.changes.index(gone_change(name, to))
                self.changes[at] = gone_change(name, to, left[name])


def plan_reload(
    old: Config,
    new: Config,
    old_library: ProfileLibrary,
    new_library: ProfileLibrary,
    *,
    old_decoders: DecoderLibrary | None = None,
    new_decoders: DecoderLibrary | None = None,
    resolved: Resolved | None = None,
) -> ReloadPlan:
    """The plan that turns the running `old` configuration into `new`; the decoders: each
    side's payload decoders (a decoder file edited in place rebuilds the MQTT links);
    resolved: the Modbus host names as looked up now (agent.host_names)."""
    plan = ReloadPlan()
    if new.gateway.id != old.gateway.id:
        plan.refused.append(
            f"gateway.id {old.gateway.id} -> {new.gateway.id}: alert ids are numbered by "
            f"it; a new id needs a restart ({RESTART})"
        )
    if new.store.path.absolute() != old.store.path.absolute():
        plan.refused.append(
            f"store.path {old.store.path} -> {new.store.path}: the store holds every "
            f"buffered alert and stays open while the agent runs; a new path needs a restart "
            f"({RESTART})"
        )
    if plan.refused:
        return plan
    _plan_buses(old, new, plan)
    _plan_sensors(
        old, new, (old_library, old_decoders), (new_library, new_decoders), plan, resolved
    )
    _plan_uplinks(old, new, plan)
    _plan_rest(old, new, plan)
    return plan


def _plan_buses(old: Config, new: Config, plan: ReloadPlan) -> None:
    before = {b.id: b for b in old.buses}
    after = {b.id: b for b in new.buses}
    for bus_id, b in before.items():
        if bus_id not in after:
            plan.buses_retired.append(bus_id)
            plan.changes.append(f"bus {bus_id} removed")
        elif after[bus_id] != b:
            plan.buses_retired.append(bus_id)
            plan.changes.append(f"bus {bus_id} rebuilt (its settings changed), with its sensors")
    plan.changes += [f"bus {i} added" for i in after if i not in before]


def _plan_sensors(
    old: Config,
    new: Config,
    old_sources: tuple[ProfileLibrary, DecoderLibrary | None],
    new_sources: tuple[ProfileLibrary, DecoderLibrary | None],
    plan: ReloadPlan,
    resolved: Resolved | None = None,
) -> None:
    before = sensor_specs(old, *old_sources)
    after = sensor_specs(new, *new_sources)
    digests = (source_digests(old, *old_sources), source_digests(new, *new_sources))
    mqtt_ids = {s.id for s in new.sensors if s.mqtt is not None}
    for sid, spec in after.items():
        was = before.get(sid)
        if was is None:
            plan.start.append(sid)
            plan.changes.append(f"sensor {sid} added")
        elif was.transport != spec.transport:
            plan.stop.append(sid)
            plan.start.append(sid)
            plan.mqtt |= sid in mqtt_ids  # its link is rebuilt (its decoder file edited)
            plan.changes.append(
                f"sensor {sid} restarted: how it is read changed; "
                + _analysis_change(old, new, sid, digests, resolved)
            )
        elif was.analysis != spec.analysis:
            plan.reanalyse.append(sid)
            plan.changes.append(
                f"sensor {sid} polls on; " + _analysis_change(old, new, sid, digests, resolved)
            )
    for sid in before:
        if sid not in after:
            plan.stop.append(sid)
            plan.changes.append(f"sensor {sid} removed")


def _analysis_change(
    old: Config, new: Config, sid: str, digests: tuple[dict[str, str], dict[str, str]],
    resolved: Resolved | None = None,
) -> str:  # fmt: skip
    """What happens to a kept sensor's analysis state (agent.analysis.monitor.reconfigure);
    digests: each side's source_digests."""
    s_before = next(s for s in old.sensors if s.id == sid)
    s_after = next(s for s in new.sensors if s.id == sid)
    before, after = old.asset(s_before.asset), new.asset(s_after.asset)
    if before.id != after.id:
        return f"it moved from asset {before.id} to {after.id} (its state there is kept aside)"
    change = basis_change(
        basis_of(before, s_before, digests[0].get(sid)),
        basis_of(after, s_after, digests[1].get(sid)),
        resolved,
    )
    if change.relearn is not None:
        alerts = "severity and trend" if change.readings else "trend"
        return (
            f"its baseline on asset {after.id} is relearned ({change.relearn}); its open "
            f"{alerts} alerts are cleared by the reload, saying why"
        )
    if change.history:
        return (
            f"its time-to-failure history on asset {after.id} starts again "
            f"({'; '.join(change.history)}); its learned baseline and onset are kept"
        )
    if before == after:
        return "its analysis state is kept"
    return f"asset {after.id}'s new settings apply, its learned baseline is kept"


def _plan_uplinks(old: Config, new: Config, plan: ReloadPlan) -> None:
    before, after = _uplink_specs(old), _uplink_specs(new)
    added = [name for name in after if name not in before]
    for name in before:
        if name not in after:
            # Its settings under a new name: a rename (the store sees a new uplink).
            to = next((n for n in added if after[n] == before[name]), None)
            if to is not None:
                added.remove(to)
            plan.uplinks_gone[name] = to
    renamed = {to for to in plan.uplinks_gone.values() if to is not None}
    for name, spec in after.items():
        if name not in before:
            plan.uplinks_start.append(name)
            if name not in renamed:
                plan.changes.append(
                    f"uplink {name} added: it is sent every stored item not yet delivered "
                    "everywhere (and what it lacked if it ran under this name before)"
                )
        elif before[name] != spec:
            plan.uplinks_stop.append(name)
            plan.uplinks_start.append(name)
            plan.changes.append(
                f"uplink {name} rebuilt: its settings or secret changed (its delivery "
                "position in the store is kept)"
            )
    for name, to in plan.uplinks_gone.items():
        plan.uplinks_stop.append(name)
        plan.changes.append(gone_change(name, to))


def mqtt_spec(config: Config) -> Hashable:
    """What the MQTT inputs are built from (agent.mqtt_inputs.build_mqtt)."""
    return (
        config.gateway.id,
        config.mqtt,
        config.decoders_dir,
        tuple((s.id, s.mqtt, s.channels) for s in config.sensors if s.mqtt is not None),
    )


def _plan_rest(old: Config, new: Config, plan: ReloadPlan) -> None:
    if mqtt_spec(new) != mqtt_spec(old):
        plan.mqtt = True
        if new.mqtt != old.mqtt:
            plan.changes.append("MQTT brokers changed: the broker links are rebuilt")
    if new.health != old.health:
        plan.health = True
        h = new.health
        plan.changes.append(f"health endpoint moves to {h.host}:{h.port}")
    if new.control != old.control:
        plan.needs_restart.append(
            f"control socket ({new.control.socket}, group {new.control.group}): the socket "
            f"this request came through stays as it is until a restart ({RESTART})"
        )
    if new.store.max_bytes != old.store.max_bytes:
        plan.changes.append(f"store budget {old.store.max_bytes} -> {new.store.max_bytes} bytes")
    if new.sensor_faults != old.sensor_faults:
        e = new.sensor_faults.endpoint_silent_s
        plan.changes.append(f"an endpoint's fault is raised after {e:g} s of silence")
    if new.summaries != old.summaries:
        plan.changes.append("feature summaries settings changed (open windows start again)")
    if new.gateway.site != old.gateway.site:
        plan.changes.append(f"gateway.site {old.gateway.site} -> {new.gateway.site}")
    changed_assets = [
        a.id for a in new.assets if a.id in {x.id for x in old.assets} and a != old.asset(a.id)
    ]
    plan.changes += [f"asset {a} settings changed" for a in changed_assets]
