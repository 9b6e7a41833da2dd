"""Bayesian exponential degradation (Gebraeel-style) from a degradation onset.

After onset the failure metric m is modelled as ln m(t) = a + b (t - t_onset) + e: the
damage grows geometrically at rate b (ln units per second). b has a log-normal prior (from
the asset's configuration, or learned from run-to-failure bearings in the benchmark); a is
left free. The posterior of b is evaluated on a grid (exact for this one-parameter model,
a few hundred numpy operations), and each b gives a remaining time
(ln threshold - level now) / b. The reported time is a low posterior quantile (default
0.25) because a late warning costs a failure while an early one costs a planned stop; the
bounds are the 2.5 % and 97.5 % quantiles (a 95 % interval).

Successive bins of a vibration metric are often strongly autocorrelated, so the likelihood is
down-weighted: by the AR(1) effective-sample fraction of the residuals, (1 - r1)/(1 + r1),
but never below likelihood_weight (chosen leave-one-bearing-out in benchmarks/analytics).
Without it the posterior would trust a few flat minutes far too much; with only the fixed
weight it would ignore a clean, fast trend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.analysis.trend import NoEstimate, TrendEstimate

__all__ = [
    "MODEL_NAME",
    "DegradationPrior",
    "PosteriorTuning",
    "asset_prior",
    "bayes_exponential",
]

MODEL_NAME = "bayes-exponential"
_DAY_S = 86400.0
_HOUR_S = 3600.0
_GRID = np.linspace(-4.0, 4.0, 161)  # the grid's extent and size, in prior standard deviations
_MIN_VAR = 1e-4  # floor of the residual variance (ln units^2)
# No estimate while the bounds span more than this ratio: such a number says nothing a
# maintenance planner can use, and a point inside it is mostly the prior.
MAX_BOUND_RATIO = 100.0
_MIN_LOWER_H = 1.0 / 60.0  # a lower bound under a minute counts as one minute
_MAX_LN_LEVEL = 700.0  # exp() of more overflows a float
_FINE = 41  # points of the fine pass over the posterior's mass
_MIX_OFFSETS = np.array([-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0])  # mixture CDF points, in sd


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
        likelihood_weight: least tempering of the likelihood (autocorrelated bins).
        quantile: posterior quantile of remaining time reported as the estimate.
        interval: posterior quantiles reported as lower and upper bounds.
    """

    likelihood_weight: float = 0.03
    quantile: float = 0.25
    interval: tuple[float, float] = (0.025, 0.975)


def _span(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 2 else f"{hours:.1f} h" if hours < 48 else (
        f"{hours / 24:.0f} d")  # fmt: skip


def asset_prior(
    rate_per_day: float | None,
    log_sd: float,
    horizon_hours: float,
    threshold: float,
    values: np.ndarray,
) -> DegradationPrior:
    """An asset's configured prior, or by default: reach the threshold in one horizon.

    Args:
        rate_per_day: configured prior median rate (ln units per day), or None.
        log_sd: configured prior spread.
        horizon_hours: the asset's planning horizon.
        threshold: the failure threshold.
        values: the failure metric's recent values (the default starts from their mean).
    """
    if rate_per_day is not None:
        return DegradationPrior(rate_per_day, log_sd)
    vals = values[values > 0.0]
    start = float(vals.mean()) if vals.shape[0] else threshold / math.e
    gap = max(math.log(threshold / start), 0.1)
    return DegradationPrior(gap / (horizon_hours / 24.0), log_sd)


def _independent_fraction(resid: np.ndarray) -> float:
    """n_eff / n of residuals under an AR(1) model: (1 - r1) / (1 + r1), in [0, 1].

    White residuals (a clean trend) count in full; strongly autocorrelated ones (slow
    wander around the fit) count as a few independent points.
    """
    r = resid - resid.mean()
    den = float(r @ r)
    if r.shape[0] < 3 or den <= 0.0:
        return 0.0
    r1 = min(max(float(r[1:] @ r[:-1]) / den, 0.0), 0.999)
    return (1.0 - r1) / (1.0 + r1)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF (Abramowitz-Stegun 7.1.26, error < 1.5e-7); numpy only."""
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erf = 1.0 - poly * np.exp(-x * x)
    return 0.5 * (1.0 + np.sign(z) * erf)


def _mixture_quantiles(
    means: np.ndarray, sds: np.ndarray, weights: np.ndarray, qs: list[float]
) -> list[float]:
    """Quantiles of a weighted mixture of normals.

    The CDF is evaluated around every component (its mean +- 4 sd), not on one even grid:
    the components' means can span seconds to years, and an even grid would blur the
    components that carry the mass into a single cell.
    """
    keep = weights > weights.max() * 1e-6
    m, sd, w = means[keep], np.maximum(sds[keep], 1e-12), weights[keep] / weights[keep].sum()
    grid = np.unique((m[None, :] + sd[None, :] * _MIX_OFFSETS[:, None]).ravel())
    cdf = (_normal_cdf((grid[:, None] - m[None, :]) / sd[None, :]) * w[None, :]).sum(axis=1)
    return [float(np.interp(q, cdf, grid)) for q in qs]


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
    x = t - onset_s
    # Grid of ln(rate): the prior's +-4 sd, widened to the data's own least-squares rate when
    # that lies outside (a machine degrading much faster than the prior expects must still
    # be seen); the prior enters as its log-density, not as the grid's extent.
    mu = math.log(prior.rate_per_day / _DAY_S)
    lo, hi = mu + prior.log_sd * _GRID[0], mu + prior.log_sd * _GRID[-1]
    xc = x - x.mean()
    sxx0 = float(xc @ xc)
    if sxx0 > 0:
        ls_rate = float(xc @ (y - y.mean())) / sxx0
        if ls_rate > 0:
            lo, hi = min(lo, math.log(ls_rate) - 1.0), max(hi, math.log(ls_rate) + 1.0)
    n = t.shape[0]

    var_floor = _MIN_VAR * max(n - 2, 1)

    # With a free intercept the fit is closed-form: for rate b, intercept ybar - b xbar and
    # ssr(b) = Syy - 2 b Sxy + b^2 Sxx; nothing per point and grid cell is needed.
    ybar, xbar = float(y.mean()), float(x.mean())
    yc = y - ybar
    syy, sxy = float(yc @ yc), float(xc @ yc)

    def posterior(
        log_rates: np.ndarray, weight: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rates = np.exp(log_rates)  # per second
        a = ybar - rates * xbar
        ssr = np.maximum(syy - 2.0 * rates * sxy + rates * rates * sxx0, 0.0)
        z = (log_rates - mu) / prior.log_sd  # prior standard scores
        # The noise level is unknown: integrated out (Jeffreys prior), the likelihood of a
        # rate is ssr^(-(n-1)/2), which stays honest when a few points fit almost exactly.
        log_post = -weight * 0.5 * (n - 1) * np.log(np.maximum(ssr, var_floor)) - 0.5 * z * z
        return rates, a, ssr, np.exp(log_post - log_post.max())

    # Coarse pass over the whole range; the tempering comes from the best fit's residuals...
    log_rates = np.linspace(lo, hi, _GRID.shape[0])
    ls = math.log(sxy / sxx0) if sxx0 > 0 and sxy > 0 else float(log_rates[0])
    b_best = math.exp(min(max(ls, lo), hi))
    weight = max(
        tu.likelihood_weight, _independent_fraction(y - (ybar - b_best * xbar) - b_best * x)
    )
    _, _, _, w = posterior(log_rates, weight)
    # ...a fine pass over where the posterior has mass keeps a sharp posterior's quantiles
    # (and so the bounds) from collapsing onto one grid cell.
    mass = np.flatnonzero(w > 1e-9)
    lo_i, hi_i = max(int(mass[0]) - 1, 0), min(int(mass[-1]) + 1, log_rates.shape[0] - 1)
    log_rates = np.linspace(log_rates[lo_i], log_rates[hi_i], _FINE)
    rates, a, ssr, w = posterior(log_rates, weight)
    level_now = a + rates * (now_s - onset_s)
    # Given a rate, the level now is known only to sd sqrt(var / n_eff): the remaining time
    # is a mixture over rates of normals, not one point per rate (too-tight bounds).
    var = np.maximum(ssr, var_floor) / max(n - 2, 1)
    level_sd = np.sqrt(var / max(weight * n, 1.0))
    remaining_s = (y_thr - level_now) / rates
    hours, lower, upper = (
        max(q, 0.0) / _HOUR_S
        for q in _mixture_quantiles(remaining_s, level_sd / rates, w, [tu.quantile, *tu.interval])
    )
    if upper > MAX_BOUND_RATIO * max(lower, _MIN_LOWER_H):
        return NoEstimate(
            f"trend not yet informative: the 95 % bounds would span {_span(lower)} to "
            f"{_span(upper)} (more than {MAX_BOUND_RATIO:g}x)"
        )
    # The rate consistent with the reported time: the same posterior quantile, from the
    # fast side (a low quantile of remaining time is a high quantile of rate).
    rate_med = _quantiles(rates, w, [1.0 - tu.quantile])[0]
    level_med = _quantiles(level_now, w, [0.5])[0]
    if level_med > _MAX_LN_LEVEL:  # the fit extrapolates far past its data
        return NoEstimate("the trend extrapolates far beyond its last data point")
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
