"""Register profiles: the shipped QM30VT2 map and every validation error."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.errors import ProfileError
from drivers.profiles import load_profile, load_profile_file, parse_profile, profile_names
from drivers.reading import FEATURE_NAMES


def test_shipped_profiles_are_listed_and_load() -> None:
    assert "banner-qm30vt2" in profile_names()
    for name in profile_names():
        assert load_profile(name).name == name


def test_qm30vt2_matches_the_datasheet_map() -> None:
    p = load_profile("banner-qm30vt2")
    assert p.function_code == 3
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
            r"demo\.yaml:5: registers\[1\]: \(address 11\) unknown type 'uint17'",
        ),
        (
            "  - {address: 10, type: int16, feature: crest_factor, channel: z}\n",
            r"demo\.yaml:5: registers\[1\]: address 10 overlaps registers\[0\]",
        ),
        (
            "  - {address: 9, type: float32, feature: crest_factor, channel: z}\n",
            r"registers\[1\]: address 10 overlaps registers\[0\] \(address 10\)",
        ),
        (
            "  - {address: 11, type: uint16, feature: velocity_mm_s, channel: z}\n",
            r"demo\.yaml:5: registers\[1\]: \(address 11\) unknown feature 'velocity_mm_s'",
        ),
        (
            "  - {address: 11, type: uint16, feature: kurtosis, channel: all}\n",
            r"registers\[1\]: feature 'kurtosis' on channel 'all' is already given",
        ),
        (
            "  - {address: 11, type: uint16, order: CDAB, feature: crest_factor, channel: z}\n",
            r"unknown byte order 'CDAB' for a 16-bit value",
        ),
        (
            "  - {address: 11, type: uint16, scale: 0, feature: crest_factor, channel: z}\n",
            r"scale must be a finite non-zero number",
        ),
        (
            "  - {address: 70000, type: uint16, feature: crest_factor, channel: z}\n",
            r"address must be an integer 0\.\.65535",
        ),
        (
            "  - {address: 11, type: uint16, feature: crest_factor, chanel: z}\n",
            r"unknown key\(s\) 'chanel'",
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
    with pytest.raises(ProfileError, match="does not match file"):
        parse_profile(HEAD.replace("demo", "other") + ROW_OK, "x/demo.yaml", expected_name="demo")
    with pytest.raises(ProfileError, match="table must be holding or input"):
        parse_profile(HEAD.replace("holding", "coils") + ROW_OK, "demo.yaml")
    with pytest.raises(ProfileError, match="registers must be a non-empty list"):
        parse_profile("name: demo\nregisters: []\n", "demo.yaml")
    with pytest.raises(ProfileError, match="invalid YAML"):
        parse_profile("name: [demo\n", "demo.yaml")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile_file(tmp_path / "missing.yaml")


def test_32_bit_rows_and_input_table() -> None:
    text = (
        "name: demo\ntable: input\nregisters:\n"
        "  - {address: 0, type: float32, order: word-swap, feature: kurtosis, channel: z}\n"
        "  - {address: 2, type: int32, scale: 0.01, feature: temperature_c, channel: all}\n"
    )
    p = parse_profile(text, "demo.yaml")
    assert p.function_code == 4
    k, t = p.registers
    assert (k.order, k.count, t.order, t.count) == ("CDAB", 2, "ABCD", 2)
    assert k.value([0x0000, 0x3FC0]) == 1.5
    assert t.value(t.raw(-12.5)) == -12.5
