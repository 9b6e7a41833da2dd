"""pydantic validation errors -> ConfigIssues that say what was given and what to write."""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable
from typing import Any, Literal, get_args, get_origin

from pydantic_core import ErrorDetails

from agent.config._errors import ConfigIssue, KeyPath
from agent.config._schema import (
    Located,
    expected,
    is_model,
    is_union,
    keys_of,
    locate,
    strip,
    union_tags,
)
from agent.config._source import Node, SourceMap
from agent.config._urls import public_url

# What to write for a required key, when the type alone says too little.
_ADD = {
    "gateway": "gateway: {id: gw-01}",
    "assets": "assets: a list of machines, each with id and machine",
    "sensors": "sensors: a list of sensors, each with id, asset and modbus or mqtt",
    "store": "store: {path: /var/lib/edge-agent/outbox.db}",
    "machine": "machine: {standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}",
    "modbus": "modbus: {host: 10.0.0.21, port: 502, device_id: 1} (or {bus: ID, device_id: 1})",
    "host": "host: the device's IP address or host name, e.g. 10.0.0.21",
    "http": "http: {url: https://portfolio.example/v1/alerts}",
    "rpm": "rpm: the shaft speed in revolutions per minute, e.g. 1480",
    "asset": "asset: the id of an entry under assets",
    "broker": "broker: the id of an entry under the top-level mqtt: list",
    "topic": "topic: the topic filter, e.g. ncd/vibration/00:13:a2:00:41:9b:0c:11 or ncd/+/#",
    "decoder": "decoder: a payload decoder, e.g. ncd-processed (see docs/decoders.md)",
    "path": "path: /var/lib/edge-agent/outbox.db (the alert store, an SQLite file)",
}
# Keys of features this version does not have yet: say so instead of "unknown key".
_PLANNED = {
    ("Config", "mqtt_inputs"): "brokers are a top-level list: mqtt: [{id: plant-broker, "
    "host: 10.0.0.5}], and each MQTT sensor names one with mqtt: {broker: ID, topic: ...}",
    ("Sensor", "rtu"): "a serial line is a bus: declare it under buses with "
    "rtu: {port: /dev/ttyUSB0, baudrate: 19200} and give the sensor modbus: {bus: ID}",
    ("ModbusTcp", "serial"): "a serial line is a bus: declare it under buses with "
    "rtu: {port: ...} and write bus: ID here instead",
}
_SECRET_KEYS = {"token", "password"}


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """' (did you mean 'host'?)' when a close option exists, else ''."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# Known ids an "unknown id" message lists: a plant file's 2000 asset ids made one line of
# 21 kB per mistake (the closest id is named on its own, by did_you_mean).
MAX_IDS_LISTED = 10


def unknown_id(what: str, value: str, known: list[str], declare: str = "") -> str:
    """ "no bus has id 'x'; known bus ids: a, b (did you mean 'a'?)", or how to declare one
    when none is known and ``declare`` says how. At most MAX_IDS_LISTED ids are listed."""
    shown = ", ".join(known[:MAX_IDS_LISTED])
    if len(known) > MAX_IDS_LISTED:
        shown += f" and {len(known) - MAX_IDS_LISTED} more"
    listed = f"known {what} ids: {shown}" if known or not declare else declare
    return f"no {what} has id '{value}'; {listed}" + did_you_mean(value, known)


def got(value: Any, node: Node | None, path: KeyPath) -> str:
    """'got ...' describing the given value as the user wrote it, never a secret."""
    if path and path[-1] in _SECRET_KEYS:
        return "got a value that is not shown because it may be secret"
    if value is None:
        raw = node.raw if node is not None else ""
        return f"got {raw} (YAML for 'no value')" if raw else "got an empty value"
    if isinstance(value, dict):
        return "got a mapping"
    if isinstance(value, list):
        return "got a list"
    raw = node.raw if node is not None else None
    if node is not None and node.template is not None:
        return f"got {public_url(str(value))!r} (from {node.template!r})"
    if isinstance(value, bool) and raw is not None and raw.lower() not in ("true", "false"):
        return f"got {raw} (YAML reads it as {str(value).lower()}; quote it: '{raw}')"
    if isinstance(value, str):
        text = public_url(value)  # a URL's user:password is never echoed
        if "\\" in text and "'" not in text and text.isprintable():
            return f"got '{text}'"  # a Windows path as written, not with its \\ doubled
        return f"got {text!r}"
    return f"got {raw}" if raw is not None else f"got {value!r}"


def _value_at(data: Any, path: KeyPath) -> tuple[Any, bool]:
    for part in path:
        in_list = isinstance(part, int) and isinstance(data, list) and 0 <= part < len(data)
        in_map = isinstance(part, str) and isinstance(data, dict) and part in data
        if not (in_list or in_map):
            return None, False
        data = data[part]
    return data, True


def _literal_words(located: Located) -> list[str]:
    ann = located.annotation
    return [str(a) for a in get_args(ann)] if get_origin(ann) is Literal else []


def translate_all(errors: list[ErrorDetails], data: Any, smap: SourceMap) -> list[ConfigIssue]:
    """All pydantic errors as ConfigIssues, one per mistake.

    A misspelt required key is one mistake that pydantic reports twice (unknown 'hots',
    missing 'host'): the unknown key's issue says that the key it resembles is missing, and
    the separate "missing" issue is dropped.
    """
    missing = {locate(tuple(e["loc"])).path for e in errors if e["type"] == "missing"}
    merged: set[KeyPath] = set()
    issues = []
    for err in errors:
        issue = translate(err, data, smap)
        if issue is not None and err["type"] == "extra_forbidden":
            path = locate(tuple(err["loc"])).path
            for key in (str(m[-1]) for m in missing if m[:-1] == path[:-1]):
                hint = f"(did you mean '{key}'?)"
                if issue.message.endswith(hint):
                    merged.add((*path[:-1], key))
                    message = issue.message.replace(
                        hint, hint[:-1] + " it is required and missing)"
                    )
                    issue = dataclasses.replace(issue, message=message)
        issues.append((err, issue))
    return [
        issue
        for err, issue in issues
        if issue is not None
        and not (err["type"] == "missing" and locate(tuple(err["loc"])).path in merged)
    ]


def translate(err: ErrorDetails, data: Any, smap: SourceMap) -> ConfigIssue | None:
    """One pydantic error as a ConfigIssue; None when it only repeats another issue."""
    kind = err["type"]
    located = locate(tuple(err["loc"]))
    path = located.path
    value, present = _value_at(data, path)
    node = smap.nodes.get(path) if present else None
    if smap.is_broken(path):
        return None
    if kind == "missing":
        key = str(path[-1]) if path else "?"
        add = _ADD.get(key) or f"{key}: {expected(located)}"
        return smap.issue(path, f"missing required key '{key}'; add {add}", at="parent")
    if kind == "extra_forbidden":
        key = str(path[-1])
        planned = _PLANNED.get((located.parent.__name__ if located.parent else "", key))
        if planned:
            return smap.issue(path, f"unknown key '{key}': {planned}", at="key")
        allowed = keys_of(located.parent) if located.parent else []
        msg = f"unknown key '{key}'; allowed keys: {', '.join(allowed)}"
        under = _belongs_under(tuple(err["loc"]), path, data, smap)
        if under is not None:
            return smap.issue(path, f"unknown key '{key}' at this level: {under}", at="key")
        return smap.issue(path, msg + did_you_mean(key, allowed), at="key")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _union_tag(err, located, value, smap)
    if kind == "too_short":
        if isinstance(value, list) and len(value) >= err.get("ctx", {}).get("min_length", 1):
            return None  # pydantic counts only entries that validated; theirs are reported
        return smap.issue(path, "the list is empty; add at least one entry")
    if kind == "too_long":
        most = err.get("ctx", {}).get("max_length")
        return smap.issue(
            path,
            f"{len(value) if isinstance(value, list) else 'too many'} "
            f"entries; at most {most} supported: remove the extra ones",
        )
    if kind == "value_error":
        return _value_error(err, located, value, node, smap)
    msg = f"{got(value, node, path)}; expected {expected(located)}"
    if isinstance(value, str):
        msg += did_you_mean(value, _literal_words(located))
    elif kind == "string_type" and isinstance(value, int | float) and node and node.raw:
        msg += f'; YAML reads {node.raw} as a number: write it in quotes, "{node.raw}"'
    return smap.issue(path, msg)


def _belongs_under(
    loc: tuple[str | int, ...], path: KeyPath, data: Any, smap: SourceMap
) -> str | None:
    """How to indent a key written one level too far left, or None.

    ``modbus:`` with its ``host:`` under it at the same indentation reads, in YAML, as an
    empty ``modbus`` and an unknown ``host`` beside it: the nearest key above it that has no
    value and takes this key is where it belongs."""
    key = path[-1]
    siblings, found = _value_at(data, path[:-1])
    if not found or not isinstance(siblings, dict) or key not in siblings:
        return None
    names = list(siblings)
    for above in reversed(names[: names.index(key)]):
        node = smap.nodes.get((*path[:-1], above))
        if siblings[above] is not None or node is None or not node.is_empty:
            continue  # a key with a value of its own, or another key in this key's place
        ann = strip(locate((*loc[:-1], above)).annotation)
        listed = get_origin(ann) is tuple
        if listed:
            ann = strip(get_args(ann)[0]) if get_args(ann) else None
        members = get_args(ann) if is_union(ann) else (ann,)
        if key not in {k for m in members if is_model(m) for k in keys_of(m)}:
            return None
        where = f"'{above}' (line {node.key_line}), written with no value,"
        if listed:
            return f"{where} takes a list of entries with it: write '- {key}: ...' under it"
        return f"{where} takes it: indent this line further than '{above}'"
    return None


def _union_tag(err: ErrorDetails, located: Located, value: Any, smap: SourceMap) -> ConfigIssue:
    ctx = err.get("ctx", {})
    disc = str(ctx.get("discriminator", "'standard'")).strip("'")
    ann = located.field.annotation if located.field else located.annotation
    tags = list(union_tags(strip(ann), disc)) or [
        t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")
    ]
    choices = ", ".join(tags)
    path = located.path
    if not isinstance(value, dict):
        node = smap.nodes.get(path)
        return smap.issue(
            path, f"{got(value, node, path)}; expected a mapping with {disc}: one of {choices}"
        )
    if disc not in value:
        return smap.issue(
            (*path, disc),
            f"missing required key '{disc}'; add {disc}: one of {choices}",
            at="parent",
        )
    tag = value[disc]
    node = smap.nodes.get((*path, disc))
    msg = f"{got(tag, node, (*path, disc))}; expected one of {choices}"
    return smap.issue((*path, disc), msg + did_you_mean(str(tag), tags))


def _value_error(
    err: ErrorDetails, located: Located, value: Any, node: Node | None, smap: SourceMap
) -> ConfigIssue:
    path = located.path
    text = str(err.get("ctx", {}).get("error", err["msg"]))
    if not is_model(located.annotation) or not isinstance(value, dict):
        return smap.issue(path, f"{got(value, node, path)}; {text}")
    # A rule across several keys of one mapping. Point at the key the message starts with
    # when there is one ("modbus.timeout_s (2.0) must be..."), else at the mapping.
    first = re.split(r"[\s(]", text, maxsplit=1)[0]
    target = tuple(int(p) if p.isdigit() else p for p in first.split("."))
    if (*path, *target) in smap.nodes:
        return smap.issue((*path, *target), text)
    if not re.search(r"\d", text):
        shown = [
            f"{k}={value[k]}"
            for k in value
            if k not in _SECRET_KEYS
            and isinstance(value[k], int | float)
            and re.search(rf"\b{re.escape(k)}\b", text)
        ]
        if shown:
            text += f" (got {', '.join(shown)})"
    return smap.issue(path, text)
