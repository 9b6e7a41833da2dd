"""A per-channel health indicator normalised by the channel's own learned baseline.

HI = exponentially smoothed (EWMA) running median of 3 of the mean over the indicator
features of ln(value / baseline median).
The features are broadband acceleration RMS and high-frequency acceleration RMS: on the
FEMTO run-to-failure bearings they rise earlier and more steadily than velocity RMS, and
smart sensors (Banner QM30VT2) report both. When a channel carries neither, velocity RMS is
used. Smoothing (EWMA) removes the single-snapshot spikes (impacts, load changes) that made
the per-feature alarms of phase 1 raise before degradation onset; the running median of 3
before it keeps one reading, however far off, from moving it at all (the EWMA alone held a
single 12x glitch over the alarm level for longer than the debounce). It costs a lasting
rise one reading; the alarm level is learned as before, from the unfiltered indicator.

Alarm level: max(median + k x 1.4826 x MAD of the smoothed HI over the baseline, min_level),
in ln units (min_level 0.2 = the features about 22 % above baseline). alpha, k and min_level
are selected inside each leave-one-bearing-out fold on the five training bearings (zero
false alarms, then longest lead); the defaults are the most common fold choice
(benchmarks/analytics/README.md reports every fold's choice).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from drivers.reading import ACCEL_RMS, HF_ACCEL_RMS, VELOCITY_RMS

__all__ = ["HI_FEATURES", "HealthIndex", "HealthIndexTuning"]

HI_FEATURES = (ACCEL_RMS, HF_ACCEL_RMS)
_FALLBACK = (VELOCITY_RMS,)
_MAD_SIGMA = 1.4826
_STATE_VERSION = 1
SPIKE_WINDOW = 3  # raw indicators whose median feeds the EWMA (_despiked)


@dataclass(frozen=True, slots=True)
class HealthIndexTuning:
    """Alarm-level tuning of the health indicator.

    Attributes:
        alpha: EWMA weight of a new reading (0.1: about 10 readings of memory).
        k_mad: MAD multiplier of the alarm level.
        min_level: floor of the alarm level, ln units.
    """

    alpha: float = 0.1
    k_mad: float = 10.0
    min_level: float = 0.2


class HealthIndex:
    """Learn the baseline of one channel, then report the smoothed health indicator.

    Args:
        learn_readings: readings that form the baseline.
        tuning: smoothing and alarm-level settings.
    """

    def __init__(self, learn_readings: int = 60, tuning: HealthIndexTuning | None = None) -> None:
        if learn_readings < 10:
            raise ValueError(f"learn_readings must be >= 10, got {learn_readings}")
        self.learn_readings = int(learn_readings)
        self.tuning = tuning or HealthIndexTuning()
        self.reset()

    def reset(self) -> None:
        """Start learning again (after install, repair or maintenance)."""
        self.features: tuple[str, ...] = ()
        # The learning window, row after row (len(features) values each), as C doubles:
        # thousands of channels learn at once after a start, and a list of float objects
        # per reading cost about 16 times the memory.
        self._samples = array("d")
        self._median: list[float] = []
        # Velocity RMS over the same learning window, for the ISO 20816-1 baseline alarm.
        self._velocity = array("d")
        self.velocity_median: float | None = None
        self.level: float | None = None  # alarm level once the baseline is learned
        self.value: float | None = None  # smoothed HI once the baseline is learned
        self.learned_at_s: float | None = None
        self._recent: list[float] = []  # the last raw indicators, for the spike filter

    @property
    def samples_seen(self) -> int:
        """Readings collected towards the baseline so far."""
        return len(self._samples) // len(self.features) if self.features else 0

    @property
    def ready(self) -> bool:
        """True once the baseline has been learned."""
        return self.level is not None

    def _raw(self, values: list[float]) -> float:
        return sum(math.log(v / m) for v, m in zip(values, self._median, strict=True)) / len(values)

    def above_baseline(self, features: Mapping[str, float]) -> bool:
        """Whether the reading's indicator features are, on average, above the medians
        learned while the machine ran (False while learning, or when it lacks them)."""
        if self.level is None or not self.features:
            return False
        values = [features.get(f, math.nan) for f in self.features]
        if not all(v > 0.0 and math.isfinite(v) for v in values):
            return False
        return self._raw(values) > 0.0

    def _despiked(self, raw: float) -> float:
        """The median of this raw indicator and the two before it (itself until there are
        two): one reading cannot move the smoothed indicator, however far off it is. The
        EWMA alone let a single 12x glitch of the acceleration features (a knock, a bad
        packet inside the valid range) hold it over the alarm level for more readings than
        the debounce, raising a degradation onset from one reading."""
        window = [*self._recent[-(SPIKE_WINDOW - 1) :], raw]
        self._recent = window[-(SPIKE_WINDOW - 1) :]
        return sorted(window)[len(window) // 2] if len(window) == SPIKE_WINDOW else raw

    def _rows(self) -> list[list[float]]:
        k = len(self.features)
        s = self._samples.tolist()
        return [s[i : i + k] for i in range(0, len(s), k)] if k else []

    def update(self, t_s: float, features: Mapping[str, float]) -> float | None:
        """Feed one reading.

        Args:
            t_s: reading time, seconds.
            features: canonical feature name -> value.

        Returns:
            The smoothed health indicator (ln units, 0 = baseline), or None while learning
            or when the reading lacks the indicator features.
        """
        if not self.features:
            self.features = tuple(f for f in HI_FEATURES if f in features) or tuple(
                f for f in _FALLBACK if f in features
            )
            if not self.features:
                return None
        values = [features.get(f, math.nan) for f in self.features]
        for v in values:
            if not (v > 0.0 and math.isfinite(v)):
                return None  # a zero or missing value carries no health information
        if self.level is None:
            self._samples.extend(values)
            v = features.get(VELOCITY_RMS, math.nan)
            if v > 0.0 and math.isfinite(v):
                self._velocity.append(float(v))
            if len(self._samples) >= self.learn_readings * len(values):
                self._finish(t_s)
            return None
        a = self.tuning.alpha
        assert self.value is not None
        self.value += a * (self._despiked(self._raw(values)) - self.value)
        return self.value

    def _finish(self, t_s: float) -> None:
        rows = self._rows()
        arr = np.asarray(self._samples).reshape(len(rows), len(self.features))
        self._median = [float(x) for x in np.median(arr, axis=0)]
        smoothed = []
        s = self._raw(rows[0])
        for row in rows:
            s += self.tuning.alpha * (self._raw(row) - s)
            smoothed.append(s)
        self._recent = [self._raw(row) for row in rows[-(SPIKE_WINDOW - 1) :]]
        warm = smoothed[min(10, len(smoothed) // 6) :]  # skip the EWMA start-up transient
        med = float(np.median(warm))
        mad = float(np.median(np.abs(np.asarray(warm) - med)))
        self.level = max(med + self.tuning.k_mad * _MAD_SIGMA * mad, self.tuning.min_level)
        self.value = s
        self.learned_at_s = t_s
        self._samples = array("d")
        self.velocity_median = float(np.median(self._velocity)) if self._velocity else None
        self._velocity = array("d")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state."""
        return {
            "version": _STATE_VERSION,
            "features": list(self.features),
            "samples": self._rows(),
            "median": self._median,
            "velocity": self._velocity.tolist(),
            "velocity_median": self.velocity_median,
            "level": self.level,
            "value": self.value,
            "learned_at_s": self.learned_at_s,
            "recent": list(self._recent),
        }

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore to_dict() output (keeps this object's settings).

        Raises:
            ValueError: unknown state version.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown health index state version {state.get('version')!r}")
        self.features = tuple(state["features"])
        rows = state["samples"]
        if any(len(row) != len(self.features) for row in rows):
            raise ValueError("health index state: a sample row does not match the features")
        self._samples = array("d", (float(x) for row in rows for x in row))
        self._median = [float(x) for x in state["median"]]
        self._velocity = array("d", (float(x) for x in state.get("velocity", [])))
        self.velocity_median = state.get("velocity_median")
        self.level = state["level"]
        self.value = state["value"]
        self.learned_at_s = state["learned_at_s"]
        self._recent = [float(x) for x in state.get("recent", [])][-(SPIKE_WINDOW - 1) :]
