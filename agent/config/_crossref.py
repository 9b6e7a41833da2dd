"""Checks across entries that one model cannot see: ids, references, devices, files.

They run on the parsed data even when validation found problems, so an integrator gets
every error in one pass; entries too broken to compare are skipped (validation reports them).
"""

from __future__ import annotations

import grp
from pathlib import Path
from typing import Any, Protocol

from agent.config._cmms_check import cmms_asset_refs
from agent.config._delivery import UPLINK_KINDS
from agent.config._errors import ConfigIssue, KeyPath
from agent.config._messages import did_you_mean
from agent.config._models import ModbusTcp, Sensor
from agent.config._source import SourceMap
from agent.netaddr import is_loopback
from drivers.reading import FEATURE_NAMES

_MAX_TOKEN_BYTES = 64 * 1024


class Profiles(Protocol):
    """What the checks need to know about the register profiles."""

    def names(self) -> list[str]: ...

    def axes(self, name: str) -> tuple[str, ...] | None:
        """The profile's channels, None for an unknown (or broken) profile."""
        ...

    def broken(self, name: str) -> str | None:
        """The file of a profile called ``name`` that failed to load, if there is one."""
        ...


def _entries(data: dict[str, Any], section: str) -> list[tuple[int, dict[str, Any]]]:
    items = data.get(section)
    if not isinstance(items, list):
        return []
    return [(i, e) for i, e in enumerate(items) if isinstance(e, dict)]


def _line(smap: SourceMap, path: KeyPath) -> int:
    node = smap.nodes.get(path)
    return node.line if node else 0


def _unique_ids(data: dict[str, Any], section: str, smap: SourceMap) -> list[ConfigIssue]:
    issues = []
    first: dict[str, int] = {}
    what = section.rstrip("s")
    for i, entry in _entries(data, section):
        ident = entry.get("id")
        if not isinstance(ident, str):
            continue
        if ident in first:
            prev = _line(smap, (section, first[ident], "id"))
            issues.append(
                smap.issue(
                    (section, i, "id"),
                    f"duplicate {what} id '{ident}' (first used on line {prev}); "
                    f"each {what} needs its own id",
                )
            )
        else:
            first[ident] = i
    return issues


def _as_int(value: Any, default: int) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


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
    unit = _as_int(modbus.get("device_id"), ModbusTcp.model_fields["device_id"].default)
    if unit is None:
        return None
    bus = modbus.get("bus")
    if isinstance(bus, str):
        return ("bus", bus, unit)
    host = modbus.get("host")
    port = _as_int(modbus.get("port"), ModbusTcp.model_fields["port"].default)
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


def _sensor_refs(data: dict[str, Any], smap: SourceMap, profiles: Profiles) -> list[ConfigIssue]:
    issues = []
    asset_ids = list(
        dict.fromkeys(a["id"] for _, a in _entries(data, "assets") if isinstance(a.get("id"), str))
    )
    bus_ids = list(
        dict.fromkeys(b["id"] for _, b in _entries(data, "buses") if isinstance(b.get("id"), str))
    )
    gateways = _gateway_endpoints(data)
    endpoints: dict[tuple[str, str | int, int], tuple[int, str]] = {}
    for i, sensor in _entries(data, "sensors"):
        asset = sensor.get("asset")
        if isinstance(asset, str) and asset_ids and asset not in asset_ids:
            issues.append(
                smap.issue(
                    ("sensors", i, "asset"),
                    f"no asset has id '{asset}'; known asset ids: {', '.join(asset_ids)}"
                    + did_you_mean(asset, asset_ids),
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
                    f"no bus has id '{bus}'; "
                    + (
                        f"known bus ids: {', '.join(bus_ids)}"
                        if bus_ids
                        else "declare it under buses"
                    )
                    + did_you_mean(bus, bus_ids),
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
                    f"{_line(smap, ('sensors', j, 'modbus'))}): {place} device_id {key[2]}; "
                    "give each sensor its own device_id, host or port",
                )
            )
        else:
            endpoints[key] = (i, str(sensor.get("id", f"#{i + 1}")))
    return issues


def _gateway_endpoints(data: dict[str, Any]) -> dict[tuple[str, int], str]:
    out = {}
    for _, bus in _entries(data, "buses"):
        tcp = bus.get("tcp")
        if isinstance(tcp, dict) and isinstance(tcp.get("host"), str):
            port = _as_int(tcp.get("port"), 502)
            if port is not None:
                out[(tcp["host"].strip().lower(), port)] = str(bus.get("id"))
    return out


def _bus_endpoints(data: dict[str, Any], smap: SourceMap) -> list[ConfigIssue]:
    """Two bus entries may not name the same serial port or gateway endpoint."""
    issues = []
    seen: dict[tuple[str, ...], str] = {}
    for i, bus in _entries(data, "buses"):
        tcp, rtu = bus.get("tcp"), bus.get("rtu")
        if isinstance(rtu, dict) and isinstance(rtu.get("port"), str):
            key, path, what = ("rtu", rtu["port"]), ("buses", i, "rtu", "port"), rtu["port"]
        elif isinstance(tcp, dict) and isinstance(tcp.get("host"), str):
            port = str(_as_int(tcp.get("port"), 502))
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


def _failure_metrics(data: dict[str, Any], smap: SourceMap) -> list[ConfigIssue]:
    issues = []
    names = sorted(FEATURE_NAMES)
    for i, asset in _entries(data, "assets"):
        failure = asset.get("failure")
        metric = failure.get("metric") if isinstance(failure, dict) else None
        if isinstance(metric, str) and metric not in FEATURE_NAMES:
            issues.append(
                smap.issue(
                    ("assets", i, "failure", "metric"),
                    f"unknown metric '{metric}'; expected one of {', '.join(names)}"
                    + did_you_mean(metric, names),
                )
            )
    return issues


def _exposure(data: dict[str, Any], smap: SourceMap) -> list[ConfigIssue]:
    """Serving /healthz beyond loopback needs `expose: true`, said on purpose."""
    health = data.get("health")
    if not isinstance(health, dict):
        return []
    host = health.get("host")
    if not isinstance(host, str) or is_loopback(host) or health.get("expose") is True:
        return []
    return [
        smap.issue(
            ("health", "host"),
            f"'{host}' serves /healthz and /metrics beyond this machine; keep 127.0.0.1, or "
            "add 'expose: true' under health: to publish them (read-only; maintenance is "
            "never served over TCP)",
        )
    ]


def _control_group(data: dict[str, Any], smap: SourceMap) -> list[ConfigIssue]:
    control = data.get("control")
    group = control.get("group") if isinstance(control, dict) else None
    if not isinstance(group, str) or not group:
        return []
    try:
        grp.getgrnam(group)
    except KeyError:
        return [
            smap.issue(
                ("control", "group"),
                f"group '{group}' does not exist on this machine; create it "
                f"(groupadd --system {group}) or remove control.group",
            )
        ]
    return []


# (section under an uplink, key naming a secret file, what the file holds)
SECRET_FILES = (
    ("http", "token_file", "token"),
    ("mqtt", "password_file", "password"),
    ("cmms", "token_file", "token"),
)


def _read_secret(file: Path, name: str, what: str) -> tuple[str | None, str]:
    """The secret in a file (whitespace stripped), or None and what is wrong, never the
    content."""
    try:
        with file.open("rb") as f:
            raw = f.read(_MAX_TOKEN_BYTES + 1)
    except FileNotFoundError:
        return None, (
            f"{what} file '{file}' does not exist; create it with the {what} as its only "
            "content, or fix the path"
        )
    except IsADirectoryError:
        return None, f"{what} file '{file}' is a directory; give the file that holds the {what}"
    except ValueError:  # a NUL byte in the name
        return None, f"{what} file name {name!r} is not a valid path; fix the path"
    except OSError as exc:
        return None, (
            f"{what} file '{file}' cannot be read ({exc.strerror}); let the agent's user read it"
        )
    token = raw.decode("utf-8", errors="replace").strip()
    if len(raw) > _MAX_TOKEN_BYTES:
        return None, f"{what} file '{file}' is larger than 64 KiB; it should hold only the {what}"
    if not token:
        return None, f"{what} file '{file}' is empty; write the {what} into it"
    if "\ufffd" in token:
        return None, f"{what} file '{file}' is not UTF-8 text; write the {what} as plain text"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in token):
        return None, (
            f"{what} file '{file}' holds a line break or control character inside the "
            f"{what}; it must hold the {what} alone, on one line"
        )
    return token, ""


def secret_path(base: Path, name: str) -> Path:
    """A secret file's path: relative ones are relative to the configuration's folder."""
    return base / Path(name).expanduser()


def read_tokens(
    data: dict[str, Any], smap: SourceMap, base: Path
) -> tuple[dict[int, str], list[ConfigIssue]]:
    """Read every uplink's secret file (http ``token_file``, mqtt ``password_file``).

    Args:
        data: the parsed file.
        smap: positions, for the issues.
        base: directory that relative paths are relative to (the config's).

    Returns:
        uplink index -> secret, and the issues for files that are missing, unreadable or
        empty. Issues name the file, never its content.
    """
    tokens: dict[int, str] = {}
    issues = []
    for i, uplink in _entries(data, "uplinks"):
        for section, key, what in SECRET_FILES:
            block = uplink.get(section)
            name = block.get(key) if isinstance(block, dict) else None
            if not isinstance(name, str) or not name:
                continue
            try:
                file = secret_path(base, name)
            except ValueError:
                file = Path(name)
            secret, msg = _read_secret(file, name, what)
            if secret is not None:
                tokens[i] = secret
            else:
                issues.append(smap.issue(("uplinks", i, section, key), msg))
    return tokens, issues


def _uplink_names(data: dict[str, Any], smap: SourceMap) -> list[ConfigIssue]:
    issues = []
    first: dict[str, int] = {}
    for i, uplink in _entries(data, "uplinks"):
        name = uplink.get("name")
        if name is None:
            kinds = [k for k in UPLINK_KINDS if k in uplink]
            if len(kinds) != 1:
                continue
            same = [j for j, u in _entries(data, "uplinks") if kinds[0] in u]
            name = kinds[0] if len(same) == 1 else f"{kinds[0]}-{same.index(i) + 1}"
        if not isinstance(name, str):
            continue
        if name in first:
            where = ("uplinks", i, "name") if "name" in uplink else ("uplinks", i)
            issues.append(
                smap.issue(
                    where,
                    f"duplicate uplink name '{name}' (first used on line "
                    f"{_line(smap, ('uplinks', first[name]))}); give each uplink its own name",
                )
            )
        else:
            first[name] = i
    return issues


def _summary_sensors(data: dict[str, Any], smap: SourceMap) -> list[ConfigIssue]:
    block = data.get("summaries")
    wanted = block.get("sensors") if isinstance(block, dict) else None
    if not isinstance(wanted, list):
        return []
    known = [s["id"] for _, s in _entries(data, "sensors") if isinstance(s.get("id"), str)]
    return [
        smap.issue(
            ("summaries", "sensors", j),
            f"no sensor has id '{sid}'; known sensor ids: {', '.join(known)}"
            + did_you_mean(sid, known),
        )
        for j, sid in enumerate(wanted)
        if isinstance(sid, str) and known and sid not in known
    ]


def cross_check(data: dict[str, Any], smap: SourceMap, profiles: Profiles) -> list[ConfigIssue]:
    """All checks between entries (see the module docstring).

    Args:
        data: the parsed file (plain dicts and lists, possibly invalid in places).
        smap: positions, for the issues.
        profiles: the register profiles (shipped and the profiles_dir's).
    """
    issues = _unique_ids(data, "assets", smap) + _unique_ids(data, "sensors", smap)
    issues += _unique_ids(data, "buses", smap)
    issues += _sensor_refs(data, smap, profiles)
    issues += _bus_endpoints(data, smap)
    issues += _failure_metrics(data, smap)
    issues += _exposure(data, smap)
    issues += _control_group(data, smap)
    issues += _uplink_names(data, smap) + _summary_sensors(data, smap)
    issues += cmms_asset_refs(data, smap)
    return issues
