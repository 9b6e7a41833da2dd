"""Time to failure: one Bayesian posterior of the remaining time R, from up to three terms.

- the reliability prior (agent.analysis.reliability): the asset class's life distribution,
  conditioned on the asset having survived to its current age;
- the degradation trend since onset (agent.analysis.degradation): a likelihood of R;
- the growth-rate prior of the trend, used only when no reliability prior is configured.

Before a degradation onset the posterior is the reliability prior alone. After it the trend
multiplies in: a flat history leaves the prior in charge, a clean steep rise takes over, and
everything in between is weighted by how informative each term is, so the estimate moves
smoothly from prior to data and its bounds narrow only as the trend earns it.

The posterior is evaluated on a grid of ln R (coarse over 1 s to 10^8 h, then fine over its
mass, once more when that is sharp). Reported: a point, the 95 % bounds, the model name and
the share of each term. The point is conservative, because the costs are not symmetric: a
late warning costs a failure, an early one a planned stop a little sooner (the PHM 2012
score weighs a late estimate four times an early one). It is the geometric mean of R over
the posterior's lowest quarter (POINT_TAIL): for a log-normal posterior its 10 % quantile
(to 0.01 sd of ln R), the remaining time within which one such machine in ten would fail
(ISO 281's L10, applied to the remaining life). A tail mean rather than the quantile itself,
because while the trend emerges the posterior can have two modes (growth begun or not) and a
quantile would jump between them from one minute to the next; the tail mean moves with their
weights. On the FEMTO learning bearings, leave-one-bearing-out, the point chosen on the
other five bearings was near the 0.05-0.1 quantile (benchmarks/analytics/README.md); the
lowest quarter is the convention, not a fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from agent.analysis.degradation import DegradationPrior, TrendEvidence
from agent.analysis.reliability import LifePrior
from agent.analysis.trend import NoEstimate

__all__ = [
    "MAX_BOUND_RATIO",
    "MODEL_FUSED",
    "MODEL_PRIOR",
    "MODEL_TREND",
    "POINT_TAIL",
    "Estimate",
    "PosteriorTuning",
    "aged",
    "remaining_life",
    "tail_levels",
]

MODEL_PRIOR = "reliability-prior"
MODEL_TREND = "bayes-exponential"
MODEL_FUSED = f"{MODEL_PRIOR}+{MODEL_TREND}"
POINT_TAIL = 0.25  # the point: geometric mean of R over this lowest share (module docstring)
_TAIL_STEPS = 16  # quantiles averaged over the tail: each moves at most 1/16 of a mode gap
MODEL_SHARE = 0.1  # a term with less than this share of the information is not named
# Without a reliability prior: no estimate while the bounds span more than this ratio (such
# a number says nothing a maintenance planner can use, and a point in it is mostly prior).
MAX_BOUND_RATIO = 100.0
_HOUR_S = 3600.0
_DAY_S = 86400.0
_MIN_LOWER_H = 1.0 / 60.0
_COARSE = np.linspace(0.0, math.log(1e8 * _HOUR_S), 48)  # ln R, R from 1 s to 10^8 h
_COARSE_R = np.exp(_COARSE)
# Fine cells over the mass: a sharp mode beside a long tail (the demo's bearing, minutes into
# its trend) needs this many; on 64 its mass was misplaced and the point jumped 2x from one
# bin to the next (tests/agent/analysis/test_ttf.py: within 5 % of 2048 cells here).
_FINE = 256
_UNIT = np.linspace(0.0, 1.0, _FINE)
_MIN_CELLS = 4  # the 16-84 % spread must cover this many fine cells, or zoom once more
_TAIL = 1e-9  # probability mass left outside the fine grid


@dataclass(frozen=True, slots=True)
class PosteriorTuning:
    """How the posterior is turned into a number.

    Attributes:
        likelihood_weight: least tempering of the trend likelihood (autocorrelated bins).
        point_tail: the point is the geometric mean of the remaining time over this lowest
            share of the posterior (default POINT_TAIL: about the remaining L10).
        interval: posterior quantiles reported as lower and upper bounds.
    """

    likelihood_weight: float = 0.03
    point_tail: float = POINT_TAIL
    interval: tuple[float, float] = (0.025, 0.975)


@dataclass(frozen=True, slots=True)
class Estimate:
    """A time-to-failure estimate and where it came from.

    Attributes:
        hours: the reported remaining time: the geometric mean over the posterior's lowest
            quarter (about the remaining L10: a 10 % chance of failure before it).
        lower_hours: lower 95 % bound.
        upper_hours: upper 95 % bound.
        model: the terms that carried weight (MODEL_PRIOR, MODEL_TREND or MODEL_FUSED).
        terms: each term's share of the information, e.g. {"reliability_prior": 0.8,
            "degradation_trend": 0.2}.
        basis: one sentence a planner can read: what the number rests on.
        value: the trend's fitted failure metric now (None before onset).
        rate_per_day: its growth now, metric units per day (None before onset).
        window_hours: the trend's history span (None before onset).
    """

    hours: float
    lower_hours: float
    upper_hours: float
    model: str
    terms: dict[str, float]
    basis: str
    value: float | None = None
    rate_per_day: float | None = None
    window_hours: float | None = None


def aged(est: Estimate, elapsed_s: float) -> Estimate:
    """The estimate as of elapsed_s after the moment it was computed: the point and both
    bounds less the time gone by, none under 0. An estimate is recomputed at most once per
    trend bin (less often far from failure), but a record states the time of its own
    reading: without this a figure of 24 s would be told 40 s after it was made."""
    if not elapsed_s > 0.0:  # also NaN: nothing known to subtract
        return est
    h = elapsed_s / _HOUR_S
    return replace(
        est,
        hours=max(est.hours - h, 0.0),
        lower_hours=max(est.lower_hours - h, 0.0),
        upper_hours=max(est.upper_hours - h, 0.0),
    )


def _span(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 2 else f"{hours:.1f} h" if hours < 48 else (
        f"{hours / 24:.0f} d")  # fmt: skip


def _quantiles(log_r: np.ndarray, log_p: np.ndarray, qs: list[float]) -> list[float]:
    """Quantiles (ln R) of a density given per ln R cell on an ascending grid."""
    p = np.exp(log_p - log_p.max())
    mid = 0.5 * (p[1:] + p[:-1]) * np.diff(log_r)
    cdf = np.concatenate(([0.0], np.cumsum(mid)))
    cdf /= cdf[-1]
    return [float(x) for x in np.interp(np.asarray(qs), cdf, log_r)]


def tail_levels(tail: float) -> list[float]:
    """The quantile levels whose mean (of ln R) is the point: midpoints of [0, tail]."""
    return [tail * (k + 0.5) / _TAIL_STEPS for k in range(_TAIL_STEPS)]


def _spread(log_r: np.ndarray, log_p: np.ndarray) -> float:
    lo, hi = _quantiles(log_r, log_p, [0.16, 0.84])
    return max((hi - lo) / 2.0, 1e-6)


def _life_share(life: tuple[LifePrior, float], spread: float, mid: float) -> float:
    """The trend's share of the information: 1 - posterior variance over the prior's variance
    plus the squared shift of the median (ln R). The prior's from its closed form: measured
    on the posterior's zoomed grid it was only its tail there, so a trend that moved the
    estimate from the prior's 3000 h to 6 s, with wide bounds, was labelled the prior's."""
    q16, q50, q84 = (
        math.log(max(h, 1e-9) * _HOUR_S)
        for h in life[0].remaining_quantiles(life[1], [0.16, 0.5, 0.84])
    )
    prior_spread = max((q84 - q16) / 2.0, 1e-6)
    return min(max(1.0 - spread**2 / (prior_spread**2 + (mid - q50) ** 2), 0.0), 1.0)


def remaining_life(
    *,
    life: tuple[LifePrior, float] | None,
    evidence: TrendEvidence | None,
    rate_prior: DegradationPrior | None = None,
    tuning: PosteriorTuning | None = None,
) -> Estimate | NoEstimate:
    """The posterior of the remaining time and its reported numbers.

    Args:
        life: the reliability prior and the asset's age now (hours), if configured.
        evidence: the degradation trend since onset, if any.
        rate_prior: the trend's growth-rate prior; used only without `life`.
        tuning: point, bounds and tempering settings.

    Returns:
        An Estimate, or NoEstimate when no term defines one (no prior and no trend) or when,
        without a reliability prior, the trend's bounds span more than MAX_BOUND_RATIO.
    """
    tu = tuning or PosteriorTuning()
    if life is None and evidence is None:
        return NoEstimate("no reliability prior is configured and no degradation trend is seen")
    if evidence is None:  # the prior alone: its quantiles in closed form
        assert life is not None
        *tail, lower, upper = life[0].remaining_quantiles(
            life[1], [*tail_levels(tu.point_tail), *tu.interval]
        )
        hours = math.exp(sum(math.log(max(h, 1e-9)) for h in tail) / len(tail))
        return Estimate(hours, lower, upper, MODEL_PRIOR, {"reliability_prior": 1.0}, "")

    def log_prior(log_r: np.ndarray, r: np.ndarray) -> np.ndarray:
        if life is not None:
            prior, age_h = life
            return prior.remaining_log_density(age_h, r / _HOUR_S) + log_r
        if rate_prior is not None:
            return evidence.rate_log_prior(rate_prior, r)
        return np.zeros_like(log_r)

    grid, r = _COARSE, _COARSE_R
    post = log_prior(grid, r) + evidence.log_likelihood(r)
    levels = [*tail_levels(tu.point_tail), *tu.interval, 0.16, 0.84, 0.5]
    for _ in range(2):  # zoom onto the mass; again if it spans only a few cells (a sharp trend)
        lo, hi = _quantiles(grid, post, [_TAIL, 1.0 - _TAIL])
        step = float(grid[1] - grid[0])
        lo, hi = max(lo - step, float(_COARSE[0])), min(hi + step, float(_COARSE[-1]))
        grid = lo + (hi - lo) * _UNIT
        r = np.exp(grid)
        prior_only = log_prior(grid, r)
        post = prior_only + evidence.log_likelihood(r)
        *tail, q_lo, q_hi, s_lo, s_hi, mid = _quantiles(grid, post, levels)
        if s_hi - s_lo > _MIN_CELLS * (hi - lo) / (_FINE - 1):
            break
    hours, lower, upper = (math.exp(q) / _HOUR_S for q in (sum(tail) / len(tail), q_lo, q_hi))
    spread = max((s_hi - s_lo) / 2.0, 1e-6)
    if life is not None:
        share = _life_share(life, spread, mid)
    else:
        share = min(max(1.0 - (spread / _spread(grid, prior_only)) ** 2, 0.0), 1.0)
    prior_name = "reliability_prior" if life is not None else "growth_rate_prior"
    terms = {prior_name: round(1.0 - share, 3)}
    terms["degradation_trend"] = round(share, 3)
    if life is None:
        model = MODEL_TREND
        if upper > MAX_BOUND_RATIO * max(lower, _MIN_LOWER_H):
            return NoEstimate(
                f"trend not yet informative: the 95 % bounds would span {_span(lower)} to "
                f"{_span(upper)} (more than {MAX_BOUND_RATIO:g}x); configure a reliability "
                "prior for an estimate at every stage"
            )
    elif share < MODEL_SHARE:
        model = MODEL_PRIOR
    elif share > 1.0 - MODEL_SHARE:
        model = MODEL_TREND
    else:
        model = MODEL_FUSED
    est = Estimate(hours, min(lower, hours), max(upper, hours), model, terms, "")
    r_s = hours * _HOUR_S
    level = evidence.level(max(r_s, 1.0))
    value = math.exp(min(level, 700.0))
    rate = max(evidence.threshold_log - level, 0.0) / max(r_s, 1.0)
    return Estimate(
        est.hours, est.lower_hours, est.upper_hours, model, terms, "",
        value=value, rate_per_day=value * rate * _DAY_S, window_hours=evidence.window_s / _HOUR_S,
    )  # fmt: skip
