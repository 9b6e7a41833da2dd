"""Time to failure: the reliability prior alone, then one posterior with the degradation trend."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.analysis.degradation import DegradationPrior, trend_evidence
from agent.analysis.reliability import LifePrior, life_prior
from agent.analysis.trend import NoEstimate
from agent.analysis.ttf import (
    MODEL_FUSED,
    MODEL_PRIOR,
    MODEL_TREND,
    POINT_TAIL,
    Estimate,
    remaining_life,
    tail_levels,
)

H = 3600.0
THRESHOLD = 20.0


def history(now_h: float, *, onset_h: float = 2.03, fail_h: float = 5.0, seed: int = 3):
    """Bins every minute: flat at 1.0 until onset, then ln m rises linearly to ln 20 at fail."""
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, now_h * H + 1, 60.0)
    rate = math.log(THRESHOLD) / ((fail_h - onset_h) * H)
    y = rate * np.maximum(t - onset_h * H, 0.0) + rng.normal(0.0, 0.05, t.shape[0])
    return t, np.exp(y)


def point(prior: LifePrior, age_h: float) -> float:
    """The reported point of the prior alone: the geometric mean over its lowest quarter."""
    hours = prior.remaining_quantiles(age_h, tail_levels(POINT_TAIL))
    return math.exp(sum(math.log(h) for h in hours) / len(hours))


def estimate(now_h: float, lives: list[float], **kw) -> Estimate:
    t, v = history(now_h, **kw)
    ev = trend_evidence(t, v, now_s=now_h * H, threshold=THRESHOLD, min_weight=0.03)
    assert not isinstance(ev, NoEstimate)
    prior = life_prior(lives_hours=lives)
    assert prior is not None
    est = remaining_life(life=(prior, now_h), evidence=ev)
    assert isinstance(est, Estimate)
    return est


def test_before_onset_the_prior_alone_in_closed_form() -> None:
    prior = life_prior(lives_hours=[10.0, 14.0])
    assert prior is not None
    est = remaining_life(life=(prior, 6.0), evidence=None)
    assert isinstance(est, Estimate)
    assert est.model == MODEL_PRIOR and est.terms == {"reliability_prior": 1.0}
    lo, hi = prior.remaining_quantiles(6.0, [0.025, 0.975])
    l10 = point(prior, 6.0)
    assert (est.hours, est.lower_hours, est.upper_hours) == pytest.approx((l10, lo, hi))
    assert est.rate_per_day is None  # no trend, no progression


def test_a_clean_trend_carries_the_estimate_and_its_bounds_hold_the_truth() -> None:
    est = estimate(4.0, [500.0])  # a vague prior: lives of hundreds of hours
    assert est.model == MODEL_TREND, est
    assert est.terms["degradation_trend"] > 0.9
    assert est.hours == pytest.approx(1.0, rel=0.25)
    assert est.lower_hours <= 1.0 <= est.upper_hours
    assert est.rate_per_day is not None and est.rate_per_day > 0


def test_a_flat_history_leaves_the_prior_in_charge() -> None:
    est = estimate(4.0, [12.0], onset_h=100.0)  # onset never comes: flat noise
    assert est.model == MODEL_PRIOR, est
    prior = life_prior(lives_hours=[12.0])
    assert prior is not None
    l10 = point(prior, 4.0)
    assert est.hours == pytest.approx(l10, rel=0.3)


def test_from_prior_to_data_smoothly_and_bounds_narrow_only_with_evidence() -> None:
    """Through a degradation, each minute: the trend's share grows from nothing to nearly
    all, a fused estimate appears on the way, no step jumps; the bounds keep the prior's
    width while the trend says little, and narrow as it says more."""
    prior = life_prior(lives_hours=[6.0])
    assert prior is not None
    shares, models, hours, widths = [], set(), [], []
    for now_h in np.arange(2.05, 4.6, 1 / 60):
        est = estimate(float(now_h), [6.0])
        lo, hi = prior.remaining_quantiles(float(now_h), [0.025, 0.975])
        widths.append(math.log(est.upper_hours / est.lower_hours) / math.log(hi / lo))
        shares.append(est.terms["degradation_trend"])
        models.add(est.model)
        hours.append(est.hours)
    assert shares[0] < 0.1 and shares[-1] > 0.9
    assert MODEL_FUSED in models
    early = [w for w, s in zip(widths, shares, strict=True) if s < 0.1]
    assert early and all(0.9 < w < 1.1 for w in early), early
    assert widths[-1] < 0.2
    steps = np.abs(np.diff(np.log(hours)))
    assert steps.max() < math.log(2.0), steps.max()  # at most x2 from one minute to the next


def test_without_any_prior_the_trend_alone_or_no_estimate_with_the_reason() -> None:
    assert isinstance(remaining_life(life=None, evidence=None), NoEstimate)
    t, v = history(4.0)
    ev = trend_evidence(t, v, now_s=4.0 * H, threshold=THRESHOLD, min_weight=0.03)
    assert not isinstance(ev, NoEstimate)
    est = remaining_life(life=None, evidence=ev, rate_prior=DegradationPrior(10.0, 3.0))
    assert isinstance(est, Estimate) and est.model == MODEL_TREND
    assert est.hours == pytest.approx(1.0, rel=0.25)
    t, v = history(2.05)  # three minutes of growth: too vague to be worth a number
    ev = trend_evidence(t, v, now_s=2.05 * H, threshold=THRESHOLD, min_weight=0.03)
    assert not isinstance(ev, NoEstimate)
    vague = remaining_life(life=None, evidence=ev, rate_prior=DegradationPrior(10.0, 3.0))
    assert isinstance(vague, NoEstimate) and "not yet informative" in vague.reason


def test_an_estimate_the_trend_moved_far_from_the_prior_is_not_labelled_the_prior() -> None:
    """Before: a metric that jumped 3.2x and stayed (5 one-minute bins after 2 h flat) moved
    the estimate from the prior's thousands of hours to seconds, with bounds wider (in ln R)
    than the prior's, and the record named the reliability prior as its model (trend share
    0 %): the prior's spread was measured on the posterior's zoomed grid, where the prior is
    only its tail. The share now counts the shift of the median too."""
    t = np.arange(0.0, 125 * 60.0, 60.0)
    v = np.where(t < 120 * 60.0, 1.0, 3.2) * np.exp(0.03 * np.sin(np.arange(t.shape[0])))
    now = float(t[-1])
    ev = trend_evidence(t, v, now_s=now, threshold=4.5, min_weight=0.03)
    assert not isinstance(ev, NoEstimate)
    prior = life_prior(weibull=(2.0, 20000.0))
    assert prior is not None
    est = remaining_life(life=(prior, 5000.0), evidence=ev)
    assert isinstance(est, Estimate)
    prior_lo, _ = prior.remaining_quantiles(5000.0, [0.025, 0.975])
    assert est.upper_hours < prior_lo  # the trend alone put it there
    assert est.model != MODEL_PRIOR and est.terms["degradation_trend"] > 0.9
