"""Bayesian exponential degradation (Gebraeel-style) from a degradation onset.

After onset the failure metric m is modelled as ln m(t) = a + b (t - t_onset) + e: the
damage grows geometrically at rate b (ln units per second). b has a log-normal prior (from
the asset's configuration, or learned from run-to-failure bearings in the benchmark); a is
left free. The posterior of b is evaluated on a grid (exact for this one-parameter model,
a few hundred numpy operations), and each b gives a remaining time
(ln threshold - level now) / b. The reported time is a low posterior quantile (default
0.25) because a late warning costs a failure while an early one costs a planned stop; the
bounds are the 5 % and 95 % quantiles.

Successive bins of a vibration metric are strongly autocorrelated, so the likelihood is
down-weighted (likelihood_weight, chosen leave-one-bearing-out in benchmarks/analytics):
with one weight the posterior would trust a few flat minutes far too much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.analysis.trend import NoEstimate, TrendEstimate

__all__ = ["MODEL_NAME", "DegradationPrior", "PosteriorTuning", "bayes_exponential"]

MODEL_NAME = "bayes-exponential"
_DAY_S = 86400.0
_HOUR_S = 3600.0
_GRID = np.linspace(-4.0, 4.0, 161)  # prior standard deviations around the prior mean
_MIN_VAR = 1e-4  # floor of the residual variance (ln units^2)


@dataclass(frozen=True, slots=True)
class DegradationPrior:
    """Log-normal prior of the growth rate of ln(metric) after onset.

    Attributes:
        rate_per_day: prior median of the rate, ln units per day.
        log_sd: prior standard deviation of ln(rate).
    """

    rate_per_day: float
    log_sd: float


@dataclass(frozen=True, slots=True)
class PosteriorTuning:
    """How the posterior is turned into a number.

    Attributes:
        likelihood_weight: tempering of the likelihood (autocorrelated bins).
        quantile: posterior quantile of remaining time reported as the estimate.
        interval: posterior quantiles reported as lower and upper bounds.
    """

    likelihood_weight: float = 0.03
    quantile: float = 0.25
    interval: tuple[float, float] = (0.05, 0.95)


def _quantiles(values: np.ndarray, weights: np.ndarray, qs: list[float]) -> list[float]:
    order = np.argsort(values)
    cw = np.cumsum(weights[order])
    cw /= cw[-1]
    idx = np.minimum(np.searchsorted(cw, qs), len(order) - 1)
    return [float(values[order][i]) for i in idx]


def bayes_exponential(
    t_s: np.ndarray,
    values: np.ndarray,
    *,
    onset_s: float,
    now_s: float,
    threshold: float,
    prior: DegradationPrior,
    tuning: PosteriorTuning | None = None,
) -> TrendEstimate | NoEstimate:
    """Time until the failure metric reaches threshold, from the points since onset.

    Args:
        t_s: binned times (s), ascending; points before onset_s are allowed (they anchor
            the level) and may be passed by the caller.
        values: binned failure-metric values (> 0).
        onset_s: degradation onset time (s).
        now_s: the time of the estimate (s).
        threshold: the failure threshold, same unit as values.
        prior: prior of the growth rate.
        tuning: posterior settings.

    Returns:
        A TrendEstimate (model "bayes-exponential") or NoEstimate with the reason.
    """
    tu = tuning or PosteriorTuning()
    ok = (values > 0.0) & np.isfinite(values)
    t, y = t_s[ok], np.log(values[ok])
    if t.shape[0] < 3:
        return NoEstimate(f"only {t.shape[0]} binned points since the degradation onset; need 3")
    if threshold <= 0.0:
        return NoEstimate("the failure threshold must be positive")
    y_thr = math.log(threshold)
    if float(y[-1]) >= y_thr:
        return NoEstimate("the failure metric is already at or past its failure threshold")
    log_rates = math.log(prior.rate_per_day / _DAY_S) + prior.log_sd * _GRID
    rates = np.exp(log_rates)  # per second
    x = t - onset_s
    resid = y[None, :] - rates[:, None] * x[None, :]
    a = resid.mean(axis=1)
    ssr = ((resid - a[:, None]) ** 2).sum(axis=1)
    n = t.shape[0]
    var = max(float(ssr.min()) / max(n - 2, 1), _MIN_VAR)
    log_post = -tu.likelihood_weight * ssr / (2.0 * var) - 0.5 * _GRID * _GRID
    w = np.exp(log_post - log_post.max())
    level_now = a + rates * (now_s - onset_s)
    remaining_s = np.maximum((y_thr - level_now) / rates, 0.0)
    hours, lower, upper = (
        q / _HOUR_S for q in _quantiles(remaining_s, w, [tu.quantile, *tu.interval])
    )
    rate_med = _quantiles(rates, w, [0.5])[0]
    level_med = _quantiles(level_now, w, [0.5])[0]
    value = math.exp(level_med)
    tc = x - x.mean()
    sxx = float(tc @ tc)
    slope = float(tc @ (y - y.mean())) / sxx if sxx > 0 else 0.0
    se = math.sqrt(float(ssr.min()) / max(n - 2, 1) / sxx) if sxx > 0 else math.inf
    return TrendEstimate(
        value=value,
        rate_per_day=value * rate_med * _DAY_S,
        hours=hours,
        lower_hours=min(lower, hours),
        upper_hours=max(upper, hours),
        model=MODEL_NAME,
        window_hours=max(now_s - float(t[0]), 0.0) / _HOUR_S,
        slope_t=slope / se if se > 0 else 0.0,
        points=int(n),
    )
