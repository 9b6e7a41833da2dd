"""Saturation in MQTT payloads: a waveform clipped at the int16 limits, or a JSON feature
at its sensor's full scale, is flagged saturated and left out (as a saturated register
is), never analysed; real vibration that stays in range is never flagged.

Real data: FEMTO bearing snapshots (int16 counts, as recorded) through the shipped
raw-int16 decoder.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from drivers.datafiles import parse_document
from drivers.errors import DecoderError
from drivers.payloads import Decoder, Payload, load_decoder, parse_decoder

FEMTO = Path("/work/shared/data/femto/Bearing1_1.npz")
NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def _raw_int16(counts: np.ndarray, fs: int, scale: float) -> Payload:
    """counts: (axes, n) int16, planar after the shipped raw-int16 header."""
    axes, n = counts.shape
    head = struct.pack("<HBBIIf", 0x5657, 1, axes, fs, n, scale)
    return Payload(head + counts.astype("<i2").tobytes())


@pytest.mark.skipif(not FEMTO.exists(), reason="the FEMTO recordings are not on this machine")
def test_femto_snapshots_are_never_clipped_and_the_same_ones_clipped_are() -> None:
    """All 2803 snapshots of a bearing's life, to failure, as recorded: none flagged.
    The last 50 with a range 4x too small (counts x4, clipped at the int16 limits): the
    clipped axis is flagged saturated and its samples left out; the other axis is kept."""
    data = np.load(FEMTO)
    acc, fs, scale = data["acc"], int(data["fs_hz"]), float(data["scale_g"])
    dec = load_decoder("raw-int16")
    for snap in acc:
        out = dec.decode(_raw_int16(snap.T, fs, scale), NOW)
        assert out.flags == {} and set(out.waveforms) == {"x", "y"}
    for snap in acc[-50:]:
        h = np.clip(snap[:, 0].astype(np.int64) * 4, -32768, 32767)
        share = np.mean((h >= 32765) | (h <= -32766))
        out = dec.decode(_raw_int16(np.stack([h, snap[:, 1]]), fs, scale / 4), NOW)
        if share >= 0.001:
            assert out.flags == {"x": ["waveform:saturated"]} and set(out.waveforms) == {"y"}
        else:  # touches full scale a sample or two: not clipped
            assert out.flags == {}


def test_a_sine_clipped_at_the_rails_is_saturated_whatever_its_sign() -> None:
    n = 2048
    sine = 40000 * np.sin(2 * np.pi * 50 * np.arange(n) / 25600)
    clipped = np.clip(np.round(sine), -32768, 32767)
    out = load_decoder("raw-int16").decode(_raw_int16(clipped[None, :], 25600, 0.001), NOW)
    assert out.flags == {"x": ["waveform:saturated"]} and out.waveforms == {}
    # one sample at the rail in 2048: a live peak, kept
    once = np.round(20000 * np.sin(2 * np.pi * 50 * np.arange(n) / 25600))
    once[100] = 32767
    out = load_decoder("raw-int16").decode(_raw_int16(once[None, :], 25600, 0.001), NOW)
    assert out.flags == {} and set(out.waveforms) == {"x"}


def _decoder(text: str) -> Decoder:
    return parse_decoder(parse_document(text, "site.yaml"))


FEATURES = """\
name: site
format: json-features
fields:
  - {path: peak, feature: accel_peak_g, channel: z, valid: [0, 200], full_scale: %s}
  - {path: v, feature: velocity_rms_mm_s, channel: z}
"""


def test_a_json_feature_at_its_full_scale_is_saturated() -> None:
    dec = _decoder(FEATURES % "16")
    for peak, flags in ((16.0, ["accel_peak_g:saturated"]), (15.99, ["accel_peak_g:saturated"]),
                        (15.5, None), (-16.0, ["accel_peak_g:saturated"])):  # fmt: skip
        out = dec.decode(Payload(f'{{"peak": {peak}, "v": 1.0}}'.encode()), NOW)
        if flags is None:
            assert out.flags == {} and out.features["z"]["accel_peak_g"] == peak
        else:
            assert out.flags == {"z": flags} and "accel_peak_g" not in out.features["z"]
            assert out.features["z"]["velocity_rms_mm_s"] == 1.0


def test_check_refuses_a_full_scale_that_is_not_positive() -> None:
    with pytest.raises(DecoderError, match="full_scale must be positive"):
        _decoder(FEATURES % "0")
