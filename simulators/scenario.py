"""Per-device value generators over time, for the sensor simulators.

A scenario maps a time (seconds since the simulator started) to feature values per
channel: ``{"z": {...}, "x": {...}, "all": {"temperature_c": ...}}``, with the canonical
feature names of ``drivers/reading.py``. Noise is a pure function of (seed, channel,
feature, 100 ms tick), so a run is reproducible and the value at a time does not depend
on how often it is asked for.

Levels are those of a group 2 machine on a rigid foundation (ISO 10816-3: A/B 1.4,
B/C 2.8, C/D 4.5 mm/s).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

Sample = dict[str, dict[str, float]]  # channel ("z", "x", "all") -> feature -> value

SCENARIOS = ("healthy", "degrade")

# Healthy Z-axis levels (zone A/B); the X axis runs at AXIS_X_RATIO of the amplitudes.
HEALTHY: Mapping[str, float] = {
    "velocity_rms_mm_s": 1.0,
    "velocity_peak_mm_s": 1.45,
    "accel_rms_g": 0.2,
    "accel_peak_g": 0.7,
    "hf_accel_rms_g": 0.05,
    "kurtosis": 3.0,
    "crest_factor": 3.5,
    "peak_frequency_hz": 24.7,  # 1x of a 1480 rpm motor
}
HEALTHY_TEMPERATURE_C = 45.0
AXIS_X_RATIO = 0.8
_AMPLITUDES = {
    "velocity_rms_mm_s",
    "velocity_peak_mm_s",
    "accel_rms_g",
    "accel_peak_g",
    "hf_accel_rms_g",
}
NOISE_TICK_S = 0.1


class Scenario(Protocol):
    """Anything that gives feature values for a time."""

    def sample(self, t_s: float) -> Sample:
        """Feature values per channel at ``t_s`` seconds after the simulator started."""
        ...


def _noise(seed: int, key: str, t_s: float) -> float:
    """A standard-normal draw fixed by (seed, key, tick): deterministic and stateless."""
    tick = math.floor(t_s / NOISE_TICK_S)
    return random.Random(f"{seed}/{key}/{tick}").gauss(0.0, 1.0)


def _axes(z: Mapping[str, float], temperature_c: float) -> Sample:
    x = {k: v * AXIS_X_RATIO if k in _AMPLITUDES else v for k, v in z.items()}
    return {"z": dict(z), "x": x, "all": {"temperature_c": temperature_c}}


def _with_noise(sample: Sample, seed: int, t_s: float, rel: float, temp_abs: float) -> Sample:
    out: Sample = {}
    for channel, features in sample.items():
        out[channel] = {}
        for name, value in features.items():
            n = _noise(seed, f"{channel}/{name}", t_s)
            if name == "temperature_c":
                out[channel][name] = value + temp_abs * n
            elif name == "peak_frequency_hz":
                out[channel][name] = value  # the shaft speed does not jitter
            else:
                out[channel][name] = max(0.0, value * (1.0 + rel * n))
    return out


@dataclass(frozen=True, slots=True)
class Healthy:
    """A healthy machine: small noise around zone A/B values.

    Attributes:
        seed: noise seed.
        noise: relative standard deviation of the amplitudes.
    """

    seed: int = 0
    noise: float = 0.02

    # Values change at most once per tick: a simulator may cache a tick's registers.
    resolution_s = NOISE_TICK_S

    def sample(self, t_s: float) -> Sample:
        """See Scenario.sample."""
        return _with_noise(_axes(HEALTHY, HEALTHY_TEMPERATURE_C), self.seed, t_s, self.noise, 0.2)


@dataclass(frozen=True, slots=True)
class Degrade:
    """A rolling-element bearing that runs healthy, then degrades exponentially, then holds.

    Healthy for the first ``healthy_fraction`` of ``life_s`` (the agent learns its baseline
    there, as on a machine after install), then every amplitude grows geometrically,
    f(t) = f0 x (f_end / f0) ^ g(t) with g rising linearly from 0 to 1 by ``life_s``: the
    exponential damage growth the agent's time-to-failure model assumes. With
    ``life_s=60``, velocity RMS crosses 2.8 mm/s (zone C) at about 37 s and 4.5 mm/s (zone
    D) at about 48 s, and reaches 8 mm/s at 60 s. Kurtosis, crest factor and
    high-frequency acceleration follow the same path 25 % faster, as impacts show before
    the overall level does.

    Attributes:
        seed: noise seed.
        life_s: seconds from healthy to the end level.
        noise: relative standard deviation of the amplitudes.
        v_end: velocity RMS at the end of life, mm/s.
        healthy_fraction: part of the life spent healthy before the degradation starts.
    """

    seed: int = 0
    life_s: float = 60.0
    noise: float = 0.02
    v_end: float = 8.0
    healthy_fraction: float = 0.25

    def progress(self, t_s: float) -> float:
        """0 while healthy, then rising linearly to 1 at ``life_s`` (an exponent)."""
        start = self.healthy_fraction * self.life_s
        return min(max((t_s - start) / (self.life_s - start), 0.0), 1.0)

    # Values change at most once per tick: a simulator may cache a tick's registers.
    resolution_s = NOISE_TICK_S

    def sample(self, t_s: float) -> Sample:
        """See Scenario.sample."""
        g = self.progress(t_s)
        early = self.progress(self.healthy_fraction * self.life_s + 1.25 * (
            t_s - self.healthy_fraction * self.life_s))  # fmt: skip

        def grow(name: str, end: float, exponent: float) -> float:
            return HEALTHY[name] * (end / HEALTHY[name]) ** exponent

        v = grow("velocity_rms_mm_s", self.v_end, g)
        crest = grow("crest_factor", 6.0, early)
        accel = grow("accel_rms_g", 1.2, g)
        z = {
            "velocity_rms_mm_s": v,
            "velocity_peak_mm_s": v * 1.45,
            "accel_rms_g": accel,
            "accel_peak_g": accel * crest,
            "hf_accel_rms_g": grow("hf_accel_rms_g", 0.8, early),
            "kurtosis": grow("kurtosis", 9.0, early),
            "crest_factor": crest,
            "peak_frequency_hz": HEALTHY["peak_frequency_hz"],
        }
        sample = _axes(z, HEALTHY_TEMPERATURE_C + 12.0 * g)
        return _with_noise(sample, self.seed, t_s, self.noise, 0.2)


@dataclass(frozen=True, slots=True)
class Constant:
    """Fixed values, no noise: for tests that must tell devices apart by value.

    Attributes:
        values: feature -> value, applied to every axis (``temperature_c`` to ``all``);
            features not given keep their healthy level (so every register is plausible).
    """

    values: Mapping[str, float] = field(default_factory=lambda: dict(HEALTHY))

    # Values change at most once per tick: a simulator may cache a tick's registers.
    resolution_s = NOISE_TICK_S

    def sample(self, t_s: float) -> Sample:
        """See Scenario.sample."""
        merged = {**HEALTHY, "temperature_c": HEALTHY_TEMPERATURE_C, **self.values}
        axis = {k: v for k, v in merged.items() if k != "temperature_c"}
        return {"z": dict(axis), "x": dict(axis), "all": {"temperature_c": merged["temperature_c"]}}


def make_scenario(name: str, *, seed: int = 0, life_s: float = 60.0) -> Scenario:
    """The scenario called ``name`` (one of SCENARIOS).

    Raises:
        ValueError: unknown name.
    """
    if name == "healthy":
        return Healthy(seed=seed)
    if name == "degrade":
        return Degrade(seed=seed, life_s=life_s)
    raise ValueError(f"unknown scenario {name!r}; expected one of {', '.join(SCENARIOS)}")
