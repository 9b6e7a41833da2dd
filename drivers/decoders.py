"""Pure register <-> value conversions. No I/O, no logging.

Byte orders use the letters of the value's big-endian bytes (A = most significant):
``ABCD`` is plain big-endian over two registers, ``CDAB`` swaps the words, ``BADC`` swaps
the bytes inside each word, ``DCBA`` is fully little-endian. 16-bit types use ``AB`` or
``BA``. Aliases (``big``, ``word-swap``, ``msw-le``...) are made canonical here and
nowhere else.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MAX_READ_REGISTERS = 125  # Modbus limit for one read, functions 3 and 4 (spec section 6.3)


@dataclass(frozen=True, slots=True)
class DataType:
    """A register data type: its width in registers and its struct code."""

    name: str
    registers: int
    code: str  # struct format character, big-endian

    @property
    def is_float(self) -> bool:
        """True for IEEE-754 types."""
        return self.code in "fd"


DATA_TYPES: dict[str, DataType] = {
    t.name: t
    for t in (
        DataType("uint16", 1, "H"),
        DataType("int16", 1, "h"),
        DataType("uint32", 2, "I"),
        DataType("int32", 2, "i"),
        DataType("float32", 2, "f"),
    )
}

_TYPE_ALIASES = {
    "u16": "uint16",
    "i16": "int16",
    "u32": "uint32",
    "i32": "int32",
    "f32": "float32",
    "float": "float32",
}

# Alias -> canonical order, per width. The only place where order names are normalised.
_ORDER_ALIASES_32 = {
    "abcd": "ABCD",
    "big": "ABCD",
    "be": "ABCD",
    "big-endian": "ABCD",
    "msw-be": "ABCD",
    "cdab": "CDAB",
    "word-swap": "CDAB",
    "lsw-be": "CDAB",
    "badc": "BADC",
    "byte-swap": "BADC",
    "msw-le": "BADC",
    "dcba": "DCBA",
    "little": "DCBA",
    "le": "DCBA",
    "little-endian": "DCBA",
    "lsw-le": "DCBA",
}
_ORDER_ALIASES_16 = {
    "ab": "AB",
    "big": "AB",
    "be": "AB",
    "big-endian": "AB",
    "ba": "BA",
    "byte-swap": "BA",
    "little": "BA",
    "le": "BA",
    "little-endian": "BA",
}

ORDERS_16 = ("AB", "BA")
ORDERS_32 = ("ABCD", "CDAB", "BADC", "DCBA")


def canonical_type(name: str) -> DataType:
    """The data type named ``name`` (case-insensitive, aliases allowed).

    Raises:
        ValueError: unknown type.
    """
    key = name.strip().lower()
    key = _TYPE_ALIASES.get(key, key)
    try:
        return DATA_TYPES[key]
    except KeyError:
        known = ", ".join(DATA_TYPES)
        raise ValueError(f"unknown type {name!r}; expected one of {known}") from None


def canonical_order(name: str | None, registers: int) -> str:
    """The canonical byte order for a value ``registers`` wide.

    Args:
        name: an order or alias (``ABCD``, ``word-swap``, ``little``...); None = big-endian.
        registers: 1 or 2.

    Raises:
        ValueError: unknown order, or one that does not fit the width (``CDAB`` on 16 bits).
    """
    aliases = _ORDER_ALIASES_16 if registers == 1 else _ORDER_ALIASES_32
    if name is None:
        return "AB" if registers == 1 else "ABCD"
    key = name.strip().lower().replace("_", "-")
    try:
        return aliases[key]
    except KeyError:
        known = ", ".join(ORDERS_16 if registers == 1 else ORDERS_32)
        raise ValueError(
            f"unknown byte order {name!r} for a {16 * registers}-bit value; "
            f"expected one of {known} (or big, little, word-swap, byte-swap)"
        ) from None


def _permutation(order: str) -> list[int]:
    """Index into the big-endian value bytes for each wire byte position."""
    return [ord(ch) - ord("A") for ch in order]


def decode(registers: Sequence[int], dtype: DataType, order: str) -> int | float:
    """Decode raw registers into a number.

    Args:
        registers: exactly ``dtype.registers`` values, 0..65535, in wire order.
        dtype: the data type.
        order: a canonical order (see canonical_order).

    Raises:
        ValueError: wrong register count or out-of-range register.
    """
    if len(registers) != dtype.registers:
        raise ValueError(f"{dtype.name} needs {dtype.registers} registers, got {len(registers)}")
    wire = b"".join(r.to_bytes(2, "big") for r in registers)
    value_bytes = bytearray(len(wire))
    for pos, idx in enumerate(_permutation(order)):
        value_bytes[idx] = wire[pos]
    return struct.unpack(">" + dtype.code, bytes(value_bytes))[0]


def clamp_raw(raw: float, dtype: DataType) -> int | float:
    """Round and clamp ``raw`` into ``dtype``'s range (floats pass through)."""
    if dtype.is_float:
        return float(raw)
    bits = 16 * dtype.registers
    signed = dtype.code.islower()
    lo = -(1 << (bits - 1)) if signed else 0
    hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    if math.isnan(raw):
        return 0
    return max(lo, min(hi, round(raw)))


@functools.cache
def unpacker(dtype: DataType, order: str) -> Callable[[bytes, int], int | float]:
    """A fast decoder for one (type, order): ``f(buffer, byte_offset) -> number``.

    ``buffer`` holds registers as big-endian words, as they arrive on the wire; one block
    is packed once and every value of it is unpacked in place (the hot path of a poll).
    """
    st = struct.Struct(">" + dtype.code)
    if order in ("AB", "ABCD"):
        return lambda buf, offset: st.unpack_from(buf, offset)[0]
    source = [0] * st.size  # value byte i comes from wire byte source[i]
    for pos, idx in enumerate(_permutation(order)):
        source[idx] = pos

    def swapped(buf: bytes, offset: int) -> int | float:
        return st.unpack(bytes(buf[offset + i] for i in source))[0]

    return swapped


def encode(raw: int | float, dtype: DataType, order: str) -> tuple[int, ...]:
    """Encode a raw number into wire registers (inverse of decode).

    Integers are rounded and clamped to the type's range, so a simulator can write any
    value without raising.
    """
    value_bytes = struct.pack(">" + dtype.code, clamp_raw(raw, dtype))
    wire = bytearray(len(value_bytes))
    for pos, idx in enumerate(_permutation(order)):
        wire[pos] = value_bytes[idx]
    return tuple(int.from_bytes(wire[i : i + 2], "big") for i in range(0, len(wire), 2))


__all__ = [
    "DATA_TYPES",
    "MAX_READ_REGISTERS",
    "ORDERS_16",
    "ORDERS_32",
    "DataType",
    "canonical_order",
    "canonical_type",
    "clamp_raw",
    "decode",
    "encode",
    "unpacker",
]
