"""Sensors from the configuration: buses and pollers, built in one place.

A sensor with ``modbus.host`` gets a bus of its own (one TCP connection, as a Modbus TCP
device serves requests in parallel with its neighbours); sensors on a declared bus (a
serial line or a gateway endpoint) share its schedule. Config reload rebuilds through
this function too.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from agent.config import Bus as BusConfig
from agent.config import Config, Sensor
from drivers.modbus import (
    NETWORK,
    Backoff,
    Bus,
    DeviceTimes,
    ModbusPoller,
    Peers,
    ReadPlan,
    RtuLink,
    TcpLink,
    Wheel,
    deadline_wheel,
    line_utilisation,
    plan_profile,
)
from drivers.profiles import ProfileLibrary
from drivers.reading import Reading

CONNECT_TIMEOUT_MIN_S = 1.0
# Pollers wake, and their own connections time requests out, through shared timer wheels:
# one event-loop timer per slot instead of two per poll (2000 sensors: 4000 timers a
# second). A tick is then up to TICK_GRAIN_S late and a timeout up to DEADLINE_GRAIN_S;
# the cadence grid itself does not drift. Gateways and serial lines keep exact timers.
TICK_GRAIN_S = 0.005
DEADLINE_GRAIN_S = 0.01
BREAKER_FAILURES = 3  # failed polls in a row that open a poller's breaker


@dataclass(frozen=True, slots=True)
class Sources:
    """What the runtime runs for the sensors.

    Attributes:
        buses: every bus (shared ones first, then one per directly connected sensor).
        pollers: one per sensor, in configuration order.
    """

    buses: tuple[Bus, ...]
    pollers: tuple[ModbusPoller, ...]


def planned_utilisation(config: Config, bus: BusConfig, library: ProfileLibrary) -> float | None:
    """The poll plan's share of a serial line (None when its speed is not known)."""
    if bus.rtu is not None:
        baud, parity, stop = bus.rtu.baudrate, bus.rtu.parity, bus.rtu.stop_bits
    elif bus.tcp is not None and bus.tcp.line_baudrate is not None:
        baud, parity, stop = bus.tcp.line_baudrate, "N", 1
    else:
        return None
    devices = [
        (plan_profile(library.get(s.modbus.profile), s.channels), s.poll_interval_s)
        for s in config.sensors
        if s.modbus is not None and s.modbus.bus == bus.id
    ]
    return line_utilisation(devices, baudrate=baud, parity=parity, stop_bits=stop)


def _shared_bus(
    config: Config, bus: BusConfig, library: ProfileLibrary, lines: dict[str, DeviceTimes]
) -> Bus:
    plan = planned_utilisation(config, bus, library)
    if bus.rtu is not None:
        r = bus.rtu
        # A rebuilt line (its settings changed on reload) keeps its devices' hold-offs and
        # owed late answers: a device that was late is not asked at once on the new one.
        devices = lines.get(r.port)
        if devices is None:
            devices = lines[r.port] = DeviceTimes(r.repeat_guard_s)
        link = RtuLink(
            r.port,
            baudrate=r.baudrate,
            parity=r.parity,
            stop_bits=r.stop_bits,
            bytesize=r.bytesize,
            inter_frame_s=r.inter_frame_s,
            late_flush_s=r.late_flush_s,
            repeat_guard_s=r.repeat_guard_s,
            devices=devices,
        )
        return Bus(bus.id, "rtu", [link], planned_utilisation=plan)
    assert bus.tcp is not None
    t = bus.tcp
    links = [
        TcpLink(t.host, t.port, connect_timeout_s=CONNECT_TIMEOUT_MIN_S, settle_s=t.settle_s)
        for _ in range(t.max_connections)
    ]
    return Bus(bus.id, "gateway", links, planned_utilisation=plan)


def _own_bus(sensor: Sensor, deadlines: Wheel) -> Bus:
    m = sensor.modbus
    assert m is not None and m.host is not None
    link = TcpLink(
        m.host,
        m.port,
        connect_timeout_s=max(m.timeout_s, CONNECT_TIMEOUT_MIN_S),
        deadlines=deadlines,
    )
    return Bus(sensor.id, "tcp", [link])


def _peers_of(registry: dict[str, Peers], bus: Bus) -> Peers:
    """The endpoint's Peers: a shared bus (gateway, serial line) is one endpoint; devices'
    own connections to the same host:port share one."""
    key = bus.address if bus.kind == "tcp" else f"bus {bus.name}"
    found = registry.get(key)
    if found is None:
        host = getattr(bus.links[0], "host", bus.address)  # a serial line: its port
        found = registry[key] = Peers(bus.address, BREAKER_FAILURES, host)
        if isinstance(bus.links[0], TcpLink):
            # Judged with its host's devices, or every TCP device of the gateway, when too
            # few share its endpoint.
            group = registry.get(f"host {host}")
            if group is None:
                group = registry[f"host {host}"] = Peers(host, BREAKER_FAILURES, host, level="host")
            found.host_group = group
            network = registry.get(NETWORK)
            if network is None:
                network = registry[NETWORK] = Peers(NETWORK, BREAKER_FAILURES)
            found.network = group.network = network
    return found


def build_sources(
    config: Config,
    library: ProfileLibrary,
    sink: Callable[[Reading], None],
    *,
    only: Collection[str] | None = None,
    shared: Mapping[str, Bus] | None = None,
    peers: dict[str, Peers] | None = None,
    lines: dict[str, DeviceTimes] | None = None,
) -> Sources:
    """Buses and pollers for the configured sensors (nothing is opened here).

    Args:
        config: the validated configuration.
        library: the register profiles (shipped plus the profiles_dir's), loaded once.
        sink: where every poller hands its readings.
        only: build these sensors only (a reload starts the added and changed ones).
        shared: shared buses already running, by id, for the built sensors to join; the
            other shared buses they need are built (and returned in `buses`).
        peers: the devices behind each endpoint, by endpoint, for the built buses to
            join (and add to): devices behind one endpoint are judged together when it
            falls silent (drivers.modbus._peers).
        lines: what the devices on each serial port may still send, by port, for the
            built serial lines to share with the lines they replace (and add to); the
            ports the configuration no longer names are forgotten.

    Raises:
        ProfileError: a sensor names a profile the library does not have (``check``
            reports it first).
    """
    peers = {} if peers is None else peers
    lines = {} if lines is None else lines
    ports = {b.rtu.port for b in config.buses if b.rtu is not None}
    for gone in [p for p in lines if p not in ports]:
        del lines[gone]  # bounded by the configured ports
    sensors = [
        s for s in config.sensors if s.modbus is not None and (only is None or s.id in only)
    ]  # MQTT sensors: agent.mqtt_inputs
    used = {s.modbus.bus for s in sensors if s.modbus is not None}
    reuse = dict(shared or {})
    built = {
        b.id: _shared_bus(config, b, library, lines)
        for b in config.buses
        if b.id not in reuse and (only is None or b.id in used)
    }
    buses: list[Bus] = list(built.values())
    pollers = []
    # Shared by every poller (each only reads them): a plan per (profile, channels) and one
    # jitter source, rather than 2000 copies of each (a Random alone is 2.5 kB).
    plans: dict[tuple[str, tuple[str, ...] | None], ReadPlan] = {}
    rng = random.Random()
    ticks, deadlines = Wheel(TICK_GRAIN_S), deadline_wheel(DEADLINE_GRAIN_S)
    for s in sensors:
        m = s.modbus
        if m is None:
            continue  # an MQTT sensor (agent.mqtt_inputs)
        if m.bus is not None:
            bus = reuse.get(m.bus) or built[m.bus]
        else:
            bus = _own_bus(s, deadlines)
            buses.append(bus)
        profile = library.get(m.profile)
        key = (m.profile, None if s.channels is None else tuple(s.channels))
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = plan_profile(profile, s.channels)
        if bus.peers is None:
            bus.peers = _peers_of(peers, bus)
        pollers.append(
            ModbusPoller(
                s.id,
                bus=bus,
                device_id=m.device_id,
                profile=profile,
                channels=s.channels,
                plan=plan,
                timeout_s=m.timeout_s,
                poll_interval_s=s.poll_interval_s,
                sink=sink,
                backoff=Backoff(
                    min(s.poll_interval_s, 1.0), max(m.backoff_max_s, 0.5), BREAKER_FAILURES
                ),
                transport="modbus-rtu" if bus.kind == "rtu" else "modbus",
                rng=rng,
                wheel=ticks,
                stuck=config.stuck_rule(s),
            )
        )
    for p in peers.values():
        # An outage is decided without a device due only after this (_peers).
        p.decide_within_s = config.sensor_faults.endpoint_silent_s
    return Sources(tuple(buses), tuple(pollers))
