"""Cross-checks of the sensors and buses that one model cannot see: asset, profile and bus
references, one Modbus device per sensor, one bus per serial port or gateway endpoint."""

from __future__ import annotations

from typing import Any, Protocol

from agent.config._data import as_int, entries, line_at
from agent.config._errors import ConfigIssue, KeyPath
from agent.config._messages import did_you_mean, unknown_id
from agent.config._models import ModbusTcp, Sensor
from agent.config._source import SourceMap

__all__ = ["Profiles", "bus_endpoints", "sensor_refs"]


class Profiles(Protocol):
    """What the checks need to know about the register profiles."""

    def names(self) -> list[str]: ...

    def axes(self, name: str) -> tuple[str, ...] | None:
        """The profile's channels, None for an unknown (or broken) profile."""
        ...

    def broken(self, name: str) -> str | None:
        """The file of a profile called ``name`` that failed to load, if there is one."""
        ...


def _channels(
    sensor: dict[str, Any], i: int, profile: str, axes: tuple[str, ...], smap: SourceMap
) -> list[ConfigIssue]:
    """Each configured channel must be an axis the sensor's profile reads."""
    given = sensor.get("channels", Sensor.model_fields["channels"].default)
    if not isinstance(given, list | tuple):
        return []
    listed = sensor.get("channels") is not None
    issues = []
    for j, channel in enumerate(given):
        if isinstance(channel, str) and channel not in axes:
            path: KeyPath = ("sensors", i, "channels", j) if listed else ("sensors", i)
            issues.append(
                smap.issue(
                    path,
                    f"profile '{profile}' has no channel '{channel}'; its channels: "
                    f"{', '.join(axes)}" + ("" if listed else " (set channels: to a subset)"),
                )
            )
    return issues


def _endpoint_key(
    data: dict[str, Any], modbus: dict[str, Any]
) -> tuple[str, str | int, int] | None:
    """(endpoint, port or bus, unit): two sensors with the same key poll one device."""
    unit = as_int(modbus.get("device_id"), ModbusTcp.model_fields["device_id"].default)
    if unit is None:
        return None
    bus = modbus.get("bus")
    if isinstance(bus, str):
        return ("bus", bus, unit)
    host = modbus.get("host")
    port = as_int(modbus.get("port"), ModbusTcp.model_fields["port"].default)
    if not isinstance(host, str) or port is None:
        return None
    return (host.strip().lower(), port, unit)


def _profile_refs(
    sensor: dict[str, Any], i: int, modbus: dict[str, Any], profiles: Profiles, smap: SourceMap
) -> list[ConfigIssue]:
    profile = modbus.get("profile", ModbusTcp.model_fields["profile"].default)
    if not isinstance(profile, str):
        return []
    axes = profiles.axes(profile)
    broken = profiles.broken(profile) if axes is None else None
    if broken is not None:
        return [
            smap.issue(
                ("sensors", i, "modbus", "profile"),
                f"register profile '{profile}' has errors (reported at {broken}); fix them",
            )
        ]
    if axes is None:
        known = profiles.names()
        return [
            smap.issue(
                ("sensors", i, "modbus", "profile"),
                f"unknown register profile '{profile}'; known profiles: "
                f"{', '.join(known) or '(none installed)'}" + did_you_mean(profile, known),
            )
        ]
    return _channels(sensor, i, profile, axes, smap)


def sensor_refs(data: dict[str, Any], smap: SourceMap, profiles: Profiles) -> list[ConfigIssue]:
    issues = []
    asset_ids = list(
        dict.fromkeys(a["id"] for _, a in entries(data, "assets") if isinstance(a.get("id"), str))
    )
    bus_ids = list(
        dict.fromkeys(b["id"] for _, b in entries(data, "buses") if isinstance(b.get("id"), str))
    )
    gateways = _gateway_endpoints(data)
    endpoints: dict[tuple[str, str | int, int], tuple[int, str]] = {}
    for i, sensor in entries(data, "sensors"):
        asset = sensor.get("asset")
        if isinstance(asset, str) and asset_ids and asset not in asset_ids:
            issues.append(
                smap.issue(
                    ("sensors", i, "asset"),
                    unknown_id("asset", asset, asset_ids),
                )
            )
        modbus = sensor.get("modbus")
        if not isinstance(modbus, dict):
            continue
        issues += _profile_refs(sensor, i, modbus, profiles, smap)
        bus = modbus.get("bus")
        if isinstance(bus, str) and bus not in bus_ids:
            issues.append(
                smap.issue(
                    ("sensors", i, "modbus", "bus"),
                    unknown_id("bus", bus, bus_ids, "declare it under buses"),
                )
            )
        key = _endpoint_key(data, modbus)
        if key is None:
            continue
        if key[0] != "bus" and (key[0], key[1]) in gateways:
            issues.append(
                smap.issue(
                    ("sensors", i, "modbus", "host"),
                    f"{modbus.get('host')}:{key[1]} is the gateway bus "
                    f"'{gateways[(key[0], key[1])]}'; write bus: {gateways[(key[0], key[1])]} "
                    "instead of host and port, so its devices share the line's schedule",
                )
            )
        if key in endpoints:
            j, other = endpoints[key]
            where = ("sensors", i, "modbus", "device_id")
            if where not in smap.nodes:
                where = ("sensors", i, "modbus")
            place = f"bus {key[1]}" if key[0] == "bus" else f"{modbus.get('host')}:{key[1]}"
            issues.append(
                smap.issue(
                    where,
                    f"sensor polls the same Modbus device as sensor '{other}' (line "
                    f"{line_at(smap, ('sensors', j, 'modbus'))}): {place} device_id {key[2]}; "
                    "give each sensor its own device_id, host or port",
                )
            )
        else:
            endpoints[key] = (i, str(sensor.get("id", f"#{i + 1}")))
    return issues


def _gateway_endpoints(data: dict[str, Any]) -> dict[tuple[str, int], str]:
    out = {}
    for _, bus in entries(data, "buses"):
        tcp = bus.get("tcp")
        if isinstance(tcp, dict) and isinstance(tcp.get("host"), str):
            port = as_int(tcp.get("port"), 502)
            if port is not None:
                out[(tcp["host"].strip().lower(), port)] = str(bus.get("id"))
    return out


def bus_endpoints(data: dict[str, Any], smap: SourceMap) -> list[ConfigIssue]:
    """Two bus entries may not name the same serial port or gateway endpoint."""
    issues = []
    seen: dict[tuple[str, ...], str] = {}
    for i, bus in entries(data, "buses"):
        tcp, rtu = bus.get("tcp"), bus.get("rtu")
        if isinstance(rtu, dict) and isinstance(rtu.get("port"), str):
            key, path, what = ("rtu", rtu["port"]), ("buses", i, "rtu", "port"), rtu["port"]
        elif isinstance(tcp, dict) and isinstance(tcp.get("host"), str):
            port = str(as_int(tcp.get("port"), 502))
            key = ("tcp", tcp["host"].strip().lower(), port)
            path, what = ("buses", i, "tcp", "host"), f"{tcp['host']}:{port}"
        else:
            continue
        if key in seen:
            issues.append(
                smap.issue(path, f"{what} is already bus '{seen[key]}'; one bus per line")
            )
        else:
            seen[key] = str(bus.get("id"))
    return issues
