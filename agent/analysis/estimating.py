"""A channel's time-to-failure estimate as of a reading: recomputed at most once per trend
bin, far from failure less often (agent.analysis.forecast.still_fresh), and every bin while
the reliability prior holds it after an onset (prior_held)."""

from __future__ import annotations

import math

from agent.analysis.channel import Channel
from agent.analysis.forecast import channel_estimate, still_fresh
from agent.analysis.lifetime import AssetLives
from agent.analysis.outcome import Tuning
from agent.analysis.trend import NoEstimate
from agent.analysis.ttf import Estimate

__all__ = ["PRIOR_HELD_SHARE", "estimate", "prior_held"]

# Over this share of an estimate's information from the reliability prior, after an onset,
# the estimate stands one bin only (prior_held).
PRIOR_HELD_SHARE = 0.5


def prior_held(ch: Channel) -> bool:
    """Whether the channel's estimate is one the reliability prior holds after an onset: it
    is then recomputed every bin, not only once 1 % of its lower bound has passed
    (still_fresh). That lower bound is the prior's (hundreds of hours: a stand of hours),
    while the trend that can take over grows with every bin: a staircase of 1.5x every 4 h
    was asked once per step, right after it (a step then flat), and its trend escalated only
    with the zone C severity warning. A degrading channel's estimate costs about 0.5 ms a
    bin; the prior alone (no onset) and an estimate the trend holds keep the longer stand."""
    est = ch.estimate
    return (
        ch.onset_s is not None
        and isinstance(est, Estimate)
        and est.terms.get("reliability_prior", 0.0) > PRIOR_HELD_SHARE
    )


def estimate(
    ch: Channel, lives: AssetLives, tuning: Tuning, now_s: float, wall_s: float
) -> Estimate | NoEstimate:
    """The channel's estimate: at most once per bin, far from failure less (still_fresh).
    The asset's age is wall time (installed_at is a date); the trend is analysis time."""
    b = math.floor(now_s / ch.history.bin_s)
    if ch.estimate is not None and (
        ch.estimate_bin == b or (still_fresh(ch, now_s) and not prior_held(ch))
    ):
        return ch.estimate
    try:
        est = channel_estimate(
            ch, lives.life(ch.asset, wall_s), now_s, posterior=tuning.posterior,
            rate_prior=tuning.prior,
        )  # fmt: skip
    except (ArithmeticError, ValueError) as exc:  # never lose the alerts over it
        est = NoEstimate(f"time-to-failure model failed on this history: {exc}")
    ch.estimate, ch.estimate_bin, ch.estimate_s = est, b, now_s
    ch.estimate_metric = ch.history.last()
    return est
