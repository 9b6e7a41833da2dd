"""Checks across entries that one model cannot see: ids, references, devices, files.

They run on the parsed data even when validation found problems, so an integrator gets
every error in one pass; entries too broken to compare are skipped (validation reports them).
Sensor and bus checks are in _modbus_check, secret files in _secrets.
"""

from __future__ import annotations

import grp
from typing import Any

from agent.config._cmms_check import cmms_asset_refs
from agent.config._data import entries, line_at
from agent.config._delivery import UPLINK_KINDS
from agent.config._errors import ConfigIssue
from agent.config._messages import did_you_mean, unknown_id
from agent.config._modbus_check import Profiles, bus_endpoints, sensor_refs
from agent.config._reliability_check import reliability_classes
from agent.config._source import SourceMap
from agent.netaddr import is_loopback
from drivers.reading import FEATURE_NAMES

__all__ = ["Profiles", "cross_check"]


def _unique_ids(data: dict[str, Any], section: str, smap: SourceMap) -> list[ConfigIssue]:
    issues = []
    first: dict[str, int] = {}
    what = section.rstrip("s")
    for i, entry in entries(data, section):
        ident = entry.get("id")
        if not isinstance(ident, str):
            continue
        if ident in first:
            prev = line_at(smap, (section, first[ident], "id"))
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


def _failure_metrics(data: dict[str, Any], smap: SourceMap) -> list[ConfigIssue]:
    issues = []
    names = sorted(FEATURE_NAMES)
    for i, asset in entries(data, "assets"):
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


def _uplink_kind(uplink: dict[str, Any]) -> str | None:
    kinds = [k for k in UPLINK_KINDS if k in uplink]
    return kinds[0] if len(kinds) == 1 else None


def _unnamed_uplinks(data: dict[str, Any], smap: SourceMap) -> dict[int, ConfigIssue]:
    """Several uplinks of one kind must each be named: the store keeps delivery state by
    name, and a default taken from the position (http-1, http-2) would hand one backend's
    state to another when an uplink is removed or inserted (alerts skipped as delivered)."""
    issues = {}
    uplinks = entries(data, "uplinks")
    for kind in UPLINK_KINDS:
        same = [(i, u) for i, u in uplinks if _uplink_kind(u) == kind]
        if len(same) < 2:
            continue
        lines = ", ".join(str(line_at(smap, ("uplinks", i))) for i, _ in same)
        issues |= {
            i: smap.issue(
                ("uplinks", i),
                f"several {kind} uplinks (lines {lines}): give each a `name:` (its delivery "
                f"state is kept under that name; name one `{kind}` to keep the state of the "
                f"former single unnamed {kind} uplink, or name them {kind}-1, {kind}-2 ... "
                "in their former order if they ran unnamed together)",
            )
            for i, u in same
            if u.get("name") is None
        }
    return issues


def _uplink_names(data: dict[str, Any], smap: SourceMap) -> list[ConfigIssue]:
    unnamed = _unnamed_uplinks(data, smap)  # these have no default name to compare
    issues = list(unnamed.values())
    first: dict[str, int] = {}
    for i, uplink in entries(data, "uplinks"):
        name = uplink.get("name")
        name = _uplink_kind(uplink) if name is None else name
        if not isinstance(name, str) or i in unnamed:
            continue
        if name in first:
            where = ("uplinks", i, "name") if "name" in uplink else ("uplinks", i)
            issues.append(
                smap.issue(
                    where,
                    f"duplicate uplink name '{name}' (first used on line "
                    f"{line_at(smap, ('uplinks', first[name]))}); give each uplink its own name",
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
    known = [s["id"] for _, s in entries(data, "sensors") if isinstance(s.get("id"), str)]
    return [
        smap.issue(
            ("summaries", "sensors", j),
            unknown_id("sensor", sid, known),
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
    issues += sensor_refs(data, smap, profiles)
    issues += bus_endpoints(data, smap)
    issues += _failure_metrics(data, smap)
    issues += _exposure(data, smap)
    issues += _control_group(data, smap)
    issues += _uplink_names(data, smap) + _summary_sensors(data, smap)
    issues += cmms_asset_refs(data, smap)
    issues += reliability_classes(data, smap)
    return issues
