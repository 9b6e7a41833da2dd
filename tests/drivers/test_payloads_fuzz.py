"""Property-based fuzzing: whatever the bytes, a decoder returns a result or raises
PayloadError (a counted drop), never anything else; and a sensor never raises at all."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.errors import PayloadError
from drivers.mqtt import MqttSensor
from drivers.payloads import Payload, load_decoder, to_readings
from drivers.reading import Reading

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NAMES = ["ncd-processed", "generic-json", "waveform-json", "raw-int16"]
FIELDS = ["addr", "timestamp", "time", "odr_hz", "encoding", "scale_g", "axes", "sensor_data",
          "x_velocity_mm_sec", "y_velocity_mm_sec", "z_velocity_mm_sec", "temperature", "x",
          "z", "x_rms_ACC_G", "velocity_rms_mm_s"]  # fmt: skip
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["int16-b64", "float-array", "2026-11-25T11:00:00Z", "AAAA", "%%"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=40)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), inner, max_size=8)
    ),
    max_leaves=80,
)
objects = st.dictionaries(st.sampled_from(FIELDS), values, max_size=12)


def check(name: str, raw: bytes) -> None:
    try:
        decoded = load_decoder(name).decode(Payload(raw), NOW)
    except PayloadError as exc:
        assert exc.reason and isinstance(exc.detail, str)
        return
    for r in to_readings("s", ["x", "y", "z"], decoded, NOW):
        # garbage never reaches analysis as a good value
        assert all(math.isfinite(v) for v in r.features.values()) or r.quality == "bad"
        if r.waveform is not None:
            assert r.waveform.samples.ndim == 1 and math.isfinite(r.waveform.fs_hz)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(raw=st.binary(max_size=2048))
def test_random_bytes(name: str, raw: bytes) -> None:
    check(name, raw)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(obj=objects)
def test_random_json_objects(name: str, obj: dict[str, object]) -> None:
    check(name, json.dumps(obj, allow_nan=True).encode())


@SETTINGS
@given(obj=objects, cut=st.integers(min_value=0, max_value=400))
def test_truncated_json_through_a_sensor_never_raises(obj: dict[str, object], cut: int) -> None:
    got: list[Reading] = []
    sensor = MqttSensor(
        "s", decoder=load_decoder("ncd-processed"), channels=["x", "z"], stale_after_s=60,
        sink=got.append, broker="b", topic="t",
    )  # fmt: skip
    raw = json.dumps({"addr": "a", **obj}).encode()[:cut]
    sensor.handle(Payload(raw), NOW)
    assert sensor.messages_total == 1
    assert sum(sensor.dropped.values()) + (1 if got else 0) >= 1 or not got
    assert all(r.quality == "good" or r.flags for r in got)


# A few values repeated to a plausible length (drawing 256 floats one by one is slow).
samples = st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=8).map(
    lambda v: (v * 300)[:300]
)


@SETTINGS
@given(
    x=samples,
    odr=st.one_of(st.floats(allow_nan=True), st.integers(-5, 10**6), st.text(max_size=3)),
    b64=st.binary(min_size=1, max_size=16).map(lambda b: (b * 64)[:600]),
    scale=st.floats(allow_nan=True, allow_infinity=True),
)
def test_near_valid_waveforms(x: list[float], odr: object, b64: bytes, scale: float) -> None:
    import base64

    check("waveform-json", json.dumps({"odr_hz": odr, "axes": {"x": x}}).encode())
    body = {"odr_hz": odr, "encoding": "int16-b64", "scale_g": scale,
            "axes": {"z": base64.b64encode(b64).decode()}}  # fmt: skip
    check("waveform-json", json.dumps(body).encode())
