"""Read planning: pure, no sockets."""

from __future__ import annotations

import pytest

from drivers.decoders import canonical_type
from drivers.modbus import MAX_READ_REGISTERS, plan_profile, plan_reads
from drivers.profiles import Register, load_profile


def reg(address: int, type_: str = "uint16", feature: str = "kurtosis") -> Register:
    dtype = canonical_type(type_)
    order = "AB" if dtype.registers == 1 else "ABCD"
    return Register(
        address=address, dtype=dtype, order=order, scale=1.0, unit="", feature=feature, channel="z"
    )


def spans(blocks) -> list[tuple[int, int]]:
    return [(b.address, b.count) for b in blocks]


def test_adjacent_registers_merge() -> None:
    assert spans(plan_reads([reg(12), reg(10), reg(11)])) == [(10, 3)]


def test_gap_splits_unless_known_or_allowed() -> None:
    rows = [reg(10), reg(13)]
    assert spans(plan_reads(rows)) == [(10, 1), (13, 1)]
    assert spans(plan_reads(rows, max_gap=2)) == [(10, 4)]
    assert spans(plan_reads(rows, max_gap=1)) == [(10, 1), (13, 1)]
    # registers the device serves (ignored rows) are safe to read through
    assert spans(plan_reads(rows, known=[reg(11), reg(12)])) == [(10, 4)]
    assert spans(plan_reads(rows, known=[reg(11)], max_gap=1)) == [(10, 4)]


def test_split_at_125_registers() -> None:
    rows = [reg(a) for a in range(300)]
    blocks = plan_reads(rows)
    assert spans(blocks) == [(0, 125), (125, 125), (250, 50)]
    assert all(b.count <= MAX_READ_REGISTERS for b in blocks)
    assert sum(len(b.registers) for b in blocks) == 300


def test_a_32_bit_value_is_never_split() -> None:
    rows = [reg(a) for a in range(124)] + [reg(124, "uint32")]
    assert spans(plan_reads(rows)) == [(0, 124), (124, 2)]
    assert spans(plan_reads([reg(0, "float32"), reg(2, "int32")], max_count=3)) == [(0, 2), (2, 2)]


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_count"):
        plan_reads([reg(0)], max_count=126)
    with pytest.raises(ValueError, match="max_gap"):
        plan_reads([reg(0)], max_gap=-1)
    assert plan_reads([]) == ()


def test_qm30vt2_is_one_read() -> None:
    p = load_profile("banner-qm30vt2")
    plan = plan_profile(p)
    assert plan.blocks[0].function_code == 3
    assert spans(plan.blocks) == [(5201, 21)]  # 5200 is an ignored edge row: not read
    assert spans(plan_profile(p, ["z"]).blocks) == [(5201, 20)]
    assert spans(plan_profile(p, ["x"]).blocks) == [(5203, 19)]
    with pytest.raises(ValueError, match="channels"):
        plan_profile(p, ["y"])


def test_block_values_decode_in_place() -> None:
    p = load_profile("banner-qm30vt2")
    (block,) = plan_profile(p).blocks
    words = [0] * block.count
    words[5201 - block.address] = 2800  # Z velocity RMS, /1000
    words[5203 - block.address] = 4512  # temperature, /100
    values = {(r.address): v for r, v in block.values(words)}
    assert values[5201] == 2.8
    assert values[5203] == 45.12
    with pytest.raises(ValueError, match="expected 21 registers"):
        block.values(words[:-1])
