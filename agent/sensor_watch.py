"""The sensor watch: once a second, every sensor's state into the sensor_fault tracker.

It raises and clears sensor_fault alerts (agent.sensor_faults): breakers that open and
close, sensors that answer only implausible values for longer than their
bad_values_fault_s, and MQTT sensors silent for longer than their stale_after_s. It reads
the sensors as they run now, so sensors a reload added or removed are watched or not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime

from agent.analysis.monitor import Update
from agent.mqtt_inputs import RunningMqtt
from agent.sensor_faults import EndpointHealth, SensorFaultTracker, SensorHealth
from agent.sensor_tasks import RunningSensors
from drivers.modbus import NETWORK, ModbusPoller, Peers
from drivers.mqtt import BrokerLink, MqttSensor
from drivers.reading import utc_now

SENSOR_WATCH_INTERVAL_S = 1.0


async def watch_sensors(
    faults: SensorFaultTracker,
    sensors: RunningSensors,
    mqtt: RunningMqtt,
    persist: Callable[[Update], None],
) -> None:
    """Feed the tracker every SENSOR_WATCH_INTERVAL_S until cancelled.

    Args:
        faults: the tracker (a reload reconfigures it in place).
        sensors: the running pollers.
        mqtt: the running MQTT links and sensors.
        persist: holds an update for the store writer (no I/O).
    """
    while True:
        await asyncio.sleep(SENSOR_WATCH_INTERVAL_S)
        now = utc_now()
        links = {link.id: link for link in mqtt.links}
        healths = [_poller_health(p) for p in list(sensors.pollers.values())]
        wait_s = faults.endpoint_silent_s
        healths += [_mqtt_health(m, links.get(m.broker), wait_s) for m in mqtt.sensors]
        for health in healths:
            _step(faults, health, now, persist)
        places = {sid: _place(p) for sid, p in sensors.pollers.items()}
        hosts = [*_hosts(sensors.peers.values(), places), *_brokers(mqtt)]
        for health in hosts:
            update = faults.update_endpoint(health, now)
            if update.drafts or update.state:
                persist(update)
        update = faults.close_unwatched({h.key for h in hosts}, now)
        if update.drafts or update.state:
            persist(update)


def _step(
    faults: SensorFaultTracker,
    health: SensorHealth,
    now: datetime,
    persist: Callable[[Update], None],
) -> None:
    update = faults.update(health, now)
    if update.drafts or update.state:
        persist(update)


def _poller_health(p: ModbusPoller) -> SensorHealth:
    return SensorHealth(
        p.sensor_id,
        p.state,
        p.consecutive_failures,
        p.last_error,
        p.last_ok_at,
        p.bad_for_s,
        p.last_bad,
        with_endpoint=p.with_endpoint,
        undecided_for_s=p.undecided_for_s,
        values_undecided=p.values_undecided,
    )


def _place(p: ModbusPoller) -> tuple[str, str]:
    """A device's endpoint (host:port, or bus) and host."""
    return p.bus.address, getattr(p.bus.links[0], "host", p.bus.address)


def _hosts(peers: Iterable[Peers], places: Mapping[str, tuple[str, str]]) -> list[EndpointHealth]:
    """The groups that decide outages, by host: a host's silent endpoints are one fault;
    the gateway's TCP network first, silent when every TCP device's group is (places:
    each device's endpoint and host, by sensor id, to name what is silent)."""
    peers = list(peers)
    judges = {id(j): j for p in peers if p.level == "endpoint" and (j := p.judge) is not None}
    by_host: dict[str, list[Peers]] = {}
    for p in peers:
        if p.level != "network" and (id(p) in judges or p.outage is not None):
            by_host.setdefault(p.host, []).append(p)
    network = _network(peers, places)
    out = [] if network is None else [network]
    within = network.key if network is not None else ""
    quiet_s, decide_s = _network_quiet(peers) if network is not None else (0.0, 0.0)
    for host, groups in by_host.items():
        tcp = any(g.level == "host" or g.network is not None for g in groups)
        health = _health(host, groups, places, "host", within if tcp else "")
        if tcp and quiet_s:
            health = replace(health, within_quiet_s=quiet_s, within_decide_s=decide_s)
        out.append(health)
    return out


def _network_quiet(peers: list[Peers]) -> tuple[float, float]:
    """Seconds since any Modbus TCP device answered (and one poll more: a poll sent just
    before a cut fails after answers sent just before it, and a switch's ports do not all
    drop at one instant), and how long the network's silence takes to be decided (its
    devices due within decide_within_s, to the breaker's threshold); (0, 0) when it
    cannot be silent as a whole (all on one host)."""
    net = next((p for p in peers if p.level == "network"), None)
    tcp = [p for p in peers if p.level == "endpoint" and p.network is not None and p.members]
    if net is None or len({p.host for p in tcp}) < 2:
        return 0.0, 0.0
    polls = list(net.members.values())
    due = [q for q in polls if q <= net.decide_within_s] or polls
    poll = max(due, default=0.0)
    return time.monotonic() - net.last_answer + poll, net.threshold * poll


def _network(peers: list[Peers], places: Mapping[str, tuple[str, str]]) -> EndpointHealth | None:
    """The gateway's TCP network: silent when every TCP device's group (its endpoint, its
    host or the network itself) is, so one outage of many hosts is one fault."""
    net = next((p for p in peers if p.level == "network"), None)
    if net is None or not net.grouped:
        return None
    tcp = [p for p in peers if p.level == "endpoint" and p.network is not None and p.members]
    judges = {id(j): j for p in tcp if (j := p.judge) is not None}
    # All on one host: that host's silence, its own fault (the narrower names more),
    # unless no host's fault can say it (devices alone on their endpoints).
    wide = len({p.host for p in tcp}) > 1 or id(net) in judges
    silent = wide and all(p.judge is not None for p in tcp)
    silent = silent and all(j.outage is not None for j in judges.values())
    groups = list(judges.values()) if silent else [net]
    answered = net.last_answer >= 0  # a TCP device has answered since the agent started
    health = _health(NETWORK, groups, places, "network", "", since_last=True)
    return EndpointHealth(
        NETWORK, len(net.members), health.silent_for_s if silent else 0.0, health.silent,
        health.silenced, health.error, answered, kind="network",
        silent_hosts=health.silent_hosts,
    )  # fmt: skip


def _health(
    host: str,
    groups: list[Peers],
    places: Mapping[str, tuple[str, str]],
    kind: str,
    within: str,
    since_last: bool = False,
) -> EndpointHealth:
    """One host's (or the network's) groups: silent for the longest silence of one of
    them (since_last: for the shortest, the time they have all been silent)."""
    devices = len({s for g in groups for s in g.members})
    # Since the agent started: a device answered, or the host showed life while they
    # failed (a refusal beside a timed-out port): its fault raised before that, with no
    # device answering, stayed raised beside its devices' own faults for ever.
    answered = all(g.last_answer >= 0 or g.shown_life for g in groups)
    outages = [g.outage for g in groups if g.outage is not None]
    if not outages:
        return EndpointHealth(host, devices, 0.0, answered=answered, kind=kind, within=within)
    silenced = tuple(sorted({s for o in outages for s in o.sensors}))
    # An endpoint's silence names it; a host's or the network's, its silent devices' places.
    addresses = {g.address for g in groups if g.outage is not None and g.level == "endpoint"}
    found = [
        places[s]
        for g in groups
        if g.outage is not None and g.level != "endpoint"
        for s in g.outage.sensors
        if s in places
    ]
    addresses |= {a for a, _ in found}
    hosts = {h for _, h in found} | {g.host for g in groups if g.outage is not None}
    now = time.monotonic()
    lasted = [o.lasted_s(now) for o in outages]
    return EndpointHealth(
        host,
        devices,
        max(min(lasted) if since_last else max(lasted), 1e-6),
        tuple(sorted(addresses)),
        silenced,
        outages[0].error,
        answered,
        kind=kind,
        silent_hosts=tuple(sorted(hosts - {NETWORK})),
        within=within,
        gateway_answers=all(o.gateway_answers for o in outages),
    )


def _brokers(mqtt: RunningMqtt) -> list[EndpointHealth]:
    """Each broker link with sensors behind it: down, it is one fault for all of them
    (raised once down for endpoint_silent_s and their shortest stale_after_s). A broker
    a reload removed (or left without sensors) is not listed: its fault is closed as
    unwatched."""
    by_broker: dict[str, list[MqttSensor]] = {}
    for m in mqtt.sensors:
        by_broker.setdefault(m.broker, []).append(m)
    out = []
    for link in mqtt.links:
        behind = by_broker.get(link.id)
        if not behind:
            continue
        down = link.down_for_s
        silent = tuple(m.sensor_id for m in behind if down and m.state == "stale")
        out.append(
            EndpointHealth(
                link.id,
                len(behind),
                max(down, 1e-6) if not link.connected else 0.0,
                (link.settings.address,),
                silent,
                link.last_error or "connecting",
                kind="broker",
                raised_after_s=min(m.stale_after_s for m in behind),
            )
        )
    return out


def _mqtt_health(m: MqttSensor, link: BrokerLink | None, wait_s: float) -> SensorHealth:
    error = m.last_error
    held = False
    if link is not None:
        # Silent while its broker was out of reach: only the time the link was up counts
        # towards its stale_after_s (the broker's own fault covers the rest), so after an
        # outage it is judged alone from the reconnect on, and a link that reconnects every
        # few seconds does not hold a dead sensor for ever. Nor the time after a reconnect
        # before any publisher is back (for wait_s, endpoint_silent_s, at most): a sensor
        # gateway reconnecting later than stale_after_s after the broker raised a fault for
        # each of its sensors, for one broker restart.
        since = time.monotonic() - m.silent_for_s
        up = link.connected_s_since(since) - link.unheard_s(since, wait_s)
        held = m.state == "stale" and up < m.stale_after_s
    if link is not None and not link.connected:
        error = f"broker {link.id} not connected: {link.last_error or 'connecting'}"
    return SensorHealth(
        m.sensor_id,
        m.state,
        0,
        error,
        m.last_ok_at,
        m.bad_for_s,
        m.last_bad,
        m.silent_for_s,
        with_endpoint=held,
        values_undecided=m.values_undecided,
    )
