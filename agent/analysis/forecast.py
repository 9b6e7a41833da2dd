"""A channel's time to failure at one moment: which terms apply, and the sentence that says why.

Before a degradation onset the estimate is the reliability prior alone (the record says no
degradation is seen yet); after it the trend since onset joins the prior in one posterior
(agent.analysis.ttf). Without a reliability prior the trend alone answers after onset, as
before, and before onset there is no estimate, with the reason.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime

from agent.analysis.channel import Channel
from agent.analysis.degradation import DegradationPrior, asset_prior, trend_evidence
from agent.analysis.lifetime import Life
from agent.analysis.trend import NoEstimate
from agent.analysis.ttf import MODEL_PRIOR, Estimate, PosteriorTuning, remaining_life
from agent.records import format_ts

__all__ = ["JUMP_SHARE", "MODEL_REACHED", "REFRESH_SHARE", "channel_estimate", "still_fresh"]

MODEL_REACHED = "failure-threshold-reached"
# Far from failure an estimate is recomputed only once this share of its lower bound has
# passed (the posterior costs about 0.6 ms; a 30 h estimate gains nothing from each minute).
REFRESH_SHARE = 0.01
# ...unless the failure metric stepped toward its threshold since: by this share of its log
# distance to it (about this share of the remaining time on an exponential trend), or onto it.
JUMP_SHARE = 0.1


def still_fresh(ch: Channel, now_s: float) -> bool:
    """Whether the channel's estimate still stands at now_s (reading time) though a bin has
    closed since: far from failure, until REFRESH_SHARE of its lower bound has passed."""
    est, age_s = ch.estimate, now_s - ch.estimate_s
    return (
        isinstance(est, Estimate)
        and ch.estimate_bin is not None  # None: an onset or a clear asks for a new one
        and 0.0 <= age_s < REFRESH_SHARE * est.lower_hours * 3600.0
        and not _stepped(ch)
    )


def _stepped(ch: Channel) -> bool:
    """Whether the failure metric moved toward its threshold since the estimate by more
    than the refresh cadence assumes (a step: a spall, a loose foot, a zone change)."""
    now, then = ch.history.last(), ch.estimate_metric
    if now is None:
        return False
    _, threshold = ch.failure()
    if then is None or not 0.0 < then < threshold or now >= threshold:
        return True
    return math.log(threshold / now) < (1.0 - JUMP_SHARE) * math.log(threshold / then)


def _no_trend(ch: Channel) -> str | None:
    """Why the channel has no degradation trend (None after an onset)."""
    if not ch.hi.ready:
        if not ch.hi.features:
            return "the channel carries no health-index feature (accel RMS, hf or velocity)"
        return ch.learning(ch.view is not None and ch.view.stopped)
    if ch.onset_s is None:
        value, level = ch.hi.value or 0.0, ch.hi.level or 0.0
        if value >= level:  # over, but not yet for the debounce (or within the re-raise hold)
            return (
                f"the health index ({value:.3g}) is over its baseline alarm level ({level:.3g}), "
                "not yet for the debounce (or within the re-raise hold-off after a clear)"
            )
        return f"the health index ({value:.3g}) is below its baseline alarm level ({level:.3g})"
    return None


def _prior_words(life: Life) -> str:
    assert life.prior is not None and life.age_hours is not None
    return (
        f"remaining life of its class at age {life.age_hours:.4g} h (from {life.age_from}), "
        f"given survival so far ({life.prior.source})"
    )


def channel_estimate(
    ch: Channel,
    life: Life,
    now_s: float,
    *,
    posterior: PosteriorTuning,
    rate_prior: DegradationPrior | None = None,
) -> Estimate | NoEstimate:
    """The channel's estimate at now_s (reading time, s).

    Args:
        ch: the channel (health index, onset, binned history of the failure metric: the
            trend uses all of it, the change point is the model's to find).
        life: the asset's prior and age now (agent.analysis.lifetime).
        now_s: the time of the estimate.
        posterior: point, bounds and tempering settings.
        rate_prior: growth-rate prior for every asset (benchmarks); None: the asset's own.
    """
    metric, threshold = ch.failure()
    no_trend = _no_trend(ch)
    has_prior = life.prior is not None and life.age_hours is not None
    evidence = None
    onset = ""
    if no_trend is None:
        assert ch.onset_s is not None
        onset = format_ts(datetime.fromtimestamp(ch.onset_s, tz=UTC))
        t, v = ch.history.points()
        if v.shape[0] and math.isfinite(v[-1]) and v[-1] >= threshold:
            why = f"{metric} ({v[-1]:.4g}) has reached its failure threshold ({threshold:g})"
            return Estimate(0.0, 0.0, 0.0, MODEL_REACHED, {}, why)
        found = trend_evidence(
            t, v, now_s=now_s, threshold=threshold, min_weight=posterior.likelihood_weight
        )
        if isinstance(found, NoEstimate):
            no_trend = f"degradation since {onset}, but {found.reason}"
        else:
            evidence = found
    if not has_prior:
        if evidence is None:
            reason = (
                (no_trend or "")
                if no_trend and "degradation since" in no_trend
                else (
                    f"no degradation onset: {no_trend}; no trend to extrapolate"
                    if ch.hi.ready and ch.onset_s is None
                    else (no_trend or "")
                )
            )
            return NoEstimate(f"{reason}; {life.reason}" if life.reason else reason)
        al = ch.asset.alerting
        t, v = ch.history.points()
        prior = rate_prior or asset_prior(
            al.prior_rate_per_day,
            al.prior_log_sd,
            ch.asset.planning_horizon_hours,
            threshold,
            v[t >= (ch.onset_s or 0.0)],
        )
        est = remaining_life(life=None, evidence=evidence, rate_prior=prior, tuning=posterior)
        if isinstance(est, NoEstimate):
            return est
        return replace(
            est,
            basis=f"degradation since {onset}: trend of {metric} with its "
            "growth-rate prior (no reliability prior configured)",
        )
    assert life.prior is not None and life.age_hours is not None
    est = remaining_life(life=(life.prior, life.age_hours), evidence=evidence, tuning=posterior)
    if isinstance(est, NoEstimate):  # not reached: a prior always gives a posterior
        return est
    if evidence is None:
        seen = f"no degradation seen yet ({no_trend})" if ch.onset_s is None else no_trend
        return replace(est, basis=f"{seen}: {_prior_words(life)}")
    share = est.terms.get("degradation_trend", 0.0)
    if est.model == MODEL_PRIOR:
        words = f"the trend of {metric} is not informative yet ({share:.0%})"
    else:
        words = f"trend of {metric} ({share:.0%})"
    return replace(
        est, basis=f"degradation since {onset}: {words} and {_prior_words(life)} ({1 - share:.0%})"
    )
