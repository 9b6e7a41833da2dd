"""Waveform features: time-domain statistics, band-limited velocity, envelope spectrum.

numpy only. Everything that depends only on the record length and sampling rate (frequency
axis, window, integration weights, band masks) is computed once per (n, fs, bands) and kept
in a small bounded cache, so the per-snapshot cost is a handful of FFTs.

Velocity RMS is obtained by frequency-domain integration of a Hann-windowed, mean-removed
record: each acceleration line is divided by 2*pi*f and the power is summed over the band,
with the window's energy loss corrected. The band edges are widened by the Hann main-lobe
half width (2 bins), so a tone exactly at a nominal edge (10 or 1000 Hz) is passed in full;
a tone more than 2 bins outside the band is rejected. The record must last several periods of
the lowest band frequency (>= 0.4 s for 10 Hz, >= 2 s for 2 Hz) for the lower edge to mean
anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from agent.analysis.bearing import BearingGeometry, fault_frequencies
from drivers.reading import (
    ACCEL_PEAK,
    ACCEL_RMS,
    CREST_FACTOR,
    ENVELOPE_BPFI,
    ENVELOPE_BPFO,
    ENVELOPE_BSF,
    ENVELOPE_FTF,
    HF_ACCEL_RMS,
    KURTOSIS,
    PEAK_FREQUENCY,
    VELOCITY_PEAK,
    VELOCITY_RMS,
)

__all__ = [
    "DEFAULT_HF_BAND_HZ",
    "DEFAULT_VELOCITY_BAND_HZ",
    "G_MM_S2",
    "LOW_SPEED_VELOCITY_BAND_HZ",
    "velocity_band_for_rpm",
    "waveform_features",
]

G_MM_S2 = 9806.65  # standard gravity, mm/s^2 per g
DEFAULT_VELOCITY_BAND_HZ = (10.0, 1000.0)
LOW_SPEED_VELOCITY_BAND_HZ = (2.0, 1000.0)  # ISO 10816/20816 for machines <= 600 rpm
# High-frequency acceleration band: 2 kHz up to Nyquist (None = Nyquist). Bearing defects
# excite structural resonances here long before velocity RMS moves.
DEFAULT_HF_BAND_HZ: tuple[float, float | None] = (2000.0, None)
_EDGE_BINS = 2  # Hann main-lobe half width, in bins
_ENVELOPE_HARMONICS = 3
_ENVELOPE_TOL_FRACTION = 0.03  # slip makes real fault lines deviate 1-2 % from kinematics
_ENVELOPE_KEYS = {
    "bpfo": ENVELOPE_BPFO,
    "bpfi": ENVELOPE_BPFI,
    "bsf": ENVELOPE_BSF,
    "ftf": ENVELOPE_FTF,
}


VELOCITY_BAND_PERIODS = "velocity_band_periods"


def velocity_band_for_rpm(rpm: float | None) -> tuple[float, float]:
    """The ISO 10816/20816 velocity measurement band for a machine speed.

    Args:
        rpm: nominal shaft speed; None when unknown (the 10-1000 Hz band is used).

    Returns:
        (low, high) in Hz: 2-1000 Hz at or below 600 rpm, else 10-1000 Hz.
    """
    if rpm is not None and rpm <= 600.0:
        return LOW_SPEED_VELOCITY_BAND_HZ
    return DEFAULT_VELOCITY_BAND_HZ


@dataclass(frozen=True, slots=True)
class _Plan:
    """Precomputed, read-only arrays for one (n, fs, bands) combination."""

    window: np.ndarray  # periodic Hann, length n (applied in frequency: _hann_spectrum)
    window_power: float  # sum(window**2)
    vel_weight2: np.ndarray  # per rfft bin: 2 * (g / (2 pi f))**2 in band, else 0
    vel_gain: np.ndarray  # per rfft bin: g / (j 2 pi f) in band (hard edges), else 0
    vel_freqs: np.ndarray  # frequency of each rfft bin, Hz
    hf_weight2: np.ndarray | None  # per rfft bin: 2 in the hf band, else 0
    env_gain: np.ndarray | None  # per full-fft bin: 2 in the positive envelope band, else 0
    env_window: np.ndarray  # Hann for the envelope spectrum
    env_amp_scale: float  # 2 / sum(env_window): line amplitude from |rfft|
    df: float


def _band_mask(freqs: np.ndarray, lo: float, hi: float, df: float) -> np.ndarray:
    margin = _EDGE_BINS * df
    return (freqs >= lo - margin) & (freqs <= hi + margin) & (freqs > 0.0)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@lru_cache(maxsize=16)
def _plan(
    n: int,
    fs_hz: float,
    band_hz: tuple[float, float],
    hf_band_hz: tuple[float, float | None],
    env_band_hz: tuple[float, float | None],
) -> _Plan:
    df = fs_hz / n
    nyquist = fs_hz / 2.0
    freqs = np.fft.rfftfreq(n, 1.0 / fs_hz)
    window = 0.5 - 0.5 * np.cos(2.0 * math.pi * np.arange(n) / n)  # periodic Hann
    vel_mask = _band_mask(freqs, band_hz[0], band_hz[1], df)
    omega = np.where(freqs > 0.0, 2.0 * math.pi * freqs, 1.0)
    vel_weight2 = np.where(vel_mask, 2.0 * (G_MM_S2 / omega) ** 2, 0.0)
    # Nyquist bin (even n) has no conjugate twin: weight 1, not 2.
    if n % 2 == 0:
        vel_weight2[-1] /= 2.0
    hard = (freqs >= band_hz[0]) & (freqs <= band_hz[1]) & (freqs > 0.0)
    vel_gain = np.where(hard, G_MM_S2 / (1j * omega), 0.0)

    hf_lo, hf_hi = hf_band_hz[0], min(hf_band_hz[1] or nyquist, nyquist)
    hf_weight2 = None
    if hf_lo < hf_hi:
        hf_mask = (freqs >= hf_lo) & (freqs <= hf_hi)
        if hf_mask.any():
            hf_weight2 = np.where(hf_mask, 2.0, 0.0)
            if n % 2 == 0:
                hf_weight2[-1] /= 2.0

    env_lo, env_hi = env_band_hz[0], min(env_band_hz[1] or nyquist, nyquist)
    env_gain = None
    full = np.fft.fftfreq(n, 1.0 / fs_hz)
    env_mask = (full >= env_lo) & (full <= env_hi) & (full > 0.0)
    if env_lo < env_hi and env_mask.any():
        env_gain = np.where(env_mask, 2.0, 0.0)  # analytic signal: double positive band
    env_window = np.hanning(n)
    return _Plan(
        window=_readonly(window),
        window_power=float(np.sum(window * window)),
        vel_weight2=_readonly(vel_weight2),
        vel_gain=_readonly(vel_gain),
        vel_freqs=_readonly(freqs),
        hf_weight2=None if hf_weight2 is None else _readonly(hf_weight2),
        env_gain=None if env_gain is None else _readonly(env_gain),
        env_window=_readonly(env_window),
        env_amp_scale=2.0 / float(np.sum(env_window)),
        df=df,
    )


def _hann_spectrum(spec: np.ndarray, n: int) -> np.ndarray:
    """rfft of x times the periodic Hann window, from rfft(x): 0.5 X[k] - 0.25 (X[k-1] +
    X[k+1]), the bins beyond either end being the conjugates of their mirror images."""
    out = 0.5 * spec
    out[1:] -= 0.25 * spec[:-1]
    out[:-1] -= 0.25 * spec[1:]
    out[0] -= 0.25 * np.conj(spec[1])
    out[-1] -= 0.25 * np.conj(spec[-2] if n % 2 == 0 else spec[-1])
    return out


def _line_amplitude(spectrum: np.ndarray, df: float, freq_hz: float, harmonics: int) -> float:
    """Root-sum-square of the largest line within tolerance of each harmonic of freq_hz."""
    total = 0.0
    last = spectrum.shape[0] - 1
    for h in range(1, harmonics + 1):
        f = h * freq_hz
        tol = max(df, _ENVELOPE_TOL_FRACTION * f)
        lo = max(1, math.floor((f - tol) / df))
        hi = min(last, math.ceil((f + tol) / df))
        if lo > hi:
            break
        peak = float(spectrum[lo : hi + 1].max())
        total += peak * peak
    return math.sqrt(total)


def waveform_features(
    samples_g: np.ndarray,
    fs_hz: float,
    *,
    band_hz: tuple[float, float] = DEFAULT_VELOCITY_BAND_HZ,
    shaft_hz: float | None = None,
    bearing: BearingGeometry | None = None,
    hf_band_hz: tuple[float, float | None] = DEFAULT_HF_BAND_HZ,
    envelope_band_hz: tuple[float, float | None] | None = None,
) -> dict[str, float]:
    """Compute the canonical vibration features of one acceleration record.

    Args:
        samples_g: 1-D acceleration samples in g (at least 16).
        fs_hz: sampling rate, Hz.
        band_hz: velocity band, Hz (see velocity_band_for_rpm).
        shaft_hz: shaft speed, Hz; with bearing, enables the envelope features.
        bearing: bearing geometry; with shaft_hz, enables the envelope features.
        hf_band_hz: band of hf_accel_rms_g, Hz; None as upper edge means Nyquist. When
            the band lies above Nyquist, hf_accel_rms_g is left out.
        envelope_band_hz: band-pass applied before enveloping; defaults to hf_band_hz
            (bearing impacts ring the structure's high-frequency resonances).

    Returns:
        accel_rms_g, accel_peak_g (about the mean), crest_factor, kurtosis (Pearson,
        3 for Gaussian), velocity_rms_mm_s, velocity_peak_mm_s, peak_frequency_hz (largest
        velocity line in band), velocity_band_periods (record length in periods of the
        band's lowest frequency), hf_accel_rms_g, and with shaft_hz and bearing the envelope
        spectrum amplitudes envelope_bpfo_g, envelope_bpfi_g, envelope_bsf_g, envelope_ftf_g
        (root-sum-square of the largest envelope line within max(1 bin, 3 %) of the
        fault frequency and its 2nd and 3rd harmonics).
    """
    x = np.asarray(samples_g, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] < 16:
        raise ValueError(f"samples_g must be 1-D with >= 16 samples, got shape {x.shape}")
    if not fs_hz > 0.0:
        raise ValueError(f"fs_hz must be > 0, got {fs_hz}")
    n = x.shape[0]
    env_band = hf_band_hz if envelope_band_hz is None else envelope_band_hz
    plan = _plan(n, float(fs_hz), tuple(band_hz), tuple(hf_band_hz), tuple(env_band))

    x = x - float(x.sum()) / n
    x2 = x * x
    var = float(x2.sum()) / n
    rms = math.sqrt(var)
    peak = max(float(x.max()), -float(x.min()))
    out: dict[str, float] = {
        ACCEL_RMS: rms,
        ACCEL_PEAK: peak,
        CREST_FACTOR: peak / rms if rms > 0.0 else 0.0,
        KURTOSIS: float(x2 @ x2) / n / (var * var) if var > 0.0 else 0.0,
    }

    # One FFT serves both spectra: the unwindowed one (velocity time signal, its peak) and
    # the Hann-windowed one for band powers (leakage stays within the main lobe), which for
    # the periodic Hann window is a three-term convolution in frequency.
    spec = np.fft.rfft(x)
    spec_w = _hann_spectrum(spec, n)
    power_w = spec_w.real * spec_w.real + spec_w.imag * spec_w.imag
    norm = n * plan.window_power
    vel_power = power_w * plan.vel_weight2
    out[VELOCITY_RMS] = math.sqrt(float(vel_power.sum()) / norm)
    # How many periods of the band's lowest frequency the record spans: below a few, its
    # velocity RMS is no measurement of that band (see severity.velocity_resolved).
    out[VELOCITY_BAND_PERIODS] = n / fs_hz * band_hz[0]
    if plan.hf_weight2 is not None:
        out[HF_ACCEL_RMS] = math.sqrt(float(power_w @ plan.hf_weight2) / norm)

    vel_spec = spec * plan.vel_gain
    velocity = np.fft.irfft(vel_spec, n)
    out[VELOCITY_PEAK] = max(float(velocity.max()), -float(velocity.min()))
    out[PEAK_FREQUENCY] = float(plan.vel_freqs[int(np.argmax(vel_power))])

    if shaft_hz is not None and bearing is not None and plan.env_gain is not None:
        out.update(_envelope_features(x, plan, fault_frequencies(shaft_hz, bearing)))
    return out


def _envelope_features(x: np.ndarray, plan: _Plan, freqs: dict[str, float]) -> dict[str, float]:
    assert plan.env_gain is not None
    analytic = np.fft.ifft(np.fft.fft(x) * plan.env_gain)
    env = np.abs(analytic)
    env -= env.mean()
    env_spec = np.abs(np.fft.rfft(env * plan.env_window)) * plan.env_amp_scale
    return {
        key: _line_amplitude(env_spec, plan.df, freqs[name], _ENVELOPE_HARMONICS)
        for name, key in _ENVELOPE_KEYS.items()
    }
