"""Every shipped payload decoder on real bytes: golden values, flags, and each drop reason."""

from __future__ import annotations

import base64
import json
import math
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from drivers.datafiles import load_folder
from drivers.errors import PayloadError
from drivers.payloads import (
    DecoderLibrary,
    Payload,
    load_decoder,
    parse_decoder,
    shipped,
    to_readings,
)
from drivers.reading import ACCEL_PEAK, ACCEL_RMS, PEAK_FREQUENCY, TEMPERATURE, VELOCITY_RMS

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
MAC = "00:13:a2:00:41:9b:0c:01"


def ncd(**extra: object) -> dict[str, object]:
    """An NCD processed message (type 81 two-channel firmware, flat fields)."""
    msg: dict[str, object] = {"addr": MAC, "rssi": -61, "battery": 3.28, "temperature": 31.5}
    for i, axis in enumerate("xyz"):
        msg[f"{axis}_rms_ACC_G"] = 0.11 + i / 100
        msg[f"{axis}_max_ACC_G"] = 0.52 + i / 100
        msg[f"{axis}_velocity_mm_sec"] = 1.25 + i
        msg[f"{axis}_peak_one_Hz"] = 24.5 + i
        msg[f"{axis}_displacement_mm"] = 0.01
    msg.update(extra)
    return msg


def decode(name: str, raw: bytes | dict[str, object], now: datetime = NOW):  # type: ignore[no-untyped-def]
    body = json.dumps(raw).encode() if isinstance(raw, dict) else raw
    return load_decoder(name).decode(Payload(body), now)


def reason(name: str, raw: bytes | dict[str, object]) -> str:
    with pytest.raises(PayloadError) as info:
        decode(name, raw)
    return info.value.reason


def test_shipped_decoders_load_without_errors() -> None:
    lib = shipped()
    assert lib.errors == ()
    assert {"ncd-processed", "generic-json", "waveform-json", "raw-int16"} <= set(lib.names())


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "sensor_data"])
def test_ncd_processed_maps_every_axis_and_the_shared_temperature(nested: bool) -> None:
    msg = ncd()
    if nested:  # other firmware: the same fields under sensor_data
        msg = {"addr": MAC, "sensor_data": {k: v for k, v in msg.items() if k != "addr"}}
    d = decode("ncd-processed", msg)
    assert d.timestamp is None
    assert d.features["x"] == {
        VELOCITY_RMS: 1.25, ACCEL_RMS: 0.11, ACCEL_PEAK: 0.52, PEAK_FREQUENCY: 24.5
    }  # fmt: skip
    assert d.features["z"][VELOCITY_RMS] == 3.25
    assert d.features["all"] == {TEMPERATURE: 31.5}
    readings = to_readings("fan-3", ["z", "x"], d, NOW)
    assert [(r.channel, r.quality, r.transport) for r in readings] == [
        ("z", "good", "mqtt"),
        ("x", "good", "mqtt"),
    ]
    assert readings[0].features[TEMPERATURE] == 31.5 and readings[0].timestamp == NOW


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2026-11-25T11:59:00Z", datetime(2026, 11, 25, 11, 59, tzinfo=UTC)),
        ("2026-11-25T12:59:00+01:00", datetime(2026, 11, 25, 11, 59, tzinfo=UTC)),
        ("2026-11-25T11:59:00", datetime(2026, 11, 25, 11, 59, tzinfo=UTC)),  # no offset: UTC
        (1_795_000_000, datetime.fromtimestamp(1_795_000_000, UTC)),
        (1_795_000_000_500, datetime.fromtimestamp(1_795_000_000.5, UTC)),  # milliseconds
    ],
)
def test_timestamps_iso_or_epoch(given: object, expected: datetime) -> None:
    assert decode("ncd-processed", ncd(timestamp=given)).timestamp == expected


def test_monotonic_time_only_for_readings_stamped_at_receipt() -> None:
    """Durations run on the receipt's monotonic time; a sensor's own clock stays its own."""
    at_receipt = to_readings("s", ["z"], decode("ncd-processed", ncd()), NOW, received_mono_s=7.5)
    own = decode("ncd-processed", ncd(timestamp="2026-11-25T11:59:00Z"))
    stamped = to_readings("s", ["z"], own, NOW, received_mono_s=7.5)
    assert [r.mono_s for r in at_receipt] == [7.5]
    assert [r.mono_s for r in stamped] == [None]


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ((NOW + timedelta(minutes=6)).isoformat(), "future_timestamp"),
        ("1999-12-31T23:59:59Z", "old_timestamp"),
        (0, "old_timestamp"),
        ("yesterday", "bad_timestamp"),
        (1e300, "old_timestamp"),
        (True, "wrong_type"),
        ([2026], "wrong_type"),
    ],
)
def test_implausible_timestamps_drop_the_message(given: object, why: str) -> None:
    assert reason("ncd-processed", ncd(timestamp=given)) == why


def test_a_clock_a_little_ahead_is_accepted() -> None:
    ahead = NOW + timedelta(minutes=4)
    assert decode("ncd-processed", ncd(timestamp=ahead.isoformat())).timestamp == ahead


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "malformed"),
        (b"{not json", "malformed"),
        (b"\xff\xfe\x00garbage", "malformed"),
        (b"[1, 2, 3]", "malformed"),
        (b'"a string"', "malformed"),
        (b"[" * 100_000, "malformed"),  # recursion bomb
        (json.dumps({"addr": MAC}).encode(), "missing_field"),
        (json.dumps(ncd(x_velocity_mm_sec="1.2")).encode(), "wrong_type"),
        (json.dumps(ncd(x_velocity_mm_sec=[1.2])).encode(), "wrong_type"),
        (json.dumps(ncd(x_velocity_mm_sec=True)).encode(), "wrong_type"),
        (json.dumps({k: v for k, v in ncd().items() if k != "y_velocity_mm_sec"}).encode(),
         "missing_field"),
        # The same key twice: json would keep the last value (99 mm/s, zone D) silently.
        (json.dumps(ncd())[:-1].encode() + b', "z_velocity_mm_sec": 99.0}', "malformed"),
        (b'{"addr": "a", "sensor_data": {"x": 1, "x": 2}}', "malformed"),
        (b'{"x": 1' + b"0" * 5000 + b"}", "malformed"),  # beyond int's 4300 digits
    ],
)  # fmt: skip
def test_hostile_payloads_are_refused_with_a_reason(raw: bytes, why: str) -> None:
    assert reason("ncd-processed", raw) == why


def test_nan_inf_and_out_of_range_are_flagged_never_analysed() -> None:
    raw = json.dumps(ncd(x_velocity_mm_sec=math.nan, z_velocity_mm_sec=9999.0)).encode()
    assert b"NaN" in raw  # what a careless publisher sends
    d = decode("ncd-processed", raw)
    assert d.flags == {
        "x": ["velocity_rms_mm_s:not_finite"],
        "z": ["velocity_rms_mm_s:out_of_range"],
    }
    readings = {r.channel: r for r in to_readings("s", ["x", "y", "z"], d, NOW)}
    assert readings["x"].quality == "bad" and VELOCITY_RMS not in readings["x"].features
    assert readings["z"].quality == "bad" and readings["z"].flags == (
        "velocity_rms_mm_s:out_of_range",
    )
    assert readings["y"].quality == "good"
    hot = decode("ncd-processed", ncd(temperature=math.inf))
    assert all(r.quality == "bad" for r in to_readings("s", ["x", "y"], hot, NOW))


def test_optional_fields_may_be_missing() -> None:
    msg = {k: v for k, v in ncd().items() if "peak_one" not in k and k != "temperature"}
    d = decode("ncd-processed", msg)
    assert PEAK_FREQUENCY not in d.features["x"] and "all" not in d.features


def test_generic_json_field_map() -> None:
    msg = {"id": "fan-3", "time": "2026-11-25T11:00:00Z", "temperature_c": 40.0,
           "x": {"velocity_rms_mm_s": 2.5, "kurtosis": 3.2, "crest_factor": 3.1},
           "z": {"velocity_rms_mm_s": -1.0}}  # fmt: skip
    d = decode("generic-json", msg)
    assert d.timestamp == datetime(2026, 11, 25, 11, tzinfo=UTC)
    assert d.features["x"] == {VELOCITY_RMS: 2.5, "kurtosis": 3.2, "crest_factor": 3.1}
    assert d.flags == {"z": ["velocity_rms_mm_s:out_of_range"]}


def test_site_decoder_with_scale_offset_and_sentinels(tmp_path: Path) -> None:
    (tmp_path / "site-gw.yaml").write_text(
        "name: site-gw\nformat: json-features\nroots: [data]\nfields:\n"
        "  - {path: v.z, feature: velocity_rms_mm_s, channel: z, scale: 25.4, required: true}\n"
        "  - {path: t, feature: temperature_c, channel: all, scale: 0.5556, offset: -17.78,"
        " sentinels: [-999]}\n"
    )
    lib = DecoderLibrary.load(tmp_path)
    assert lib.errors == ()
    dec = lib.get("site-gw")
    d = dec.decode(Payload(b'{"data": {"v": {"z": 0.1}, "t": 212}}'), NOW)
    assert d.features["z"][VELOCITY_RMS] == pytest.approx(2.54)
    assert d.features["all"][TEMPERATURE] == pytest.approx(100.0, abs=0.01)
    d = dec.decode(Payload(b'{"data": {"v": {"z": 0.1}, "t": -999}}'), NOW)
    assert d.flags == {"all": ["temperature_c:sentinel"]}


def wave_msg(n: int = 2560, fs: float = 25600.0, **extra: object) -> dict[str, object]:
    t = np.arange(n) / fs
    x = 0.5 * np.sin(2 * np.pi * 100 * t)
    return {"addr": MAC, "odr_hz": fs, "axes": {"x": x.tolist(), "z": (x / 2).tolist()}, **extra}


def test_waveform_json_float_arrays() -> None:
    d = decode("waveform-json", wave_msg(timestamp="2026-11-25T11:00:00Z"))
    assert set(d.waveforms) == {"x", "z"} and d.features == {}
    assert d.waveforms["x"].fs_hz == 25600.0 and d.waveforms["x"].samples.shape == (2560,)
    assert float(np.sqrt(np.mean(d.waveforms["x"].samples ** 2))) == pytest.approx(0.5 / 2**0.5)
    (r,) = to_readings("s", ["x"], d, NOW)
    assert r.waveform is d.waveforms["x"] and r.timestamp == datetime(2026, 11, 25, 11, tzinfo=UTC)


def test_waveform_json_base64_int16_with_scale() -> None:
    counts = np.array([0, 1000, -1000, 32000, -32000] * 100, dtype="<i2")
    msg = {"addr": MAC, "odr_hz": 25600, "encoding": "int16-b64", "scale_g": 0.0005,
           "axes": {"y": base64.b64encode(counts.tobytes()).decode()}}  # fmt: skip
    d = decode("waveform-json", msg)
    np.testing.assert_allclose(d.waveforms["y"].samples, counts * 0.0005)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"odr_hz": None}, "missing_field"),
        ({"odr_hz": "fast"}, "wrong_type"),
        ({"odr_hz": 5.0}, "bad_waveform"),
        ({"axes": {"x": [0.1] * 10}}, "bad_waveform"),
        ({"axes": {"x": [0.1] * 70_000}}, "bad_waveform"),
        ({"axes": {"x": ["0.1"] * 300}}, "wrong_type"),
        ({"axes": {"x": [[0.1, 0.2]] * 300}}, "wrong_type"),
        ({"axes": {"x": [0.1, None] * 300}}, "wrong_type"),
        ({"axes": {"q": [0.1] * 300}}, "missing_field"),
        ({"axes": []}, "missing_field"),
        ({"encoding": "int16-b64", "scale_g": 0.001, "axes": {"x": "%%%"}}, "malformed"),
        ({"encoding": "int16-b64", "scale_g": 0.001, "axes": {"x": "AAA="}}, "bad_waveform"),
        ({"encoding": "int16-b64", "axes": {"x": "AAAA"}}, "missing_field"),
        ({"encoding": "int16-b64", "scale_g": -1, "axes": {"x": "AAAA"}}, "bad_waveform"),
        ({"encoding": "zstd"}, "wrong_type"),
    ],
)
def test_waveform_json_refusals(change: dict[str, object], why: str) -> None:
    msg = wave_msg()
    msg.update(change)
    if change.get("odr_hz", 0) is None:
        del msg["odr_hz"]
    assert reason("waveform-json", msg) == why


def test_waveform_with_nan_sample_is_flagged() -> None:
    msg = wave_msg()
    msg["axes"]["x"][7] = math.nan  # type: ignore[index]
    d = decode("waveform-json", json.dumps(msg).encode())
    assert "x" not in d.waveforms and d.flags == {"x": ["waveform:not_finite"]}
    assert "z" in d.waveforms


def test_a_sample_beyond_any_accelerometer_range_is_flagged_never_analysed() -> None:
    """Before: a raw-int16 header whose float32 scale read 3e38 g/count (or a JSON body of
    1e100 g samples) passed as a good waveform; its velocity RMS (3e42 mm/s) was ISO zone D
    and raised a critical severity alert. Now the axis is flagged out_of_range."""
    x = (np.sin(np.arange(512) / 5) * 1000).astype(int)
    d = decode("raw-int16", raw_frame([x], scale=3e38))
    assert d.waveforms == {} and d.flags == {"x": ["waveform:out_of_range"]}
    (r,) = to_readings("s", ["x"], d, NOW)
    assert r.quality == "bad" and r.waveform is None
    msg = wave_msg()
    msg["axes"]["z"][3] = 1e100  # type: ignore[index]
    d = decode("waveform-json", json.dumps(msg).encode())
    assert set(d.waveforms) == {"x"} and d.flags == {"z": ["waveform:out_of_range"]}
    assert set(decode("raw-int16", raw_frame([x], scale=1.9)).waveforms) == {"x"}  # 1900 g


def test_a_shock_sensor_decoder_raises_max_g(tmp_path: Path) -> None:
    spec = Path(__file__).resolve().parents[2] / "drivers" / "payloads" / "raw-int16.yaml"
    text = spec.read_text().replace("limits: {", "limits: {max_g: 100000, ")
    (tmp_path / "shock.yaml").write_text(text.replace("name: raw-int16", "name: shock"))
    lib = DecoderLibrary.load(tmp_path)
    assert lib.errors == ()
    x = (np.sin(np.arange(512) / 5) * 1000).astype(int)
    frame = raw_frame([x], scale=10.0)  # 10 000 g
    assert set(lib.get("shock").decode(Payload(frame), NOW).waveforms) == {"x"}
    assert decode("raw-int16", frame).flags == {"x": ["waveform:out_of_range"]}


def raw_frame(axes: list[np.ndarray], fs: int = 25600, scale: float = 0.001, magic: int = 0x5657):
    n = len(axes[0])
    head = struct.pack("<HBBIIf", magic, 1, len(axes), fs, n, scale)
    return head + b"".join(a.astype("<i2").tobytes() for a in axes)


def test_raw_int16_header_and_planar_samples() -> None:
    x = np.arange(512) - 256
    y = -np.arange(512)
    d = decode("raw-int16", raw_frame([x, y], fs=12800, scale=0.002))
    assert set(d.waveforms) == {"x", "y"} and d.waveforms["x"].fs_hz == 12800
    np.testing.assert_allclose(d.waveforms["x"].samples, x * np.float32(0.002), rtol=1e-6)
    np.testing.assert_allclose(d.waveforms["y"].samples, y * np.float32(0.002), rtol=1e-6)


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"\x57\x56", "malformed"),  # shorter than the header
        (raw_frame([np.zeros(512)], magic=0x1234), "malformed"),
        (raw_frame([np.zeros(512)])[:-1], "bad_waveform"),  # odd byte count
        (raw_frame([np.zeros(512)]) + b"\0\0", "bad_waveform"),  # count disagrees
        (raw_frame([np.zeros(512)], fs=1), "bad_waveform"),
        (raw_frame([np.zeros(512)], scale=math.nan), "bad_waveform"),
        (raw_frame([np.zeros(16)]), "bad_waveform"),
        (raw_frame([np.zeros(512)] * 4), "bad_waveform"),  # 4 axes, 3 named
    ],
)
def test_raw_int16_refusals(frame: bytes, why: str) -> None:
    assert reason("raw-int16", frame) == why


def test_decoder_file_errors_have_file_line_column(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\nformat: json-features\nfields:\n  - {path: v}\n")
    (tmp_path / "b.yaml").write_text("name: b\nformat: protobuf\n")
    (tmp_path / "c.yaml").write_text(
        "name: c\nformat: raw-int16\nheader:\n  - {name: r, offset: 0, type: uint32}\n"
        "data_offset: 4\nsample_rate: rate\nscale: 0.1\n"
    )
    (tmp_path / "d.yaml").write_text("name: e\nformat: waveform-json\nrate: r\naxes: a\n")
    _, errors = load_folder(tmp_path, lambda doc, stem: parse_decoder(doc, expected_name=stem))
    got = sorted(str(e).removeprefix(str(tmp_path) + "/") for e in errors)
    assert got == [
        "a.yaml:4:5: fields[0]: feature is required (the canonical feature the field feeds)",
        "b.yaml:2:9: format: format must be one of json-features, waveform-json, raw-int16, "
        "got 'protobuf'",
        "c.yaml:6:14: sample_rate: sample_rate must name a header field (r), got 'rate'",
        "d.yaml:1:7: name: name 'e' does not match the file name 'd'",
    ]


def test_a_key_given_twice_in_a_decoder_file_is_an_error_not_the_last_one_silently(
    tmp_path: Path,
) -> None:
    # A second fields: block (a copy-paste) silently replaced the first: channel x vanished.
    (tmp_path / "acme.yaml").write_text(
        "name: acme\nformat: json-features\nfields:\n"
        "  - {path: vib.x.rms, feature: velocity_rms_mm_s, channel: x}\n"
        "fields:\n  - {path: vib.z.rms, feature: velocity_rms_mm_s, channel: z}\n"
    )
    _, errors = load_folder(tmp_path, lambda doc, stem: parse_decoder(doc, expected_name=stem))
    assert [str(e).removeprefix(str(tmp_path) + "/") for e in errors] == [
        "acme.yaml:5:1: duplicate key 'fields' (also on line 3); YAML would silently keep only "
        "the last one: remove or rename one of them"
    ]
