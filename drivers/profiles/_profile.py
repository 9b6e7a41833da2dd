"""Register profiles: the model a profile file is loaded into (frozen dataclasses).

A profile is data (see ``banner-qm30vt2.yaml`` and ``docs/profiles.md``); adding a sensor
model needs no Python. Each row says where a value lives (function 3 or 4, address, type,
word and byte order), how to scale it (scale, offset, unit), what it is (feature,
channel), and which values are garbage (valid range, sentinels). Parsing and checking a
file is ``_parse``'s job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from drivers.decoders import DataType, decode, encode

ALL_CHANNELS = "all"  # channel name of a value shared by every axis (temperature)
FLOAT32_DIGITS = 7  # significant decimal digits a float32 register carries (scaled())

# Quality flags: why a value is not used (counted per sensor and reason in /metrics).
SENTINEL = "sentinel"
OUT_OF_RANGE = "out_of_range"
NOT_FINITE = "not_finite"
ALL_ZERO = "all_zero"
SATURATED = "saturated"
QUALITY_REASONS = (SENTINEL, OUT_OF_RANGE, NOT_FINITE, ALL_ZERO, SATURATED)

# A raw integer at or within this many codes of a full-scale code is a clipped, railed or
# disconnected sensor, not a measurement: 0x7FFE read as 32.766 mm/s was a zone D alert.
# Full scale: the type's extreme codes, and in an unsigned 16/32-bit row also the signed
# maximum (0x7FFF, 0x7FFFFFFF), the over-range mark of a device with a signed converter,
# unless the row's valid range reaches it: there it is the middle of the sensor's scale (a
# QM30VT2 reads velocity to 46 mm/s, raw 46000: 0x7FFE is a real 32.766 mm/s).
SATURATION_CODES = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Register:
    """One row of a profile: where a value lives and how to turn it into a feature.

    Attributes:
        address: 0-based wire address of the first register.
        dtype: data type (width and signedness).
        order: canonical byte order (``AB``/``BA`` or ``ABCD``/``CDAB``/``BADC``/``DCBA``).
        scale: multiplier from the raw number to ``unit``.
        unit: unit after scaling, for humans.
        feature: canonical feature name, or None for an ignored row.
        channel: axis name, or ``all`` for a value every axis shares.
        ignore: why the row is not used (None when it is used).
        function_code: 3 (holding registers) or 4 (input registers).
        offset: added after scaling (value = raw x scale + offset).
        valid: (lowest, highest) plausible scaled value; None: any finite value.
        sentinels: raw values the device uses for "no value" (e.g. 65535).
    """

    address: int
    dtype: DataType
    order: str
    scale: float
    unit: str
    feature: str | None
    channel: str
    ignore: str | None = None
    function_code: int = 3
    offset: float = 0.0
    valid: tuple[float, float] | None = None
    sentinels: frozenset[float] = frozenset()
    _divisor: float = field(default=0.0, init=False, repr=False, compare=False)
    _rails: tuple[tuple[int, int], ...] = field(default=(), init=False, repr=False, compare=False)
    # Raw values strictly between these are on no rail: almost every reading, checked
    # with one comparison (the rails are scanned on every register of every poll).
    _plain: tuple[float, float] = field(
        default=(-math.inf, math.inf), init=False, repr=False, compare=False
    )

    @property
    def count(self) -> int:
        """Width in registers."""
        return self.dtype.registers

    @property
    def end(self) -> int:
        """One past the last register address."""
        return self.address + self.dtype.registers

    def __post_init__(self) -> None:
        # Divide by an integral divisor when the scale is one (0.001 -> / 1000), so that
        # 12 * 0.1 reads as 1.2 and not 1.2000000000000002. Decided once, used every poll.
        divisor = 1.0 / self.scale
        integral = abs(self.scale) < 1 and abs(divisor - round(divisor)) < 1e-9
        object.__setattr__(self, "_divisor", float(round(divisor)) if integral else 0.0)
        rails = _rails(self.dtype)
        if not self.dtype.code.islower() and len(rails) == 2 and self.valid is not None:
            lo, hi = sorted(self.scaled(float(raw)) for raw in rails[1])
            if lo <= self.valid[1] and hi >= self.valid[0]:  # a value the sensor reads
                rails = rails[:1]
        object.__setattr__(self, "_rails", rails)
        low = max((hi for lo, hi in rails if hi < 0), default=-math.inf)
        object.__setattr__(
            self, "_plain", (low, min((lo for lo, _ in rails if lo > 0), default=math.inf))
        )

    def scaled(self, raw: float) -> float:
        """The scaled value of a raw number."""
        if self._divisor:
            return raw / self._divisor + self.offset
        value = raw * self.scale + self.offset
        if self.dtype.is_float and math.isfinite(value):
            # A float32 carries about 7 significant digits and nothing beyond them: the
            # sensor's 7.1 mm/s sent as in/s (0.27952757) and scaled by 25.4 read
            # 7.0999996, ISO zone C instead of D (a boundary value is the upper zone).
            return float(f"{value:.{FLOAT32_DIGITS}g}")
        return value

    def value(self, registers: Sequence[int]) -> float:
        """The scaled value of this row's raw registers."""
        return self.scaled(float(decode(registers, self.dtype, self.order)))

    def assess(self, raw: int | float) -> tuple[float, str | None]:
        """The scaled value of a raw number and why it is garbage (a quality reason), or
        None when it is usable."""
        if raw in self.sentinels:
            return float(raw), SENTINEL
        if not math.isfinite(raw):
            return float(raw), NOT_FINITE
        value = self.scaled(float(raw))
        low, high = self._plain
        if not low < raw < high and any(lo <= raw <= hi for lo, hi in self._rails):
            return value, SATURATED
        if self.valid is not None and not self.valid[0] <= value <= self.valid[1]:
            return value, OUT_OF_RANGE
        return value, None

    def raw(self, value: float) -> tuple[int, ...]:
        """The wire registers that encode ``value`` (inverse of ``value``, clamped)."""
        return encode((value - self.offset) / self.scale, self.dtype, self.order)


def _rails(dtype: DataType) -> tuple[tuple[int, int], ...]:
    """The raw ranges (inclusive) that read as a saturated sensor (SATURATION_CODES)."""
    if dtype.is_float:
        return ()
    bits, n = 16 * dtype.registers, SATURATION_CODES
    signed_max = (1 << (bits - 1)) - 1
    if dtype.code.islower():  # signed: both rails (the minimum itself is the usual sentinel)
        return ((signed_max - n, signed_max), (-signed_max - 1, -signed_max - 1 + n))
    top = (1 << bits) - 1
    return ((top - n, top), (signed_max - n, signed_max))


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """A sensor model's register map.

    Attributes:
        name: the profile's name (file stem), e.g. ``banner-qm30vt2``.
        model: human-readable model name.
        registers: the used rows, sorted by (function, address).
        ignored: rows listed for completeness but not read as features.
        source: where the profile was loaded from, for messages.
        document: the public document the map comes from.
        all_zero_fault: an answer whose used registers are all zero is garbage.
    """

    name: str
    model: str
    registers: tuple[Register, ...]
    ignored: tuple[Register, ...] = ()
    source: str = ""
    document: str = ""
    all_zero_fault: bool = True

    @property
    def channels(self) -> tuple[str, ...]:
        """Axis names in first-seen order, without ``all``."""
        seen: dict[str, None] = {}
        for reg in self.registers:
            if reg.channel != ALL_CHANNELS:
                seen.setdefault(reg.channel, None)
        return tuple(seen)

    @property
    def function_codes(self) -> tuple[int, ...]:
        """The read functions the profile uses, sorted."""
        return tuple(sorted({r.function_code for r in self.registers}))

    def registers_for(self, channel: str) -> tuple[Register, ...]:
        """The rows that feed ``channel``'s reading: its own plus the shared ones."""
        return tuple(r for r in self.registers if r.channel in (channel, ALL_CHANNELS))

    def span(self, function_code: int | None = None) -> tuple[int, int]:
        """(first address, one past the last) over all rows of a table, ignored included."""
        rows = [
            r
            for r in self.registers + self.ignored
            if function_code is None or r.function_code == function_code
        ]
        return min(r.address for r in rows), max(r.end for r in rows)
