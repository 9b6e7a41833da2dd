"""Checks of MQTT inputs across entries: broker ids, decoders, shared subscriptions, files.

Like agent.config._crossref, they run on the parsed data even when validation failed, so
every mistake is reported in one pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from agent.config._data import entries, line_at
from agent.config._errors import ConfigIssue, KeyPath
from agent.config._messages import did_you_mean, unknown_id
from agent.config._mqtt import KEY_FROM_RE
from agent.config._secrets import read_secret, secret_path
from agent.config._source import SourceMap


class Decoders(Protocol):
    """What the checks need to know about the payload decoders."""

    def names(self) -> list[str]: ...

    def channels(self, name: str) -> tuple[str, ...] | None:
        """The decoder's channels, None for an unknown (or broken) decoder."""
        ...

    def json_payload(self, name: str) -> bool: ...

    def broken(self, name: str) -> str | None: ...


def _broker_ids(data: dict[str, Any], smap: SourceMap) -> tuple[list[str], list[ConfigIssue]]:
    ids: dict[str, int] = {}
    issues = []
    for i, b in entries(data, "mqtt"):
        ident = b.get("id")
        if not isinstance(ident, str):
            continue
        if ident in ids:
            issues.append(
                smap.issue(
                    ("mqtt", i, "id"),
                    f"duplicate broker id '{ident}' (first used on line "
                    f"{line_at(smap, ('mqtt', ids[ident], 'id'))}); give each broker its own id",
                )
            )
        else:
            ids[ident] = i
    return list(ids), issues


def _decoder_ref(
    sensor: dict[str, Any], i: int, m: dict[str, Any], decoders: Decoders, smap: SourceMap
) -> list[ConfigIssue]:
    name = m.get("decoder")
    if not isinstance(name, str):
        return []
    where: KeyPath = ("sensors", i, "mqtt", "decoder")
    axes = decoders.channels(name)
    if axes is None:
        broken = decoders.broken(name)
        if broken is not None:
            return [
                smap.issue(where, f"decoder '{name}' has errors (reported at {broken}); fix them")
            ]
        known = decoders.names()
        return [
            smap.issue(
                where,
                f"unknown decoder '{name}'; known decoders: {', '.join(known)}"
                + did_you_mean(name, known)
                + " (your own go in decoders_dir)",
            )
        ]
    issues = []
    key_from = m.get("key_from")
    if (
        isinstance(key_from, str)
        and key_from.startswith("payload:")
        and not decoders.json_payload(name)
    ):
        issues.append(
            smap.issue(
                ("sensors", i, "mqtt", "key_from"),
                f"decoder '{name}' reads binary payloads: take the key from the topic "
                "(key_from: topic:N)",
            )
        )
    channels = sensor.get("channels")
    listed = isinstance(channels, list)
    for j, ch in enumerate(channels if listed else ("z", "x")):
        if isinstance(ch, str) and ch not in axes:
            path: KeyPath = ("sensors", i, "channels", j) if listed else ("sensors", i)
            issues.append(
                smap.issue(
                    path,
                    f"decoder '{name}' has no channel '{ch}'; its channels: {', '.join(axes)}"
                    + ("" if listed else " (set channels: to a subset)"),
                )
            )
    return issues


def _topic_level(i: int, m: dict[str, Any], smap: SourceMap) -> list[ConfigIssue]:
    topic, key_from = m.get("topic"), m.get("key_from")
    if not isinstance(topic, str) or not isinstance(key_from, str):
        return []
    match = KEY_FROM_RE.match(key_from)
    if match is None or match.group(2) is None:
        return []
    key = m.get("key")
    if isinstance(key, str) and (bad := sorted(set(key) & set("/+#"))):
        # A topic level never holds '/', and a published topic never holds '+' or '#'.
        return [
            smap.issue(
                ("sensors", i, "mqtt", "key"),
                f"key '{key}' holds {' and '.join(repr(c) for c in bad)}, which no level of a "
                f"published topic can, so no message would ever be this sensor's; give the "
                f"text of the one topic level that names it",
            )
        ]
    level = int(match.group(2))
    levels = topic.split("/")
    wild = [n for n, name in enumerate(levels) if name == "+"]
    if "#" in levels[: level + 1] or (level < len(levels) and levels[level] == "+"):
        return []
    if level < len(levels):
        # A fixed level is the same in every message: the key could never match it.
        hint = f"here topic:{wild[0]}" if len(wild) == 1 else "e.g. topic:N where level N is +"
        key = f"key '{m['key']}'" if m.get("key") is not None else "its key (the sensor id)"
        return [
            smap.issue(
                ("sensors", i, "mqtt", "key_from"),
                f"level {level} of topic '{topic}' is '{levels[level]}' in every message, so no "
                f"message carries {key} there; name a '+' level ({hint})",
            )
        ]
    if "#" in levels:
        return []
    return [
        smap.issue(
            ("sensors", i, "mqtt", "key_from"),
            f"topic '{topic}' has {len(levels)} levels (0..{len(levels) - 1}); "
            f"key_from: topic:{level} is past its end",
        )
    ]


def _shared(data: dict[str, Any], smap: SourceMap) -> list[ConfigIssue]:
    """Sensors sharing a subscription (broker, topic) need distinct keys."""
    issues = []
    groups: dict[tuple[str, str], list[tuple[int, str, str | None]]] = {}
    for i, s in entries(data, "sensors"):
        m = s.get("mqtt")
        if not isinstance(m, dict):
            continue
        broker, topic = m.get("broker"), m.get("topic")
        if not isinstance(broker, str) or not isinstance(topic, str):
            continue
        sid = str(s.get("id", f"#{i + 1}"))
        key = None
        if m.get("key_from") is not None:
            key = str(m.get("key", sid)).casefold()
        groups.setdefault((broker, topic), []).append((i, sid, key))
    for (_broker, topic), members in groups.items():
        if len(members) < 2:
            continue
        first_i, first_id, _ = members[0]
        keys: dict[str, str] = {}
        for i, sid, key in members:
            if key is None:
                issues.append(
                    smap.issue(
                        ("sensors", i, "mqtt"),
                        f"sensor '{sid}' shares topic '{topic}' with sensor '{first_id}' "
                        f"(line {line_at(smap, ('sensors', first_i, 'mqtt'))}): say which "
                        "messages are its own with key_from (topic:N or payload:FIELD, e.g. "
                        "payload:addr) and key",
                    )
                )
            elif key in keys:
                issues.append(
                    smap.issue(
                        ("sensors", i, "mqtt"),
                        f"sensor '{sid}' has the same key as sensor '{keys[key]}' on topic "
                        f"'{topic}'; give each sensor its own key",
                    )
                )
            else:
                keys[key] = sid
    return issues


def mqtt_checks(data: dict[str, Any], smap: SourceMap, decoders: Decoders) -> list[ConfigIssue]:
    """Every check of MQTT inputs (see the module docstring)."""
    broker_ids, issues = _broker_ids(data, smap)
    for i, sensor in entries(data, "sensors"):
        m = sensor.get("mqtt")
        if not isinstance(m, dict):
            continue
        broker = m.get("broker")
        if isinstance(broker, str) and broker not in broker_ids:
            issues.append(
                smap.issue(
                    ("sensors", i, "mqtt", "broker"),
                    unknown_id(
                        "broker",
                        broker,
                        broker_ids,
                        "declare it in the top-level mqtt: list (id, host, port)",
                    ),
                )
            )
        issues += _decoder_ref(sensor, i, m, decoders, smap)
        issues += _topic_level(i, m, smap)
    issues += _shared(data, smap)
    return issues


def read_broker_files(
    data: dict[str, Any], smap: SourceMap, base: Path
) -> tuple[dict[int, str], list[ConfigIssue]]:
    """Each broker's password file (like an uplink's token file); its TLS files are
    checked with the uplinks' (agent.config._tls_check).

    Returns:
        broker index -> password, and the issues (never a file's content).
    """
    secrets: dict[int, str] = {}
    issues = []
    for i, b in entries(data, "mqtt"):
        name = b.get("password_file")
        if isinstance(name, str) and name:
            secret, msg = read_secret(secret_path(base, name), name, "password")
            if secret is not None:
                secrets[i] = secret
            else:
                issues.append(smap.issue(("mqtt", i, "password_file"), msg))
    return secrets, issues
