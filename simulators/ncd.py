"""NCD.io-style MQTT payloads: processed readings, waveform snapshots, and hostile ones.

Pure functions from a scenario sample (simulators/scenario.py) to the bytes a wireless
gateway publishes; no I/O. Field names follow ../shared/sensors/README.md: flat
``x_rms_ACC_G``, ``x_max_ACC_G``, ``x_velocity_mm_sec``, ``x_displacement_mm``,
``x_peak_one_Hz`` (and y_, z_), ``temperature``, beside ``addr``, ``rssi``, ``battery``
and an ISO 8601 UTC ``timestamp``; other firmware nests the readings under
``sensor_data``. Waveforms carry per-axis samples in g, as a JSON array or as base64 of
little-endian int16 counts with a scale.
"""

from __future__ import annotations

import base64
import json
import math
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from simulators.scenario import AXIS_X_RATIO, Sample

MAC_PREFIX = "00:13:a2:00:41:9b"
MAC_BASE = 0x0C00  # sensor 1 is ...:0c:01, sensor 17 is ...:0c:11
MAX_SENSORS = 0xFFFF - MAC_BASE
AXIS_Y_RATIO = 0.9 * AXIS_X_RATIO  # the scenario gives z and x; y runs a little lower
G_MM_S2 = 9806.65
INT16_FULL_SCALE_G = 16.0  # NCD's +-16 g accelerometer range
GARBAGE_KINDS = ("sentinel", "nan_string", "negative", "wrong_type", "missing", "infinite",
                 "future", "ancient", "bad_addr")  # fmt: skip
MALFORMED_KINDS = ("truncated", "broken", "not_json", "empty", "not_utf8", "deep", "oversized")

# scenario feature -> NCD field suffix
_FIELDS = {
    "accel_rms_g": "rms_ACC_G",
    "accel_peak_g": "max_ACC_G",
    "velocity_rms_mm_s": "velocity_mm_sec",
    "peak_frequency_hz": "peak_one_Hz",
}


def mac(index: int) -> str:
    """The MAC of sensor ``index`` (1-based): ``00:13:a2:00:41:9b:0c:01`` for 1."""
    if not 0 < index <= MAX_SENSORS:
        raise ValueError(f"sensor index {index} out of 1..{MAX_SENSORS}")
    v = MAC_BASE + index
    return f"{MAC_PREFIX}:{v >> 8:02x}:{v & 0xFF:02x}"


def iso(ts: float) -> str:
    """UTC ISO 8601 with milliseconds and ``Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def axes(sample: Sample) -> dict[str, dict[str, float]]:
    """Per NCD axis (x, y, z) feature values; y is derived from the scenario's x."""
    x = sample.get("x", sample["z"])
    ratio = AXIS_Y_RATIO / AXIS_X_RATIO
    y = {k: v if k == "peak_frequency_hz" else v * ratio for k, v in x.items()}
    return {"x": dict(x), "y": y, "z": dict(sample["z"])}


def processed(
    addr: str, sample: Sample, at: float, *, nested: bool = False, rssi: int = -60,
    battery_v: float = 3.3,
) -> dict[str, Any]:  # fmt: skip
    """One processed reading as an NCD gateway publishes it (a JSON object)."""
    data: dict[str, Any] = {}
    for axis, feats in axes(sample).items():
        for feature, suffix in _FIELDS.items():
            if feature in feats:
                digits = 1 if feature == "peak_frequency_hz" else 3
                data[f"{axis}_{suffix}"] = round(feats[feature], digits)
        v, f = feats.get("velocity_rms_mm_s"), feats.get("peak_frequency_hz")
        if v is not None and f:
            data[f"{axis}_displacement_mm"] = round(v / (2 * math.pi * f), 4)
    temp = sample.get("all", {}).get("temperature_c")
    if temp is not None:
        data["temperature"] = round(temp, 2)
    head: dict[str, Any] = {"addr": addr, "timestamp": iso(at), "rssi": rssi}
    head["battery"] = round(battery_v, 2)
    if nested:  # Node-RED library layout: readings under sensor_data
        return {**head, "type": "sensor_data", "sensor_type": 81, "sensor_data": data}
    return {**head, **data}


def synth_waveform(
    sample: Sample, *, fs_hz: float, n: int, seed: int, tick: int
) -> dict[str, np.ndarray]:
    """Acceleration (g) per axis whose velocity RMS and acceleration RMS match the sample.

    A 1x shaft tone carries the velocity; the rest of the acceleration RMS is noise above
    2 kHz (bearing resonance band), which adds almost nothing to 10-1000 Hz velocity, and
    impacts at 5.6x shaft speed grow with the sample's kurtosis.
    """
    t = np.arange(n) / fs_hz
    rng = np.random.default_rng((seed, tick))
    out: dict[str, np.ndarray] = {}
    for i, (axis, feats) in enumerate(axes(sample).items()):
        f1 = feats.get("peak_frequency_hz", 24.7)
        v_rms = feats.get("velocity_rms_mm_s", 1.0)
        a1 = v_rms * math.sqrt(2) * 2 * math.pi * f1 / G_MM_S2  # g amplitude of the tone
        x = a1 * np.sin(2 * np.pi * f1 * t + 0.7 * i)
        rest = max(feats.get("accel_rms_g", 0.2) ** 2 - (a1 / math.sqrt(2)) ** 2, 0.0)
        spec = np.fft.rfft(rng.standard_normal(n))
        spec[: int(2000 * n / fs_hz)] = 0.0
        hf = np.fft.irfft(spec, n)
        hf *= math.sqrt(rest) / max(float(np.sqrt(np.mean(hf**2))), 1e-12)
        excess = max(feats.get("kurtosis", 3.0) - 3.0, 0.0) / 6.0
        if excess > 0:
            phase = (t * f1 * 5.6) % 1.0  # impacts ringing at 3 kHz, decaying in 1 ms
            ring = np.exp(-phase / (5.6 * f1) / 1e-3) * np.sin(2 * np.pi * 3000 * t)
            hf = hf + excess * 4.0 * math.sqrt(rest) * ring
        out[axis] = x + hf
    return out


def waveform_body(
    channels: Mapping[str, np.ndarray], fs_hz: float, *, encoding: str = "json"
) -> bytes:
    """A waveform snapshot without its head (see `stamped`): samples in g per axis as JSON
    arrays, or base64 of little-endian int16 counts with a scale. Encoding 7680 samples is
    the costly part, so a publisher can reuse one body under several heads."""
    msg: dict[str, Any] = {"odr_hz": fs_hz}
    if encoding == "json":
        msg["axes"] = {k: np.round(v, 5).tolist() for k, v in channels.items()}
        return encode(msg)
    peak = max((float(np.max(np.abs(v))) for v in channels.values()), default=0.0)
    scale = max(peak, INT16_FULL_SCALE_G) / 32767.0  # a fixed range unless it would clip
    msg["encoding"] = "int16-b64"
    msg["scale_g"] = scale
    msg["axes"] = {
        k: base64.b64encode(np.round(v / scale).astype("<i2").tobytes()).decode("ascii")
        for k, v in channels.items()
    }
    return encode(msg)


def stamped(addr: str, at: float, body: bytes) -> bytes:
    """``body`` (a JSON object) with ``addr`` and ``timestamp`` first."""
    head = encode({"addr": addr, "timestamp": iso(at)})
    return head[:-1] + b"," + body[1:]


def garbage(good: dict[str, Any], kind: str, at: float) -> dict[str, Any]:
    """A copy of a valid message made wrong in one way (still valid JSON): see
    GARBAGE_KINDS. Works on processed (flat or nested) and waveform messages."""
    msg = json.loads(json.dumps(good))
    body = msg.get("sensor_data", msg)
    numeric = [k for k, v in body.items() if isinstance(v, int | float) and k != "rssi"]
    if "axes" in msg:
        numeric = []
        msg["axes"] = _garbage_axes(msg["axes"], kind)
    if kind == "sentinel":
        body.update(dict.fromkeys(numeric, 65535))
    elif kind == "nan_string":
        body.update(dict.fromkeys(numeric, "NaN"))
    elif kind == "negative":
        body.update({k: -abs(body[k]) - 1.0 for k in numeric})
    elif kind == "wrong_type":
        body.update({k: [body[k]] if i % 2 else {"v": body[k]} for i, k in enumerate(numeric)})
        msg["timestamp"] = 12345
    elif kind == "missing":
        for k in [*numeric, "timestamp"]:
            body.pop(k, None)
    elif kind == "infinite":
        body.update(dict.fromkeys(numeric, math.inf))  # json.dumps writes Infinity
    elif kind == "future":
        msg["timestamp"] = iso(at + 366 * 86400)
    elif kind == "ancient":
        msg["timestamp"] = "1970-01-01T00:00:00.000Z"
    elif kind == "bad_addr":
        msg["addr"] = 42
    return msg


def _garbage_axes(channels: dict[str, Any], kind: str) -> Any:
    if kind in ("sentinel", "negative", "infinite", "nan_string"):
        bad = {"sentinel": 65535, "negative": -1, "infinite": math.inf, "nan_string": "NaN"}
        return {
            k: [bad[kind]] * (len(v) if isinstance(v, list) else 8) for k, v in channels.items()
        }
    if kind == "wrong_type":
        return "x,y,z"
    if kind == "missing":
        return {}
    return channels


def malformed(good: bytes, kind: str, rng: random.Random, *, oversize: int) -> bytes:
    """Bytes that are not a valid message: see MALFORMED_KINDS."""
    if kind == "truncated":
        return good[: max(1, len(good) // 2)]
    if kind == "broken":
        return good.replace(b'"', b"", 1).replace(b"}", b",}", 1)
    if kind == "not_json":
        return bytes(rng.randrange(256) for _ in range(64))
    if kind == "empty":
        return b""
    if kind == "not_utf8":
        return b'{"addr": "\xff\xfe", "timestamp": "\xc3("}'
    if kind == "deep":  # deeper than Python's json recursion limit, yet small
        return b"[" * 20000 + b"]" * 20000
    if kind == "oversized":
        pad = max(oversize - len(good), 0)
        return good[:-1] + b', "pad": "' + b"x" * pad + b'"}'
    raise ValueError(f"unknown malformed kind {kind!r}")


def encode(msg: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(msg, separators=(",", ":")).encode()
