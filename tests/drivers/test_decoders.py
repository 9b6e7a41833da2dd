"""Golden vectors for drivers.decoders: wire registers <-> values, per type and order."""

from __future__ import annotations

import math

import pytest

from drivers.decoders import canonical_order, canonical_type, decode, encode

# (type, order, wire registers, value). 0x11223344 = 287454020; float32 1.5 = 0x3FC00000.
GOLDEN = [
    ("uint16", "AB", (0x1234,), 0x1234),
    ("uint16", "BA", (0x3412,), 0x1234),
    ("uint16", "AB", (0xFFFF,), 65535),
    ("int16", "AB", (0xFFFE,), -2),
    ("int16", "AB", (0x8000,), -32768),
    ("int16", "BA", (0xFEFF,), -2),
    ("uint32", "ABCD", (0x1122, 0x3344), 287454020),
    ("uint32", "CDAB", (0x3344, 0x1122), 287454020),
    ("uint32", "BADC", (0x2211, 0x4433), 287454020),
    ("uint32", "DCBA", (0x4433, 0x2211), 287454020),
    ("int32", "ABCD", (0xFFFF, 0xFFFF), -1),
    ("int32", "CDAB", (0xFFFE, 0xFFFF), -2),
    ("float32", "ABCD", (0x3FC0, 0x0000), 1.5),
    ("float32", "CDAB", (0x0000, 0x3FC0), 1.5),
    ("float32", "BADC", (0xC03F, 0x0000), 1.5),
    ("float32", "DCBA", (0x0000, 0xC03F), 1.5),
    ("float32", "ABCD", (0xC120, 0x0000), -10.0),
]


@pytest.mark.parametrize(("type_", "order", "wire", "value"), GOLDEN)
def test_golden_decode(type_: str, order: str, wire: tuple[int, ...], value: float) -> None:
    assert decode(wire, canonical_type(type_), order) == value


@pytest.mark.parametrize(("type_", "order", "wire", "value"), GOLDEN)
def test_golden_encode(type_: str, order: str, wire: tuple[int, ...], value: float) -> None:
    assert encode(value, canonical_type(type_), order) == wire


@pytest.mark.parametrize(
    ("alias", "width", "canonical"),
    [
        (None, 1, "AB"),
        (None, 2, "ABCD"),
        ("big", 2, "ABCD"),
        ("Word_Swap", 2, "CDAB"),
        ("lsw-be", 2, "CDAB"),
        ("msw-le", 2, "BADC"),
        ("little", 2, "DCBA"),
        ("little", 1, "BA"),
        ("byte-swap", 1, "BA"),
        ("cdab", 2, "CDAB"),
    ],
)
def test_order_aliases_are_made_canonical(alias: str | None, width: int, canonical: str) -> None:
    assert canonical_order(alias, width) == canonical


@pytest.mark.parametrize(("alias", "width"), [("CDAB", 1), ("AB", 2), ("middle", 2)])
def test_order_that_does_not_fit_is_refused(alias: str, width: int) -> None:
    with pytest.raises(ValueError, match="byte order"):
        canonical_order(alias, width)


def test_type_aliases_and_unknown_type() -> None:
    assert canonical_type("U16").name == "uint16"
    assert canonical_type("float").name == "float32"
    with pytest.raises(ValueError, match="unknown type 'uint17'"):
        canonical_type("uint17")


def test_encode_clamps_and_rounds_instead_of_raising() -> None:
    assert encode(70000, canonical_type("uint16"), "AB") == (0xFFFF,)
    assert encode(-5, canonical_type("uint16"), "AB") == (0,)
    assert encode(-40000, canonical_type("int16"), "AB") == (0x8000,)
    assert encode(1233.9999, canonical_type("uint16"), "AB") == (1234,)
    assert encode(math.nan, canonical_type("uint16"), "AB") == (0,)


def test_decode_refuses_wrong_register_count() -> None:
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode((1,), canonical_type("uint32"), "ABCD")
