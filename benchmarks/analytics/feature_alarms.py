"""Per-feature baseline alarms: phase 1's early-detection method, kept as a comparison.

The agent does not use this module: its early detection is agent.analysis.health_index
plus the ISO 20816-1 velocity alarm (agent.analysis.severity.iso_alarm_level). Section (b)
of benchmarks/analytics/README.md scores this method leave-one-bearing-out beside it.

The first readings (a count, or a duration) are the machine's own "healthy" reference; each
feature gets its median and MAD. Alarm levels:
- velocity_rms_mm_s, when an ISO B/C boundary is known: ISO 20816-1 guidance,
  baseline + 0.25 x (B/C), at most 1.25 x (B/C).
- the early bearing-damage features (kurtosis, hf_accel_rms_g, accel_rms_g, envelope
  amplitudes), where velocity RMS barely moves: max(median + k x 1.4826 x MAD,
  min_ratio x median). The defaults were chosen on the FEMTO run-to-failure bearings so that
  no bearing alarms before its degradation onset (benchmarks/analytics/README.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.analysis.severity import iso_alarm_level
from drivers.reading import (
    ACCEL_RMS,
    ENVELOPE_BPFI,
    ENVELOPE_BPFO,
    ENVELOPE_BSF,
    ENVELOPE_FTF,
    HF_ACCEL_RMS,
    KURTOSIS,
    VELOCITY_RMS,
)

__all__ = [
    "DEFAULT_K_MAD",
    "DEFAULT_MIN_RATIO",
    "Baseline",
    "Exceedance",
]

_MAD_SIGMA = 1.4826  # MAD -> standard deviation for Gaussian data
_STATE_VERSION = 1
# Defaults: the settings the benchmark selects on all six FEMTO bearings (zero false alarms
# before onset, longest lead; benchmarks/analytics/README.md). Kurtosis and envelope_bpfo_g
# had no zero-false-alarm setting in the searched grid; they get the grid's most
# conservative point and should be read as supporting evidence, not alone.
DEFAULT_K_MAD: dict[str, float] = {
    ACCEL_RMS: 15.0,
    HF_ACCEL_RMS: 20.0,
    KURTOSIS: 20.0,
    ENVELOPE_BPFO: 20.0,
    ENVELOPE_BPFI: 10.0,
    ENVELOPE_BSF: 20.0,
    ENVELOPE_FTF: 15.0,
}
DEFAULT_MIN_RATIO: dict[str, float] = {
    ACCEL_RMS: 2.0,
    HF_ACCEL_RMS: 2.0,
    KURTOSIS: 6.0,
    ENVELOPE_BPFO: 6.0,
    ENVELOPE_BPFI: 4.0,
    ENVELOPE_BSF: 4.0,
    ENVELOPE_FTF: 6.0,
}


@dataclass(frozen=True, slots=True)
class Exceedance:
    """One feature above its alarm level.

    Attributes:
        feature: canonical feature name.
        value: the reading's value.
        level: the alarm level.
        baseline: the baseline median.
        rule: how the level was set, e.g. "ISO 20816-1" or "median + 10 MAD".
    """

    feature: str
    value: float
    level: float
    baseline: float
    rule: str


class Baseline:
    """Learn one channel's healthy reference, then report alarm-level exceedances.

    Args:
        learn_readings: readings to collect before the baseline is ready.
        learn_s: if set, learning also ends once this much time has passed since the
            first reading (with at least min_readings readings).
        min_readings: floor for a time-based end of learning.
        features: features to learn; others are ignored.
        k_mad: per-feature MAD multiplier (defaults: DEFAULT_K_MAD).
        min_ratio: per-feature minimum level / median ratio (defaults: DEFAULT_MIN_RATIO).
        iso_bc_mm_s: zone B/C boundary for velocity_rms_mm_s; None disables the ISO rule.
        max_samples: bound on stored learning values per feature (older ones are thinned).
    """

    def __init__(
        self,
        *,
        learn_readings: int = 60,
        learn_s: float | None = None,
        min_readings: int = 20,
        features: Iterable[str] | None = None,
        k_mad: Mapping[str, float] | None = None,
        min_ratio: Mapping[str, float] | None = None,
        iso_bc_mm_s: float | None = None,
        max_samples: int = 2048,
    ) -> None:
        if learn_readings < 3 or min_readings < 3 or max_samples < 16:
            raise ValueError("need learn_readings >= 3, min_readings >= 3, max_samples >= 16")
        self.learn_readings = int(learn_readings)
        self.learn_s = None if learn_s is None else float(learn_s)
        self.min_readings = int(min_readings)
        self.k_mad = dict(DEFAULT_K_MAD if k_mad is None else k_mad)
        self.min_ratio = dict(DEFAULT_MIN_RATIO if min_ratio is None else min_ratio)
        self.iso_bc_mm_s = iso_bc_mm_s
        default = set(self.k_mad) | ({VELOCITY_RMS} if iso_bc_mm_s is not None else set())
        self.features = tuple(sorted(default if features is None else set(features)))
        self.max_samples = int(max_samples)
        self.reset()

    def reset(self) -> None:
        """Start learning again (after install, repair or maintenance)."""
        self._samples: dict[str, list[float]] = {f: [] for f in self.features}
        self._stride = 1  # keep every stride-th reading once max_samples is reached
        self._count = 0
        self._first_t: float | None = None
        self._stats: dict[str, tuple[float, float]] | None = None  # feature -> (median, MAD)

    @property
    def ready(self) -> bool:
        """True once learning has finished."""
        return self._stats is not None

    @property
    def readings_seen(self) -> int:
        """Readings used (or seen) while learning."""
        return self._count

    def update(self, t_s: float, features: Mapping[str, float]) -> bool:
        """Feed one reading; while learning it is stored, afterwards it is ignored.

        Args:
            t_s: reading time, seconds (any fixed epoch).
            features: canonical feature name -> value.

        Returns:
            True when this reading completed the baseline.
        """
        if self._stats is not None:
            return False
        if self._first_t is None:
            self._first_t = t_s
        if self._count % self._stride == 0:
            for f in self.features:
                v = features.get(f)
                if v is not None and math.isfinite(v):
                    self._samples[f].append(float(v))
            if any(len(s) >= self.max_samples for s in self._samples.values()):
                self._samples = {f: s[::2] for f, s in self._samples.items()}
                self._stride *= 2
        self._count += 1
        timed_out = (
            self.learn_s is not None
            and t_s - self._first_t >= self.learn_s
            and self._count >= self.min_readings
        )
        if self._count >= self.learn_readings or timed_out:
            self._finish()
            return True
        return False

    def _finish(self) -> None:
        stats = {}
        for f, values in self._samples.items():
            if values:
                a = np.asarray(values)
                med = float(np.median(a))
                stats[f] = (med, float(np.median(np.abs(a - med))))
        self._stats = stats
        self._samples = {f: [] for f in self.features}

    def levels(self) -> dict[str, tuple[float, str]]:
        """Alarm level and rule per learned feature ({} while learning)."""
        if self._stats is None:
            return {}
        out: dict[str, tuple[float, str]] = {}
        for f, (med, mad) in self._stats.items():
            if f == VELOCITY_RMS and self.iso_bc_mm_s is not None:
                out[f] = (iso_alarm_level(med, self.iso_bc_mm_s), "ISO 20816-1 baseline alarm")
            elif f in self.k_mad:
                k, r = self.k_mad[f], self.min_ratio.get(f, 1.0)
                out[f] = (
                    max(med + k * _MAD_SIGMA * mad, r * med),
                    f"max(median + {k:g} x 1.4826 MAD, {r:g} x median)",
                )
        return out

    def baseline(self, feature: str) -> float | None:
        """The learned median of a feature, or None."""
        if self._stats is None or feature not in self._stats:
            return None
        return self._stats[feature][0]

    def exceedances(self, features: Mapping[str, float]) -> list[Exceedance]:
        """Features of one reading that are above their alarm level."""
        if self._stats is None:
            return []
        out = []
        for f, (level, rule) in self.levels().items():
            v = features.get(f)
            if v is not None and v > level:
                out.append(Exceedance(f, float(v), level, self._stats[f][0], rule))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state."""
        return {
            "version": _STATE_VERSION,
            "config": {
                "learn_readings": self.learn_readings,
                "learn_s": self.learn_s,
                "min_readings": self.min_readings,
                "features": list(self.features),
                "k_mad": self.k_mad,
                "min_ratio": self.min_ratio,
                "iso_bc_mm_s": self.iso_bc_mm_s,
                "max_samples": self.max_samples,
            },
            "samples": self._samples,
            "stride": self._stride,
            "count": self._count,
            "first_t": self._first_t,
            "stats": None if self._stats is None else {f: list(s) for f, s in self._stats.items()},
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Baseline:
        """Rebuild a Baseline from to_dict() output.

        Raises:
            ValueError: unknown state version.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown baseline state version {state.get('version')!r}")
        b = cls(**state["config"])
        b._samples = {f: [float(x) for x in state["samples"].get(f, [])] for f in b.features}
        b._stride = int(state["stride"])
        b._count = int(state["count"])
        b._first_t = state["first_t"]
        stats = state["stats"]
        b._stats = (
            None if stats is None else {f: (float(m), float(d)) for f, (m, d) in stats.items()}
        )
        return b
