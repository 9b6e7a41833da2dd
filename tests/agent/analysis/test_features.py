"""Waveform features against analytic signals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.analysis.bearing import FEMTO_BEARING, BearingGeometry, fault_frequencies
from agent.analysis.features import velocity_band_for_rpm, waveform_features

FS = 25600.0
G = 9806.65


def _t(seconds: float = 1.0, fs: float = FS) -> np.ndarray:
    return np.arange(int(seconds * fs)) / fs


def test_sine_100hz_time_and_velocity_features() -> None:
    x = np.sin(2 * math.pi * 100.0 * _t())
    f = waveform_features(x, FS)
    assert f["accel_rms_g"] == pytest.approx(0.70711, rel=1e-3)
    assert f["accel_peak_g"] == pytest.approx(1.0, rel=1e-3)
    assert f["crest_factor"] == pytest.approx(1.4142, rel=1e-3)
    assert f["kurtosis"] == pytest.approx(1.5, rel=1e-3)
    expected = G * 0.70711 / (2 * math.pi * 100.0)
    assert f["velocity_rms_mm_s"] == pytest.approx(expected, rel=0.02)
    assert f["velocity_peak_mm_s"] == pytest.approx(expected * math.sqrt(2), rel=0.02)
    assert f["peak_frequency_hz"] == pytest.approx(100.0, abs=1.0)


@pytest.mark.parametrize("freq", [10.0, 20.0, 50.0, 200.0, 500.0, 1000.0])
def test_velocity_in_band_within_2_percent(freq: float) -> None:
    x = 0.5 * np.sin(2 * math.pi * freq * _t(2.0) + 0.4)
    expected = G * 0.5 / math.sqrt(2) / (2 * math.pi * freq)
    assert waveform_features(x, FS)["velocity_rms_mm_s"] == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("freq", [5.0, 3000.0])
def test_velocity_out_of_band_is_rejected(freq: float) -> None:
    x = np.sin(2 * math.pi * freq * _t(2.0))
    in_band = G / math.sqrt(2) / (2 * math.pi * freq)
    assert waveform_features(x, FS)["velocity_rms_mm_s"] < 0.01 * in_band


def test_low_speed_band() -> None:
    assert velocity_band_for_rpm(600) == (2.0, 1000.0)
    assert velocity_band_for_rpm(1480) == (10.0, 1000.0)
    assert velocity_band_for_rpm(None) == (10.0, 1000.0)
    x = np.sin(2 * math.pi * 5.0 * _t(4.0, 5120.0))
    expected = G / math.sqrt(2) / (2 * math.pi * 5.0)
    got = waveform_features(x, 5120.0, band_hz=velocity_band_for_rpm(300))
    assert got["velocity_rms_mm_s"] == pytest.approx(expected, rel=0.02)


def test_hf_band_and_low_rate() -> None:
    x = np.sin(2 * math.pi * 3000.0 * _t()) + np.sin(2 * math.pi * 100.0 * _t())
    assert waveform_features(x, FS)["hf_accel_rms_g"] == pytest.approx(0.7071, rel=0.01)
    slow = waveform_features(np.sin(2 * math.pi * 50.0 * _t(1.0, 2048.0)), 2048.0)
    assert "hf_accel_rms_g" not in slow  # band above Nyquist: left out, not faked


def test_gaussian_noise_kurtosis_near_3() -> None:
    x = np.random.default_rng(7).normal(0.0, 0.2, 200_000)
    f = waveform_features(x, FS)
    assert f["kurtosis"] == pytest.approx(3.0, abs=0.1)
    assert f["accel_rms_g"] == pytest.approx(0.2, rel=0.01)


def test_impulse_train_is_impulsive() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 0.05, 25600)
    x[::2560] += 3.0
    f = waveform_features(x, FS)
    assert f["kurtosis"] > 20.0
    assert f["crest_factor"] > 10.0


def test_envelope_picks_the_modulating_fault_frequency() -> None:
    shaft = 30.0
    bpfo = fault_frequencies(shaft, FEMTO_BEARING)["bpfo"]
    t = _t(1.0)
    carrier = np.sin(2 * math.pi * 5000.0 * t)
    x = (1.0 + 0.5 * np.cos(2 * math.pi * bpfo * t)) * carrier * 0.3
    x += np.random.default_rng(1).normal(0.0, 0.02, t.shape[0])
    f = waveform_features(x, FS, shaft_hz=shaft, bearing=FEMTO_BEARING)
    assert f["envelope_bpfo_g"] == pytest.approx(0.15, rel=0.1)
    for other in ("envelope_bpfi_g", "envelope_bsf_g", "envelope_ftf_g"):
        assert f[other] < 0.3 * f["envelope_bpfo_g"], other


def test_no_envelope_without_geometry() -> None:
    f = waveform_features(np.random.default_rng(0).normal(size=2560), FS, shaft_hz=30.0)
    assert "envelope_bpfo_g" not in f


def test_femto_fault_frequency_multiples() -> None:
    m = fault_frequencies(1.0, FEMTO_BEARING)
    assert m["ftf"] == pytest.approx(0.432, rel=2e-3)
    assert m["bsf"] == pytest.approx(3.590, rel=2e-3)
    assert m["bpfo"] == pytest.approx(5.611, rel=2e-3)
    assert m["bpfi"] == pytest.approx(7.389, rel=2e-3)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        waveform_features(np.zeros((10, 2)), FS)
    with pytest.raises(ValueError):
        BearingGeometry(balls=9, ball_mm=40.0, pitch_mm=39.0)
