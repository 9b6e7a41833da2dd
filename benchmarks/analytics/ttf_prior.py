"""Population priors of remaining life for the benchmark (never in an alert record).

Both priors are log-normal fits to durations observed on the training bearings:
- life prior: total life; remaining life at age a is (L - a) given L > a;
- onset prior: degradation onset -> failure; remaining at d after onset is (D - d) given
  D > d.
The point reported is the one that maximises the expected PHM 2012 accuracy under the
conditional distribution (late predictions cost four times more than early ones, so it
sits at a low quantile). No free parameter: nothing here is tuned on the scored bearing.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

_N = 200  # quantiles of the conditional distribution used as samples
_MIN_SD = 0.25  # ln units: five durations understate the spread of a population
_STD = NormalDist()


def phm_a(actual: np.ndarray, predicted: float) -> np.ndarray:
    """PHM 2012 accuracy of one prediction against many possible actual values."""
    er = np.clip(100.0 * (actual - predicted) / actual, -1000.0, 100.0)
    return np.where(er <= 0.0, np.exp(-math.log(0.5) * er / 5.0), np.exp(math.log(0.5) * er / 20.0))


def lognormal_fit(durations_s: list[float]) -> tuple[float, float]:
    """(mean, sd) of ln(duration), sd floored at 0.25."""
    logs = np.log(np.maximum(np.asarray(durations_s, dtype=float), 1.0))
    return float(logs.mean()), max(float(logs.std(ddof=1)) if len(logs) > 1 else 1.0, _MIN_SD)


def conditional_residuals(age_s: float, durations_s: list[float]) -> np.ndarray:
    """Quantile samples of (D - age) given D > age, D log-normal fitted to durations_s."""
    mu, sd = lognormal_fit(durations_s)
    p0 = _STD.cdf((math.log(max(age_s, 1.0)) - mu) / sd)
    p0 = min(p0, 1.0 - 1e-9)
    ps = p0 + (1.0 - p0) * (np.arange(_N) + 0.5) / _N
    z = np.array([_STD.inv_cdf(min(p, 1.0 - 1e-12)) for p in ps])
    return np.maximum(np.exp(mu + sd * z) - age_s, 1.0)


def best_point(residuals_s: np.ndarray) -> float:
    """The prediction maximising the mean PHM accuracy over the residual samples."""
    cands = np.quantile(residuals_s, np.linspace(0.0, 1.0, 101))
    scores = [float(phm_a(residuals_s, c).mean()) for c in cands]
    return float(cands[int(np.argmax(scores))])


def conditional_point(age_s: float, durations_s: list[float]) -> float:
    """Expected-accuracy-optimal remaining time at age_s under the duration prior."""
    return best_point(conditional_residuals(age_s, durations_s))


def median_point(age_s: float, lives_s: list[float], scale: float) -> float:
    """Phase-2 fallback, kept for comparison: scale x median remaining life of the training
    bearings that outlived age_s; 10 % of the age when none did."""
    rest = [life - age_s for life in lives_s if life > age_s]
    return scale * float(np.median(rest)) if rest else 0.1 * age_s
