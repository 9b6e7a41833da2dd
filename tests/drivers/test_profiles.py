"""Register profiles: the shipped QM30VT2 map and every validation error."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from drivers.datafiles import parse_document
from drivers.errors import DataFileError, ProfileError
from drivers.profiles import (
    ProfileLibrary,
    load_profile,
    load_profile_file,
    parse_profile,
    profile_names,
)
from drivers.reading import FEATURE_NAMES


def parse(text: str, source: str = "demo.yaml", expected_name: str | None = None):
    return parse_profile(parse_document(text, source), expected_name)


def test_shipped_profiles_are_listed_and_load() -> None:
    assert "banner-qm30vt2" in profile_names()
    for name in profile_names():
        assert load_profile(name).name == name


def test_qm30vt2_matches_the_datasheet_map() -> None:
    p = load_profile("banner-qm30vt2")
    assert p.function_codes == (3,)
    assert p.channels == ("z", "x")
    assert p.span() == (5200, 5222)  # 22 registers from 45201
    by_addr = {r.address: r for r in p.registers}
    assert by_addr[5201].feature == "velocity_rms_mm_s" and by_addr[5201].channel == "z"
    assert by_addr[5205].feature == "velocity_rms_mm_s" and by_addr[5205].channel == "x"
    assert by_addr[5203].feature == "temperature_c" and by_addr[5203].channel == "all"
    assert by_addr[5203].dtype.name == "int16"
    # the imperial duplicates are listed but ignored
    assert {r.address for r in p.ignored} == {5200, 5202, 5204, 5216, 5218}
    assert all(r.feature in FEATURE_NAMES for r in p.registers)
    # scaled decoding: raw 1234 at /1000 -> 1.234 mm/s; -1234 at /100 -> -12.34 degC
    assert by_addr[5201].value([1234]) == 1.234
    assert by_addr[5203].value([0x10000 - 1234]) == -12.34
    assert by_addr[5208].value([247]) == 24.7
    z = {r.feature for r in p.registers_for("z")}
    assert z == {
        "velocity_rms_mm_s",
        "velocity_peak_mm_s",
        "accel_rms_g",
        "accel_peak_g",
        "hf_accel_rms_g",
        "kurtosis",
        "crest_factor",
        "temperature_c",
        "peak_frequency_hz",
    }


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ProfileError, match=r"unknown profile 'nope'.*banner-qm30vt2"):
        load_profile("nope")
    with pytest.raises(ProfileError):
        load_profile("../banner-qm30vt2")  # never a path


HEAD = "name: demo\ntable: holding\nregisters:\n"
ROW_OK = "  - {address: 10, type: uint16, scale: 0.001, feature: kurtosis, channel: z}\n"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            "  - {address: 11, type: uint17, feature: kurtosis, channel: z}\n",
            r"demo\.yaml:5:25: registers\[1\]\.type: unknown type 'uint17'",
        ),
        (
            "  - {address: 10, type: int16, feature: crest_factor, channel: z}\n",
            r"demo\.yaml:5:15: registers\[1\]\.address: address 10 overlaps registers\[0\]",
        ),
        (
            "  - {address: 9, type: float32, feature: crest_factor, channel: z}\n",
            r"registers\[1\]\.address: address 10 overlaps registers\[0\] \(address 10\)",
        ),
        (
            "  - {address: 11, type: uint16, feature: velocity_mm_s, channel: z}\n",
            r"demo\.yaml:5:42: registers\[1\]\.feature: unknown feature 'velocity_mm_s'",
        ),
        (
            "  - {address: 11, type: uint16, feature: kurtosis, channel: all}\n",
            r"registers\[1\]\.feature: feature 'kurtosis' on channel 'all' is already given",
        ),
        (
            "  - {address: 11, type: uint16, order: CDAB, feature: crest_factor, channel: z}\n",
            r"unknown byte order 'CDAB' for a 16-bit value",
        ),
        (
            "  - {address: 11, type: uint16, scale: 0, feature: crest_factor, channel: z}\n",
            r"scale must not be 0",
        ),
        (
            "  - {address: 70000, type: uint16, feature: crest_factor, channel: z}\n",
            r"address must be an integer 0\.\.65535",
        ),
        (
            "  - {address: 11, type: uint16, feature: crest_factor, chanel: z}\n",
            r"registers\[1\]\.chanel: unknown key 'chanel'",
        ),
        (
            "  - {address: 11, type: uint16, feature: crest_factor}\n",
            r"channel is required",
        ),
    ],
)
def test_validation_errors_name_file_line_and_row(tmp_path: Path, rows: str, message: str) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(HEAD + ROW_OK + rows)
    with pytest.raises(ProfileError, match=message) as info:
        load_profile_file(path)
    assert str(path) in str(info.value)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not match the file name"):
        parse(HEAD.replace("demo", "other") + ROW_OK, "x/demo.yaml", expected_name="demo")
    with pytest.raises(ProfileError, match="table must be holding or input"):
        parse(HEAD.replace("holding", "coils") + ROW_OK)
    with pytest.raises(ProfileError, match="registers must be a non-empty list"):
        parse("name: demo\nregisters: []\n")
    with pytest.raises(DataFileError, match=r"demo\.yaml:2:1: invalid YAML"):
        parse("name: [demo\n")
    with pytest.raises(DataFileError, match="cannot read"):
        load_profile_file(tmp_path / "missing.yaml")


def test_32_bit_rows_and_input_table() -> None:
    text = (
        "name: demo\ntable: input\nregisters:\n"
        "  - {address: 0, type: float32, order: word-swap, feature: kurtosis, channel: z}\n"
        "  - {address: 2, type: int32, scale: 0.01, feature: temperature_c, channel: all}\n"
    )
    p = parse(text)
    assert p.function_codes == (4,)
    k, t = p.registers
    assert (k.order, k.count, t.order, t.count) == ("CDAB", 2, "ABCD", 2)
    assert k.value([0x0000, 0x3FC0]) == 1.5
    assert t.value(t.raw(-12.5)) == -12.5


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{address: 1, type: uint16, count: 130, feature: kurtosis, channel: z}",
         r"demo\.yaml:4:39: registers\[0\]\.count: count 130 is above the protocol limit"),
        ("{address: 1, type: float32, count: 1, feature: kurtosis, channel: z}",
         r"registers\[0\]\.count: count 1 does not fit float32 \(2\)"),
        ("{address: 1, type: float64, feature: kurtosis, channel: z}",
         r"demo\.yaml:4:24: registers\[0\]\.type: unknown type 'float64'"),
        ("{address: 1, type: int16, sentinels: [70000], feature: kurtosis, channel: z}",
         r"registers\[0\]\.sentinels\[0\]: sentinel 70000 does not fit int16"),
        ("{address: 1, type: int16, valid: [5, 1], feature: kurtosis, channel: z}",
         r"registers\[0\]\.valid: valid must be \[lowest, highest\]"),
        ("{address: 1, type: uint16, word_order: little, feature: kurtosis, channel: z}",
         r"registers\[0\]\.word_order: uint16 is one register: no word order"),
        ("{address: 1, type: uint16, function: 1, feature: kurtosis, channel: z}",
         r"registers\[0\]\.function: function must be 3 or 4"),
    ],
)  # fmt: skip
def test_check_errors_name_file_line_column_and_key(row: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse(f"name: demo\ntable: holding\nregisters:\n  - {row}\n")


def test_generic_rows_decode_with_offset_orders_and_flags() -> None:
    p = parse(
        "name: demo\ndefaults: {sentinels: [0xFFFF]}\nregisters:\n"
        "  - {address: 0, type: uint32, word_order: little, byte_order: big, scale: 0.1,"
        " offset: -40, feature: temperature_c, channel: all, valid: [-40, 125]}\n"
        "  - {address: 10, function: 4, type: int16, byte_order: little, feature: kurtosis,"
        " channel: z, valid: [1, 50], sentinels: [0x8000]}\n"
    )
    temp, kurt = sorted(p.registers, key=lambda r: r.function_code)
    assert (temp.order, temp.function_code, kurt.order, kurt.function_code) == ("CDAB", 3, "BA", 4)
    assert temp.value(temp.raw(21.5)) == pytest.approx(21.5)
    assert temp.assess(650) == (25.0, None)
    assert temp.assess(2000)[1] == "out_of_range"
    assert kurt.sentinels == {-32768}  # 0x8000 written for an int16 means -32768
    assert kurt.assess(-32768)[1] == "sentinel"
    assert kurt.assess(float("nan"))[1] == "not_finite"
    assert p.function_codes == (3, 4)


def test_profiles_folder_adds_and_reports_with_positions(tmp_path: Path) -> None:
    (tmp_path / "good-one.yaml").write_text(HEAD.replace("demo", "good-one") + ROW_OK)
    (tmp_path / "bad-one.yaml").write_text(
        "name: bad-one\nregisters:\n  - {address: 1, type: uint99, feature: kurtosis, channel: z}\n"
    )
    (tmp_path / "banner-qm30vt2.yaml").write_text(HEAD.replace("demo", "banner-qm30vt2") + ROW_OK)
    (tmp_path / "notes.txt").write_text("not a profile")
    lib = ProfileLibrary.load(tmp_path)
    assert "good-one" in lib and "banner-qm30vt2" in lib and "bad-one" not in lib
    messages = sorted(str(e) for e in lib.errors)
    assert any("bad-one.yaml:3:24: registers[0].type: unknown type 'uint99'" in m for m in messages)
    assert any("is shipped with the agent" in m for m in messages)
    assert lib.get("banner-qm30vt2").source.startswith("drivers/profiles/")  # shipped wins


def test_shipped_profiles_cite_their_document() -> None:
    for name in profile_names():
        assert load_profile(name).document, name


@pytest.mark.parametrize("boundary", [1.12, 1.4, 2.8, 3.5, 4.5, 7.1, 11.0, 11.2, 18.0])
def test_a_float32_in_s_register_at_an_iso_boundary_reads_as_the_boundary(
    boundary: float,
) -> None:
    """Before: a TriVibe reporting exactly 7.1 mm/s (its float32 in/s register, 0.27952757)
    read 7.0999996 mm/s after x 25.4: ISO zone C where the boundary belongs to zone D.
    Now a float32 row keeps the 7 significant digits the register carries."""
    reg = next(
        r
        for r in load_profile("machinesaver-trivibe").registers
        if r.feature == "velocity_rms_mm_s"
    )
    wire = struct.unpack(">HH", struct.pack(">f", boundary / 25.4))  # as the sensor sends it
    assert reg.value(list(wire)) == boundary
    assert reg.assess(struct.unpack(">f", struct.pack(">f", boundary / 25.4))[0]) == (
        boundary,
        None,
    )


@pytest.mark.parametrize(
    ("address", "raw", "reason"),
    [
        # The sensor reads velocity to 46 mm/s (raw 46000): the int16 maximum is the middle
        # of its scale, 0x7FFE a real 32.766 mm/s (was 'saturated': a zone D reading lost).
        (5201, 0x7FFE, None),
        (5201, 0x7FFD, None),
        (5219, 0x7FFE, None),  # peak velocity, valid to 65 mm/s
        (5201, 0xFFFE, "saturated"),  # the uint16 rail, not merely out of range
        (5201, 0x7FFF, "sentinel"),  # a declared sentinel stays one
        (5201, 7100, None),
        (5206, 0x7FFE, "saturated"),  # 32.766 g on a 0-20 g row: the over-range mark
        (5203, 32766, "saturated"),  # int16 temperature: both rails
        (5203, -32767, "saturated"),
        (5203, -1234, None),
    ],
)
def test_a_qm30vt2_value_at_its_full_scale_is_saturated_not_a_value(
    address: int, raw: int, reason: str | None
) -> None:
    reg = {r.address: r for r in load_profile("banner-qm30vt2").registers}[address]
    assert reg.assess(raw)[1] == reason


def test_a_float32_row_has_no_full_scale_code() -> None:
    p = parse(
        "name: demo\nregisters:\n - {address: 0, type: float32, unit: mm/s,"
        " feature: velocity_rms_mm_s, channel: z}\n"
    )
    assert p.registers[0].assess(32766.0) == (32766.0, None)


@pytest.mark.parametrize(
    ("valid", "reason"),
    [
        ("[0, 100]", None),  # the row reads past 0x7FFF: 0x7FFE is a value (3.34 g)
        ("[0, 2]", "saturated"),  # it does not: the signed over-range mark
        (None, "saturated"),  # its range unknown: the over-range mark
    ],
)
def test_the_signed_maximum_in_an_unsigned_row_is_saturated_only_beyond_its_range(
    valid: str | None, reason: str | None
) -> None:
    """An AMC AVM 2000R acceleration row (uint16, x0.001 m/s2 in g, valid 0-100 g): 3.34 g
    at raw 0x7FFE is a failing bearing's peak, not a clipped sensor. Its uint16 top stays."""
    v = "" if valid is None else f", valid: {valid}"
    p = parse(
        "name: demo\nregisters:\n - {address: 0, type: uint16, scale: 0.000101972, unit: g,"
        f" feature: accel_peak_g, channel: z{v}}}\n"
    )
    reg = p.registers[0]
    assert reg.assess(0x7FFE)[1] == reason
    assert reg.assess(0x7FFD)[1] == reason
    assert reg.assess(0xFFFE)[1] == "saturated"  # the register's own full scale


def test_an_ordinary_value_is_assessed_without_scanning_the_rails() -> None:
    """assess() runs for every register of every poll (17 per QM30VT2 poll, 34,000 a
    second at 2000 sensors): an ordinary value is told from a saturated one with one
    comparison. The rail scan (a generator per register) made assess 2.7x as costly as
    before saturation was detected (505 against 186 ns of CPU, 11 ms a second at 2000
    sensors; now 242 ns). Counted as Python-level calls, not timed."""
    regs = load_profile("banner-qm30vt2").registers
    calls: list[str] = []

    def count(frame: object, event: str, _arg: object) -> None:
        if event == "call":
            calls.append(frame.f_code.co_name)  # type: ignore[attr-defined]

    sys.setprofile(count)
    try:
        for reg in regs:
            reg.assess(100)
    finally:
        sys.setprofile(None)
    # assess and scaled per register, nothing else (before: the rail scan's generator).
    assert set(calls) <= {"assess", "scaled"}, sorted(set(calls))
    velocity = {r.address: r for r in regs}[5201]
    assert velocity.assess(0xFFFE)[1] == "saturated"  # still told, as before
