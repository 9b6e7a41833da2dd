"""Register profiles: one YAML file per sensor model, loaded into frozen dataclasses.

A profile is data (see ``banner-qm30vt2.yaml``); adding a sensor model needs no Python.
Every error names the file, the line and the register row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from drivers.decoders import DataType, canonical_order, canonical_type, decode, encode
from drivers.errors import ProfileError
from drivers.reading import FEATURE_NAMES

ALL_CHANNELS = "all"  # channel name of a value shared by every axis (temperature)
Table = Literal["holding", "input"]
FUNCTION_CODES: dict[str, int] = {"holding": 3, "input": 4}

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_TOP_KEYS = {"name", "model", "table", "registers"}
_ROW_KEYS = {"address", "type", "order", "scale", "unit", "feature", "channel", "ignore"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Register:
    """One row of a profile: where a value lives and how to turn it into a feature.

    Attributes:
        address: 0-based wire address of the first register.
        dtype: data type (width and signedness).
        order: canonical byte order (``AB``/``BA`` or ``ABCD``/``CDAB``/``BADC``/``DCBA``).
        scale: multiplier from the raw integer to ``unit``.
        unit: unit after scaling, for humans.
        feature: canonical feature name, or None for an ignored row.
        channel: axis name, or ``all`` for a value every axis shares.
        ignore: why the row is not used (None when it is used).
    """

    address: int
    dtype: DataType
    order: str
    scale: float
    unit: str
    feature: str | None
    channel: str
    ignore: str | None = None

    @property
    def count(self) -> int:
        """Width in registers."""
        return self.dtype.registers

    @property
    def end(self) -> int:
        """One past the last register address."""
        return self.address + self.dtype.registers

    def value(self, registers: Sequence[int]) -> float:
        """The scaled value of this row's raw registers."""
        raw = float(decode(registers, self.dtype, self.order))
        # Divide by an integral divisor when the scale is one (0.001 -> / 1000), so that
        # 12 * 0.1 reads as 1.2 and not 1.2000000000000002.
        divisor = 1.0 / self.scale
        if abs(self.scale) < 1 and abs(divisor - round(divisor)) < 1e-9:
            return raw / round(divisor)
        return raw * self.scale

    def raw(self, value: float) -> tuple[int, ...]:
        """The wire registers that encode ``value`` (inverse of ``value``, clamped)."""
        return encode(value / self.scale, self.dtype, self.order)


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """A sensor model's register map.

    Attributes:
        name: the profile's name (file stem), e.g. ``banner-qm30vt2``.
        model: human-readable model name.
        table: ``holding`` (function 3) or ``input`` (function 4).
        registers: the used rows, sorted by address.
        ignored: rows listed for completeness but not read as features.
        source: where the profile was loaded from, for messages.
    """

    name: str
    model: str
    table: Table
    registers: tuple[Register, ...]
    ignored: tuple[Register, ...] = ()
    source: str = ""

    @property
    def function_code(self) -> int:
        """The Modbus read function for this profile's table."""
        return FUNCTION_CODES[self.table]

    @property
    def channels(self) -> tuple[str, ...]:
        """Axis names in first-seen order, without ``all``."""
        seen: dict[str, None] = {}
        for reg in self.registers:
            if reg.channel != ALL_CHANNELS:
                seen.setdefault(reg.channel, None)
        return tuple(seen)

    def registers_for(self, channel: str) -> tuple[Register, ...]:
        """The rows that feed ``channel``'s reading: its own plus the shared ones."""
        return tuple(r for r in self.registers if r.channel in (channel, ALL_CHANNELS))

    def span(self) -> tuple[int, int]:
        """(first address, one past the last) over all rows, ignored ones included."""
        rows = self.registers + self.ignored
        return min(r.address for r in rows), max(r.end for r in rows)


def _row_lines(text: str) -> list[int]:
    """1-based line of each item of the top-level ``registers`` list (best effort)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if getattr(key, "value", None) == "registers" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _number(row: Mapping[str, Any], key: str, default: float | None, fail: Any) -> float:
    value = row.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        fail(f"{key} must be a number, got {value!r}")
    return float(value)


def _parse_row(index: int, row: Any, source: str, line: int | None) -> Register:
    def fail(message: str) -> None:
        raise ProfileError(message, source=source, row=index, line=line)

    if not isinstance(row, dict):
        fail(f"expected a mapping, got {type(row).__name__}")
    unknown = sorted(set(row) - _ROW_KEYS)
    if unknown:
        fail(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {sorted(_ROW_KEYS)}")
    address = row.get("address")
    if isinstance(address, bool) or not isinstance(address, int) or not 0 <= address <= 65535:
        fail(f"address must be an integer 0..65535 (0-based wire address), got {address!r}")
    if "type" not in row:
        fail("type is required (uint16, int16, uint32, int32, float32)")
    try:
        dtype = canonical_type(str(row["type"]))
        order = canonical_order(row.get("order"), dtype.registers)
    except ValueError as exc:
        fail(f"(address {address}) {exc}")
    if address + dtype.registers > 65536:
        fail(f"(address {address}) {dtype.name} runs past register 65535")
    scale = _number(row, "scale", 1.0, fail)
    if scale == 0 or not math.isfinite(scale):
        fail(f"(address {address}) scale must be a finite non-zero number, got {scale!r}")
    ignore = row.get("ignore")
    feature = row.get("feature")
    if ignore is None:
        if feature not in FEATURE_NAMES:
            known = ", ".join(sorted(FEATURE_NAMES))
            fail(f"(address {address}) unknown feature {feature!r}; expected one of {known}")
    elif feature is not None and feature not in FEATURE_NAMES:
        fail(f"(address {address}) unknown feature {feature!r}")
    channel = row.get("channel")
    if not isinstance(channel, str) or not channel:
        fail(f"(address {address}) channel is required (an axis name or {ALL_CHANNELS!r})")
    return Register(
        address=address,
        dtype=dtype,
        order=order,
        scale=scale,
        unit=str(row.get("unit", "")),
        feature=feature,
        channel=channel,
        ignore=None if ignore is None else str(ignore),
    )


def parse_profile(text: str, source: str, *, expected_name: str | None = None) -> Profile:
    """Parse and validate a profile's YAML text.

    Args:
        text: the YAML document.
        source: file name for messages.
        expected_name: when given, the profile's ``name`` must equal it (the file stem).

    Raises:
        ProfileError: any problem, naming the file, line and row.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ProfileError(f"invalid YAML: {exc}", source=source, line=line) from exc
    if not isinstance(data, dict):
        raise ProfileError("expected a mapping at the top level", source=source)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ProfileError(f"unknown top-level key(s) {unknown}", source=source)
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ProfileError(f"name must be a lower-case identifier, got {name!r}", source=source)
    if expected_name is not None and name != expected_name:
        raise ProfileError(f"name {name!r} does not match file {expected_name!r}", source=source)
    table = data.get("table", "holding")
    if table not in FUNCTION_CODES:
        raise ProfileError(f"table must be holding or input, got {table!r}", source=source)
    rows = data.get("registers")
    if not isinstance(rows, list) or not rows:
        raise ProfileError("registers must be a non-empty list", source=source)
    lines = _row_lines(text)
    parsed = [
        _parse_row(i, row, source, lines[i] if i < len(lines) else None)
        for i, row in enumerate(rows)
    ]
    _check_overlaps(parsed, source, lines)
    used = [r for r in parsed if r.ignore is None]
    if not used:
        raise ProfileError("every register row is ignored", source=source)
    _check_duplicates(parsed, source, lines)
    return Profile(
        name=name,
        model=str(data.get("model", name)),
        table=table,
        registers=tuple(sorted(used, key=lambda r: r.address)),
        ignored=tuple(sorted((r for r in parsed if r.ignore is not None), key=lambda r: r.address)),
        source=source,
    )


def _check_overlaps(rows: list[Register], source: str, lines: list[int]) -> None:
    owner: dict[int, int] = {}
    for i, reg in enumerate(rows):
        for addr in range(reg.address, reg.end):
            if addr in owner:
                j = owner[addr]
                raise ProfileError(
                    f"address {addr} overlaps registers[{j}] (address {rows[j].address})",
                    source=source,
                    row=i,
                    line=lines[i] if i < len(lines) else None,
                )
            owner[addr] = i


def _check_duplicates(rows: list[Register], source: str, lines: list[int]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, reg in enumerate(rows):
        if reg.ignore is not None or reg.feature is None:
            continue
        for key, other in seen.items():
            same_feature = key[1] == reg.feature
            clash = key[0] == reg.channel or ALL_CHANNELS in (key[0], reg.channel)
            if same_feature and clash:
                raise ProfileError(
                    f"feature {reg.feature!r} on channel {reg.channel!r} is already given by "
                    f"registers[{other}] (channel {key[0]!r})",
                    source=source,
                    row=i,
                    line=lines[i] if i < len(lines) else None,
                )
        seen[(reg.channel, reg.feature)] = i


_PACKAGE = "drivers.profiles"


def profile_names() -> list[str]:
    """Names of the profiles shipped with the package, sorted."""
    root = resources.files(_PACKAGE)
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in root.iterdir()
        if entry.name.endswith(".yaml") and entry.is_file()
    )


def load_profile(name: str) -> Profile:
    """Load a shipped profile by name (e.g. ``banner-qm30vt2``).

    Raises:
        ProfileError: unknown name or invalid file.
    """
    names = profile_names()
    if name not in names:
        raise ProfileError(
            f"unknown profile {name!r}; available: {', '.join(names)}", source=_PACKAGE
        )
    source = f"{name}.yaml"
    text = resources.files(_PACKAGE).joinpath(source).read_text(encoding="utf-8")
    return parse_profile(text, f"drivers/profiles/{source}", expected_name=name)


def load_profile_file(path: str | Path) -> Profile:
    """Load a profile from a file outside the package (site-specific sensor models).

    Raises:
        ProfileError: unreadable or invalid file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot read: {exc.strerror}", source=str(path)) from exc
    return parse_profile(text, str(path), expected_name=path.stem)
