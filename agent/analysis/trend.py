"""Online trend of one health indicator and its time to a failure threshold.

Memory is bounded: readings are averaged into fixed-width time bins, and when the history
holds more than `capacity` bins the older half is thinned by merging neighbouring pairs, so
recent data keeps full resolution and old data survives at lower resolution. The state is
plain JSON (to_dict / from_dict) so the agent can persist it across restarts.

Models (chosen in benchmarks/analytics on the FEMTO run-to-failure bearings):
- "exponential": Theil-Sen line through log(value) over the recent window; bearing
  degradation grows roughly geometrically once it starts.
- "linear": Theil-Sen line through value over the recent window.

No estimate is given until the slope is significant (OLS t statistic of the window >=
min_t). The bounds combine the slope's confidence interval with empirical ratio factors
(actual / predicted remaining time) measured on run-to-failure data, because run-to-run
scatter is far larger than the fit's own uncertainty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["NoEstimate", "Trend", "TrendEstimate"]

Model = Literal["exponential", "linear"]
_DAY_S = 86400.0
_HOUR_S = 3600.0
_STATE_VERSION = 1


CLOCK_RESET_S = 3600.0  # a step back larger than this discards the history (see update)


@dataclass(frozen=True, slots=True)
class TrendEstimate:
    """A time-to-threshold estimate.

    Attributes:
        value: the fitted indicator value now, in the indicator's own unit.
        rate_per_day: the fitted rate of change now, indicator unit per day.
        hours: central estimate of the time until the fit reaches the threshold.
        lower_hours: lower bound of that time.
        upper_hours: upper bound of that time.
        model: "exponential" or "linear".
        window_hours: length of the history window the fit used.
        slope_t: t statistic of the slope (significance of the trend).
        points: number of (binned) points in the window.
    """

    value: float
    rate_per_day: float
    hours: float
    lower_hours: float
    upper_hours: float
    model: str
    window_hours: float
    slope_t: float
    points: int


@dataclass(frozen=True, slots=True)
class NoEstimate:
    """Why no time-to-threshold estimate is available.

    Attributes:
        reason: a human sentence, e.g. "only 4 points in the last 2.0 h; need 10".
    """

    reason: str


def _theil_sen(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Median pairwise slope and the matching median intercept."""
    i, j = np.triu_indices(t.shape[0], k=1)
    dt = t[j] - t[i]
    ok = dt > 0.0
    slope = float(np.median((y[j][ok] - y[i][ok]) / dt[ok]))
    return slope, float(np.median(y - slope * t))


def _ols_slope_t(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """OLS slope and its standard error."""
    tc = t - t.mean()
    sxx = float(tc @ tc)
    slope = float(tc @ (y - y.mean())) / sxx
    resid = y - y.mean() - slope * tc
    dof = max(t.shape[0] - 2, 1)
    se = math.sqrt(float(resid @ resid) / dof / sxx)
    return slope, se


class Trend:
    """Binned, bounded history of one indicator with a time-to-threshold estimate.

    Args:
        model: "exponential" (fit on log values) or "linear".
        bin_s: width of a time bin; readings inside one bin are averaged.
        window_bins: number of most recent bins the fit uses.
        min_points: minimum binned points in the window before estimating.
        min_t: minimum slope t statistic for a trend to count as significant.
        capacity: maximum bins kept (older half thinned by pair merging beyond this).
        ci_z: width of the slope confidence interval, in standard errors.
        ratio_bounds: (low, high) empirical factors: the bounds are at least
            hours * low and hours * high.
    """

    def __init__(
        self,
        *,
        model: Model = "exponential",
        bin_s: float = 60.0,
        window_bins: int = 30,
        min_points: int = 10,
        min_t: float = 3.0,
        capacity: int = 256,
        ci_z: float = 2.0,
        ratio_bounds: tuple[float, float] = (0.3, 3.0),
    ) -> None:
        if model not in ("exponential", "linear"):
            raise ValueError(f"model must be 'exponential' or 'linear', got {model!r}")
        if bin_s <= 0.0 or window_bins < 3 or min_points < 3 or capacity < 2 * window_bins:
            raise ValueError(
                "need bin_s > 0, window_bins >= 3, min_points >= 3, capacity >= 2*window_bins"
            )
        if not 0.0 < ratio_bounds[0] <= 1.0 <= ratio_bounds[1]:
            raise ValueError(f"ratio_bounds must satisfy 0 < low <= 1 <= high: {ratio_bounds}")
        self.model: Model = model
        self.bin_s = float(bin_s)
        self.window_bins = int(window_bins)
        self.min_points = int(min_points)
        self.min_t = float(min_t)
        self.capacity = int(capacity)
        self.ci_z = float(ci_z)
        self.ratio_bounds = (float(ratio_bounds[0]), float(ratio_bounds[1]))
        self.reset()

    def reset(self) -> None:
        """Forget the history (after a repair)."""
        # Closed bins: mean time, mean value, reading count.
        self._t: list[float] = []
        self._v: list[float] = []
        self._n: list[int] = []
        # Open bin: index, sums and count.
        self._open_bin: int | None = None
        self._open_t = 0.0
        self._open_v = 0.0
        self._open_n = 0

    def __len__(self) -> int:
        return len(self._t) + (1 if self._open_n else 0)

    def update(self, t_s: float, value: float) -> None:
        """Add one reading.

        Args:
            t_s: reading time in seconds (any fixed epoch, e.g. UNIX time).
            value: indicator value; non-finite values are ignored, and for the
                exponential model values <= 0 are ignored.
        """
        if not math.isfinite(value) or (self.model == "exponential" and value <= 0.0):
            return
        b = math.floor(t_s / self.bin_s)
        if self._open_bin is not None and b < self._open_bin:
            if (self._open_bin - b) * self.bin_s < CLOCK_RESET_S:
                return  # clock stepped back a little: keep the history monotonic
            # The history was written under a clock far ahead (since corrected): it cannot
            # be placed on the real time line, and keeping it would freeze the trend.
            self.reset()
        if self._open_bin is not None and b != self._open_bin:
            self._close_bin()
        self._open_bin = b
        self._open_t += t_s
        self._open_v += value
        self._open_n += 1

    def _close_bin(self) -> None:
        if self._open_n:
            self._t.append(self._open_t / self._open_n)
            self._v.append(self._open_v / self._open_n)
            self._n.append(self._open_n)
        self._open_t = self._open_v = 0.0
        self._open_n = 0
        if len(self._t) > self.capacity:
            self._thin()

    def _thin(self) -> None:
        """Merge neighbouring pairs in the older half of the history."""
        half = (len(self._t) - self.window_bins) // 2 * 2
        t, v, n = [], [], []
        for k in range(0, half, 2):
            w = self._n[k] + self._n[k + 1]
            t.append((self._t[k] * self._n[k] + self._t[k + 1] * self._n[k + 1]) / w)
            v.append((self._v[k] * self._n[k] + self._v[k + 1] * self._n[k + 1]) / w)
            n.append(w)
        self._t = t + self._t[half:]
        self._v = v + self._v[half:]
        self._n = n + self._n[half:]

    def last(self) -> float | None:
        """The newest bin's mean value (the open bin's while it has readings); None if empty."""
        if self._open_n:
            return self._open_v / self._open_n
        return self._v[-1] if self._v else None

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """Binned history (times, mean values), oldest first, open bin included."""
        return self._points()

    def _points(self) -> tuple[np.ndarray, np.ndarray]:
        t, v = list(self._t), list(self._v)
        if self._open_n:
            t.append(self._open_t / self._open_n)
            v.append(self._open_v / self._open_n)
        return np.asarray(t), np.asarray(v)

    def estimate(self, now_s: float, failure_threshold: float) -> TrendEstimate | NoEstimate:
        """Time until the indicator's trend reaches failure_threshold.

        Args:
            now_s: current time, same epoch as update().
            failure_threshold: indicator value that defines failure (same unit).

        Returns:
            A TrendEstimate, or NoEstimate with the reason.
        """
        window_s = self.window_bins * self.bin_s
        t, v = self._points()
        keep = t >= now_s - window_s
        t, v = t[keep], v[keep]
        if t.shape[0] < self.min_points:
            return NoEstimate(
                f"only {t.shape[0]} points in the last {window_s / _HOUR_S:.3g} h; "
                f"need {self.min_points}"
            )
        exp = self.model == "exponential"
        if exp and failure_threshold <= 0.0:
            return NoEstimate("the exponential model needs a positive failure threshold")
        y = np.log(v) if exp else v
        y_thr = math.log(failure_threshold) if exp else failure_threshold
        t_rel = t - now_s  # fit around now: better conditioning, intercept = level now
        ols_slope, se = _ols_slope_t(t_rel, y)
        slope_t = ols_slope / se if se > 0.0 else (math.inf if ols_slope > 0.0 else 0.0)
        if not slope_t >= self.min_t:
            return NoEstimate(
                f"no significant upward trend (slope t = {slope_t:.2g} < {self.min_t:g})"
            )
        slope, level = _theil_sen(t_rel, y)
        if slope <= 0.0:
            return NoEstimate("robust slope is not upward although the mean slope is")
        if level >= y_thr or float(v[-1]) >= failure_threshold:
            return NoEstimate("already past the threshold")
        gap = y_thr - level
        hours = gap / slope / _HOUR_S
        se_hi = slope + self.ci_z * se
        se_lo = slope - self.ci_z * se
        lower = min(gap / se_hi / _HOUR_S, hours * self.ratio_bounds[0])
        upper = hours * self.ratio_bounds[1]
        if se_lo > 0.0:
            upper = max(upper, gap / se_lo / _HOUR_S)
        value = math.exp(level) if exp else level
        rate = (value * slope if exp else slope) * _DAY_S
        return TrendEstimate(
            value=value,
            rate_per_day=rate,
            hours=hours,
            lower_hours=lower,
            upper_hours=upper,
            model=self.model,
            window_hours=window_s / _HOUR_S,
            slope_t=slope_t,
            points=int(t.shape[0]),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state (configuration and history)."""
        return {
            "version": _STATE_VERSION,
            "config": {
                "model": self.model,
                "bin_s": self.bin_s,
                "window_bins": self.window_bins,
                "min_points": self.min_points,
                "min_t": self.min_t,
                "capacity": self.capacity,
                "ci_z": self.ci_z,
                "ratio_bounds": list(self.ratio_bounds),
            },
            "bins": {"t": list(self._t), "v": list(self._v), "n": list(self._n)},
            "open": {
                "bin": self._open_bin,
                "t": self._open_t,
                "v": self._open_v,
                "n": self._open_n,
            },
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Trend:
        """Rebuild a Trend from to_dict() output.

        Raises:
            ValueError: the state has an unknown version or is inconsistent.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown trend state version {state.get('version')!r}")
        cfg = dict(state["config"])
        cfg["ratio_bounds"] = tuple(cfg["ratio_bounds"])
        trend = cls(**cfg)
        bins, opened = state["bins"], state["open"]
        if not len(bins["t"]) == len(bins["v"]) == len(bins["n"]):
            raise ValueError("trend state bins have different lengths")
        trend._t = [float(x) for x in bins["t"]]
        trend._v = [float(x) for x in bins["v"]]
        trend._n = [int(x) for x in bins["n"]]
        trend._open_bin = None if opened["bin"] is None else int(opened["bin"])
        trend._open_t = float(opened["t"])
        trend._open_v = float(opened["v"])
        trend._open_n = int(opened["n"])
        return trend
