"""Register profiles: parse one YAML file into a Profile, every error at the file, line,
column and key that is wrong (the first one found)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from drivers.datafiles import Document, item_name, unknown_key
from drivers.decoders import (
    MAX_READ_REGISTERS,
    DataType,
    canonical_order,
    canonical_type,
)
from drivers.errors import ProfileError
from drivers.profiles._profile import ALL_CHANNELS, Profile, Register
from drivers.reading import FEATURE_NAMES

__all__ = ["FUNCTION_CODES", "parse_profile"]

FUNCTION_CODES: dict[str, int] = {"holding": 3, "input": 4}
_TOP_KEYS = {"name", "model", "document", "table", "all_zero", "defaults", "registers"}
_ROW_KEYS = {
    "address", "table", "function", "type", "count", "order", "word_order", "byte_order",
    "scale", "offset", "unit", "feature", "channel", "ignore", "valid", "sentinels",
}  # fmt: skip
_DEFAULT_KEYS = {"table", "function", "order", "word_order", "byte_order", "valid", "sentinels"}
_ENDIAN = {"big": 0, "little": 1}


class _Row:
    """Parses one register row of a document; every error at the offending key."""

    def __init__(self, doc: Document, index: int, row: Any, defaults: Mapping[str, Any]) -> None:
        self.doc, self.index = doc, index
        self.base: tuple[str | int, ...] = ("registers", index)
        if not isinstance(row, dict):
            self.fail((), f"expected a mapping, got {type(row).__name__}")
        unknown = sorted(set(row) - _ROW_KEYS)
        if unknown:
            self.fail((unknown[0],), unknown_key(unknown[0], _ROW_KEYS))
        self.given = set(row)
        self.row = {**defaults, **row}

    def fail(self, key: tuple[str | int, ...], message: str) -> None:
        raise self.doc.error(self.base + key, message, ProfileError)

    def number(self, key: str, default: float) -> float:
        value = self.row.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail((key,), f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            self.fail((key,), f"{key} must be finite, got {value!r}")
        return float(value)

    def function_code(self) -> int:
        if {"function", "table"} <= self.given:
            self.fail(("function",), "give table or function, not both")
        if "function" in self.given or ("function" in self.row and "table" not in self.given):
            fc = self.row["function"]
            if fc not in (3, 4) or isinstance(fc, bool):
                self.fail(("function",), f"function must be 3 or 4 (a register read), got {fc!r}")
            return int(fc)
        table = self.row.get("table", "holding")
        if table not in FUNCTION_CODES:
            self.fail(("table",), f"table must be holding or input, got {table!r}")
        return FUNCTION_CODES[table]

    def order(self, dtype: DataType) -> str:
        if dtype.registers == 1 and "word_order" not in self.given:
            self.row.pop("word_order", None)  # a default for the 32-bit rows
        if "order" in self.row and ("word_order" in self.row or "byte_order" in self.row):
            self.fail(("order",), "give order, or word_order/byte_order, not both")
        if "order" not in self.row and ("word_order" in self.row or "byte_order" in self.row):
            word = self.row.get("word_order", "big")
            byte = self.row.get("byte_order", "big")
            for key, v in (("word_order", word), ("byte_order", byte)):
                if v not in _ENDIAN:
                    self.fail((key,), f"{key} must be big or little, got {v!r}")
            if dtype.registers == 1 and "word_order" in self.row:
                self.fail(("word_order",), f"{dtype.name} is one register: no word order")
            if dtype.registers == 1:
                return "BA" if _ENDIAN[byte] else "AB"
            return ("ABCD", "BADC", "CDAB", "DCBA")[2 * _ENDIAN[word] + _ENDIAN[byte]]
        try:
            return canonical_order(self.row.get("order"), dtype.registers)
        except ValueError as exc:
            self.fail(("order",), str(exc))
        raise AssertionError  # unreachable: fail raises

    def valid(self) -> tuple[float, float] | None:
        v = self.row.get("valid")
        if v is None:
            return None
        if (
            not isinstance(v, list)
            or len(v) != 2
            or any(isinstance(x, bool) or not isinstance(x, int | float) for x in v)
            or not v[0] <= v[1]
        ):
            self.fail(("valid",), f"valid must be [lowest, highest] numbers, got {v!r}")
        return float(v[0]), float(v[1])

    def sentinels(self, dtype: DataType) -> frozenset[float]:
        given = self.row.get("sentinels", [])
        if not isinstance(given, list):
            self.fail(("sentinels",), f"sentinels must be a list of raw values, got {given!r}")
        out: set[float] = set()
        bits = 16 * dtype.registers
        for j, s in enumerate(given):
            if isinstance(s, bool) or not isinstance(s, int | float):
                self.fail(("sentinels", j), f"a sentinel is a raw number, got {s!r}")
            if not dtype.is_float:
                if not isinstance(s, int) or not -(1 << (bits - 1)) <= s < (1 << bits):
                    self.fail(("sentinels", j), f"sentinel {s!r} does not fit {dtype.name}")
                if dtype.code.islower() and s >= 1 << (bits - 1):
                    s -= 1 << bits  # 0xFFFF written for an int16 means -1
                elif not dtype.code.islower() and s < 0:
                    s += 1 << bits  # -1 written for a uint16 means 0xFFFF
            out.add(s)
        return frozenset(out)

    def parse(self) -> Register:
        row = self.row
        address = row.get("address")
        if isinstance(address, bool) or not isinstance(address, int) or not 0 <= address <= 65535:
            self.fail(
                ("address",),
                f"address must be an integer 0..65535 (0-based wire address), got {address!r}",
            )
        if "type" not in row:
            self.fail((), "type is required (uint16, int16, uint32, int32, float32)")
        try:
            dtype = canonical_type(str(row["type"]))
        except ValueError as exc:
            self.fail(("type",), str(exc))
        count = row.get("count", dtype.registers)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            self.fail(("count",), f"count must be a positive integer, got {count!r}")
        if count > MAX_READ_REGISTERS:
            self.fail(
                ("count",), f"count {count} is above the protocol limit of 125 registers per read"
            )
        if count != dtype.registers:
            self.fail(("count",), f"count {count} does not fit {dtype.name} ({dtype.registers})")
        if address + dtype.registers > 65536:
            self.fail(("address",), f"{dtype.name} at {address} runs past register 65535")
        scale = self.number("scale", 1.0)
        if scale == 0:
            self.fail(("scale",), "scale must not be 0")
        ignore, feature = row.get("ignore"), row.get("feature")
        if feature is not None and feature not in FEATURE_NAMES:
            known = ", ".join(sorted(FEATURE_NAMES))
            self.fail(("feature",), f"unknown feature {feature!r}; expected one of {known}")
        if ignore is None and feature is None:
            self.fail((), "feature is required (or ignore: with the reason the row is unused)")
        channel = row.get("channel")
        if not isinstance(channel, str) or not channel:
            self.fail((), f"channel is required (an axis name or {ALL_CHANNELS!r})")
        return Register(
            address=address,
            dtype=dtype,
            order=self.order(dtype),
            scale=scale,
            unit=str(row.get("unit", "")),
            feature=feature,
            channel=channel,
            ignore=None if ignore is None else str(ignore),
            function_code=self.function_code(),
            offset=self.number("offset", 0.0),
            valid=self.valid(),
            sentinels=self.sentinels(dtype),
        )


def parse_profile(doc: Document, expected_name: str | None = None) -> Profile:
    """Validate a parsed profile document.

    Args:
        doc: the YAML document with positions (drivers.datafiles.parse_document).
        expected_name: when given, the profile's ``name`` must equal it (the file stem).

    Raises:
        ProfileError: the first problem, with file:line:column and key.
    """
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error((), "expected a mapping at the top level", ProfileError)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise doc.error((unknown[0],), unknown_key(unknown[0], _TOP_KEYS), ProfileError)
    name = item_name(doc, expected_name, ProfileError)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - _DEFAULT_KEYS:
        raise doc.error(
            ("defaults",), f"defaults may set only {sorted(_DEFAULT_KEYS)}", ProfileError
        )
    if "table" in data:
        defaults = {"table": data["table"], **defaults}
    all_zero = data.get("all_zero", "fault")
    if all_zero not in ("fault", "valid"):
        raise doc.error(
            ("all_zero",), f"all_zero must be fault or valid, got {all_zero!r}", ProfileError
        )
    rows = data.get("registers")
    if not isinstance(rows, list) or not rows:
        raise doc.error(("registers",), "registers must be a non-empty list", ProfileError)
    parsed = [_Row(doc, i, row, defaults).parse() for i, row in enumerate(rows)]
    _check_overlaps(parsed, doc)
    used = [r for r in parsed if r.ignore is None]
    if not used:
        raise doc.error(("registers",), "every register row is ignored", ProfileError)
    _check_duplicates(parsed, doc)

    def key(r: Register) -> tuple[int, int]:
        return r.function_code, r.address

    return Profile(
        name=name,
        model=str(data.get("model", name)),
        registers=tuple(sorted(used, key=key)),
        ignored=tuple(sorted((r for r in parsed if r.ignore is not None), key=key)),
        source=doc.source,
        document=str(data.get("document", "")),
        all_zero_fault=all_zero == "fault",
    )


def _check_overlaps(rows: list[Register], doc: Document) -> None:
    owner: dict[tuple[int, int], int] = {}
    for i, reg in enumerate(rows):
        for addr in range(reg.address, reg.end):
            j = owner.setdefault((reg.function_code, addr), i)
            if j != i:
                raise doc.error(
                    ("registers", i, "address"),
                    f"address {addr} overlaps registers[{j}] (address {rows[j].address})",
                    ProfileError,
                )


def _check_duplicates(rows: list[Register], doc: Document) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, reg in enumerate(rows):
        if reg.ignore is not None or reg.feature is None:
            continue
        for (channel, feature), other in seen.items():
            clash = channel == reg.channel or ALL_CHANNELS in (channel, reg.channel)
            if feature == reg.feature and clash:
                raise doc.error(
                    ("registers", i, "feature"),
                    f"feature {reg.feature!r} on channel {reg.channel!r} is already given by "
                    f"registers[{other}] (channel {channel!r})",
                    ProfileError,
                )
        seen[(reg.channel, reg.feature)] = i
