"""The degradation trend as evidence about the remaining time R (Gebraeel-style exponential).

After a degradation onset the failure metric m's binned history (all of it: the change is
the model's to place) is modelled as ln m(t) = l0 until a change point tau, then
l0 + (Y - l0) ((t - tau) / (now + R - tau))^p, with Y = ln(threshold): the log of the
metric grows from its healthy level and reaches the threshold R seconds from now, steadily
(p = 1, geometric growth of m) or accelerating (p = 2). For each (tau, p, R) the healthy
level is integrated out (flat prior; closed form from a handful of sums), and so is the
noise level (Jeffreys prior):
    ln L = -w ((n - 1) / 2) ln ssr - (w / 2) ln sum_i g_i^2,
    g_i = 1 - (max(t_i - tau, 0) / (now + R - tau))^p.
tau and p are then integrated out too (TrendEvidence): even odds that the growth has begun
at some candidate tau, or not yet. As R grows the path flattens and L(R) tends to the
likelihood of "no trend": a flat history says little about R and a prior on R (the asset
class's life, or the growth-rate prior below) carries the estimate; a clean steep rise makes
L sharp and the data carry it (agent.analysis.ttf combines them).

Successive bins of a vibration metric are often strongly autocorrelated, so the likelihood is
tempered by w: the AR(1) effective-sample fraction of the best free-slope fit's residuals,
(1 - r1) / (1 + r1), but never below likelihood_weight. Without it the posterior would trust
a few flat minutes far too much; with only the fixed weight it would ignore a clean trend.

A step (a load change, a re-mounted sensor: the metric jumps and stays) fits none of these:
only growth so fast it reaches the threshold in seconds comes close. So a second family
competes (JumpStats): flat until a jump, then growth from the new level as above, so the
jump alone carries no growth rate and only the bins after it can show growth; as R grows its
path tends to "a level shift, then flat", which, like a flat line, says nothing about R.

Without a life prior the growth rate has a log-normal prior (configured per asset, or "reach
the threshold in one planning horizon", vague), which is a log-normal prior on R.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.analysis.trend import NoEstimate

__all__ = [
    "DegradationPrior",
    "TrendEvidence",
    "asset_prior",
    "trend_evidence",
]

_DAY_S = 86400.0
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


MIN_AFTER = 5  # binned points after a change point before its growth counts
MAX_CHANGES = 16  # candidate change points spread over the history (then refined)
_REFINE = 6  # candidates added between the neighbours of the best one, twice
GROWTH_POWERS = (1.0, 2.0)  # ln m after the change: linear, accelerating (_every_change)
# A jump, then growth from the new level (JumpStats): only with this many bins after the
# jump (at least MIN_AFTER + 1: the change sums go no later), and with this share of the
# growth models' prior weight, so the data must favour it about 100:1 before it takes the
# estimate away from growth. A step then flat (1.0 -> 3.2 or 1.5 mm/s) does within 6 bins,
# before the trend alert's debounce ends (with 10 the step still escalated at the debounce),
# at 3 % noise from 1e-4 on, at 10 % from 1e-2 (one 1.5 step in three still escalated at
# 1e-3). FEMTO's noisy steps do not: from 1e-4 to 1e-2 its criticals, raises and time to
# failure scores held, at 0.5 it lost 2-3 of its criticals, delayed others by 5-11
# snapshots, and its score fell from 0.182 to 0.168 (benchmarks/analytics).
JUMP_MIN_AFTER = 6
JUMP_PRIOR = 1e-2
# A level change with fewer than JUMP_MIN_AFTER bins after it gives no estimate (only
# growth reaching the threshold in seconds fits it, and the jump model needs those bins):
# when a step explains the history with under this share of the best growth fit's residual.
RECENT_SSR_SHARE = 0.25
JUMP_CHANGES = 8  # candidate jumps spread over the history, plus every bin near the best


@dataclass(frozen=True, slots=True)
class JumpStats:
    """The jump model's sufficient statistics, per candidate jump (Kj,).

    ln m is flat at l0 before the jump (before bin j), then starts again from its own level
    l1 and grows as the growth models do: l1 + (Y - l1) ((t - tau) / (now + R - tau))^p.
    Without it a step then flat (1.0 -> 3.2 mm/s) could only be explained as growth that
    reaches the threshold in seconds, and was for ~45 min (0.00045 h, a critical).

    Attributes:
        since_s: now - tau (tau: the time of the first bin after the jump).
        prior: prior weight of each candidate (the time it stands for), summing to 1.
        sums: (sum e, sum e^2, sum e y) after the jump per growth power, each (P, Kj).
        pre: (points, ssr about their mean) before the jump.
        post: (points, sum y, sum y^2) after the jump.
        extra: per candidate, ln of the second level's proper prior (uniform over the span
            from the lowest value to the threshold, at least 1 ln unit), the noise
            integral's change and -ln(n_pre) / 2, so the extra level costs what it should
            against the one-level models.
        floor: least ssr (as _tempered's).
    """

    since_s: np.ndarray
    prior: np.ndarray
    sums: tuple[np.ndarray, np.ndarray, np.ndarray]
    pre: tuple[np.ndarray, np.ndarray]
    post: tuple[np.ndarray, np.ndarray, np.ndarray]
    extra: np.ndarray
    floor: float


@dataclass(frozen=True, slots=True)
class TrendEvidence:
    """Sufficient statistics of the binned history for every candidate change point.

    The model: ln m is flat at l0 until the change point tau, then grows as a power p of
    the time since tau (GROWTH_POWERS: steady or accelerating) and reaches Y = ln(threshold)
    R seconds from now. tau and p are unknown and integrated out: even odds that the growth
    has begun (tau uniform in time over the candidates: MAX_CHANGES spread over the history,
    then a few bins around each growth shape's best fit, twice) or not yet (a flat line,
    which says nothing about R: failure may still come from a growth that starts later).

    Attributes:
        n: binned points used.
        weight: likelihood tempering w (see the module docstring).
        threshold_log: Y = ln(threshold).
        window_s: time from the first point used to now.
        since_s: now - tau for each candidate change point, (K,).
        prior: prior weight of each candidate (the time it stands for), summing to 1.
        sums: per growth power p and candidate (sum e, sum e^2, sum e y) with
            e = max(t - tau, 0)^p, each (P, K).
        totals: (sum y, sum y^2) over all points.
    """

    n: int
    weight: float
    threshold_log: float
    window_s: float
    since_s: np.ndarray
    prior: np.ndarray
    sums: tuple[np.ndarray, np.ndarray, np.ndarray]
    totals: tuple[float, float]
    jump: JumpStats | None = None  # None: too few bins for a jump (JUMP_MIN_AFTER)

    def _jump_ll(self, j: JumpStats, remaining_s: np.ndarray) -> np.ndarray:
        """ln L per (power, jump candidate) and R, (P * Kj, G), on the scale of _log_ml."""
        ll = self._jump_fit(j, remaining_s)[0]
        return np.asarray(ll.reshape(-1, ll.shape[-1]))

    def _jump_fit(self, j: JumpStats, remaining_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ln L, the level after the jump l1), each (P, Kj, G). The two levels are fitted
        apart (disjoint bins), so their ssr add and their information multiplies."""
        e1, e2, e1y = (x[:, :, None] for x in j.sums)
        npost, sy, syy = (x[None, :, None] for x in j.post)
        y_thr = self.threshold_log
        v1 = 1.0 / (j.since_s[:, None] + np.maximum(remaining_s, 1e-9))
        v = np.stack((v1, v1 * v1))  # GROWTH_POWERS (1, 2), as in _fit
        vv = v * v
        sgg = npost - 2.0 * v * e1 + vv * e2
        sgz = sy - v * (y_thr * e1 + e1y) + vv * (y_thr * e2)
        szz = syy - (2.0 * y_thr) * v * e1y + vv * (y_thr * y_thr * e2)
        level1 = sgz / sgg
        ssr = np.maximum(j.pre[1][None, :, None] + szz - sgz * level1, j.floor)
        # -(n - 1)/2 ln ssr - ln(n_pre sgg)/2, plus the second level's 1/2 ln(ssr / 2)
        half = -0.5 * (self.n - 2) * np.log(ssr) - 0.5 * np.log(sgg)
        return self.weight * (half + j.extra[None, :, None]), level1

    def _fit(
        self, remaining_s: np.ndarray, only: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(l0, ssr, sum g^2), each (P, K, G): the best line per power, candidate and R
        (only: one (power, candidate), then each (1, 1, G))."""
        sums = self.sums if only is None else tuple(
            x[only[0] : only[0] + 1, only[1] : only[1] + 1] for x in self.sums
        )  # fmt: skip
        since = self.since_s if only is None else self.since_s[only[1] : only[1] + 1]
        e1, e2, e1y = (x[:, :, None] for x in sums)
        sy, syy = self.totals
        y_thr = self.threshold_log
        v1 = 1.0 / (since[:, None] + np.maximum(remaining_s, 1e-9))  # (K, G)
        # GROWTH_POWERS (1, 2): v = (1 / (since + R))^p without a general power
        v = v1[None] if only is not None and GROWTH_POWERS[only[0]] == 1.0 else (
            v1[None] * v1[None] if only is not None else np.stack((v1, v1 * v1)))  # fmt: skip
        vv = v * v
        sgg = self.n - 2.0 * v * e1 + vv * e2
        sgz = sy - v * (y_thr * e1 + e1y) + vv * (y_thr * e2)
        szz = syy - (2.0 * y_thr) * v * e1y + vv * (y_thr * y_thr * e2)
        level0 = sgz / sgg
        return level0, np.maximum(szz - sgz * level0, 0.0), sgg

    def _log_ml(self, remaining_s: np.ndarray) -> np.ndarray:
        """ln L per (power, candidate) and R, (P * K, G)."""
        _, ssr, sgg = self._fit(remaining_s)
        ll = self._tempered(ssr, sgg)
        return np.asarray(ll.reshape(-1, ll.shape[-1]))

    def _tempered(self, ssr: np.ndarray, sgg: np.ndarray | float) -> np.ndarray:
        floor = _MIN_VAR * max(self.n - 2, 1)
        w = self.weight
        return np.asarray(
            -w * 0.5 * (self.n - 1) * np.log(np.maximum(ssr, floor)) - 0.5 * w * np.log(sgg)
        )

    def log_likelihood(self, remaining_s: np.ndarray) -> np.ndarray:
        """ln L(R) up to a constant, for R in seconds (> 0), with the change point and the
        growth shape integrated out (see the class docstring)."""
        ll = self._log_ml(remaining_s)
        sy, syy = self.totals
        flat = float(self._tempered(np.asarray(syy - sy * sy / self.n), float(self.n)))
        top = np.maximum(ll.max(axis=0), flat)
        jump, jl = self.jump, None
        if jump is not None:
            jl = self._jump_ll(jump, remaining_s)
            top = np.maximum(top, jl.max(axis=0))
        grown = (self.prior / len(GROWTH_POWERS)) @ np.exp(ll - top).reshape(
            len(GROWTH_POWERS), self.prior.shape[0], -1
        ).sum(axis=0)
        if jump is not None and jl is not None:
            jumped = (jump.prior / len(GROWTH_POWERS)) @ np.exp(jl - top).reshape(
                len(GROWTH_POWERS), jump.prior.shape[0], -1
            ).sum(axis=0)
            grown = (1.0 - JUMP_PRIOR) * grown + JUMP_PRIOR * jumped
        return np.asarray(top + np.log(0.5 * np.exp(flat - top) + 0.5 * grown))

    def level(self, remaining_s: float) -> float:
        """Fitted ln(metric) now, for the most likely path that reaches the threshold in R."""
        r = np.array([max(remaining_s, 1e-9)])
        level0, ssr, sgg = self._fit(r)
        ll = self._tempered(ssr, sgg)
        best = int(np.argmax(ll))
        p, k = divmod(best, self.since_s.shape[0])
        since, start = self.since_s[k], float(level0.flat[best])
        if self.jump is not None:  # the jump model's path when it is the likelier (its prior)
            jl, l1 = self._jump_fit(self.jump, r)
            jbest = int(np.argmax(jl))
            if float(jl.flat[jbest]) + math.log(JUMP_PRIOR) > float(ll.flat[best]):
                p, k = divmod(jbest, self.jump.since_s.shape[0])
                since, start = self.jump.since_s[k], float(l1.flat[jbest])
        frac = (since / (since + r[0])) ** GROWTH_POWERS[p]
        return start + (self.threshold_log - start) * frac

    def rate_log_prior(self, prior: DegradationPrior, remaining_s: np.ndarray) -> np.ndarray:
        """ln density over R (per ln R) of the growth-rate prior: rate = (Y - l) / R, with l
        the level now of the longest change (the history's first candidate)."""
        level0 = self._fit(remaining_s, (0, 0))[0][0, 0]
        h = self.since_s[0]
        level = level0 + (self.threshold_log - level0) * h / (h + remaining_s)
        gap = np.maximum(self.threshold_log - level, 1e-6)
        z = (np.log(gap / remaining_s) - math.log(prior.rate_per_day / _DAY_S)) / prior.log_sd
        return np.asarray(-0.5 * z * z)


def trend_evidence(
    t_s: np.ndarray,
    values: np.ndarray,
    *,
    now_s: float,
    threshold: float,
    min_weight: float,
) -> TrendEvidence | NoEstimate:
    """The trend evidence of the binned history (the caller selects the points).

    Args:
        t_s: binned times (s), ascending.
        values: binned failure-metric values (> 0).
        now_s: the time of the estimate (s).
        threshold: the failure threshold, same unit as values.
        min_weight: least tempering of the likelihood.

    Returns:
        The evidence, or NoEstimate with the reason (too few points, threshold reached).
    """
    ok = (values > 0.0) & np.isfinite(values)
    t, y = t_s[ok], np.log(values[ok])
    n = int(t.shape[0])
    if n < MIN_AFTER + 1:
        return NoEstimate(f"only {n} binned points of the failure metric; need {MIN_AFTER + 1}")
    if threshold <= 0.0:
        return NoEstimate("the failure threshold must be positive")
    y_thr = math.log(threshold)
    if float(y[-1]) >= y_thr:
        return NoEstimate("the failure metric is already at or past its failure threshold")
    top = n - MIN_AFTER - 1
    s1, s2, s1y, ssr, icpt, slope = _every_change(t, y, top)
    recent = _recent_change(t, y, float(ssr.min()))
    if recent is not None:
        return NoEstimate(
            f"no estimate yet: {recent} binned point(s) since the change in the failure "
            f"metric; a time to failure needs {JUMP_MIN_AFTER} after it"
        )
    idx = np.unique(np.linspace(0, top, min(MAX_CHANGES, n - MIN_AFTER)).round().astype(int))
    # Every bin between the neighbours of the best coarse change point joins the candidates,
    # so the change is placed to the bin, not to the coarse spacing (a bias in R otherwise).
    for _ in range(2):  # zoom in twice: a few bins between each power's best one's neighbours
        near = [idx]
        for k in np.argmin(ssr[:, idx], axis=1):
            lo = int(idx[max(k - 1, 0)])
            hi = min(int(idx[min(k + 1, idx.shape[0] - 1)]), top)
            m = min(_REFINE, hi - lo + 1)
            near.append(np.asarray([round(lo + (hi - lo) * j / max(m - 1, 1)) for j in range(m)]))
        idx = np.unique(np.concatenate(near))
    p, k = np.unravel_index(int(np.argmin(ssr[:, idx])), (ssr.shape[0], idx.shape[0]))
    taus = t[idx]
    grown = np.maximum(t - taus[k], 0.0) ** GROWTH_POWERS[p]
    resid = y - icpt[p, idx[k]] - slope[p, idx[k]] * grown
    weight = max(min_weight, _independent_fraction(resid))
    edges = np.concatenate(([taus[0]], (taus[1:] + taus[:-1]) / 2.0, [now_s]))
    span = np.maximum(np.diff(edges), 1e-9)
    return TrendEvidence(
        n, weight, y_thr, max(now_s - float(t[0]), 0.0), now_s - taus, span / span.sum(),
        (s1[:, idx], s2[:, idx], s1y[:, idx]), (float(y.sum()), float(y @ y)),
        _jump_stats(t, y, y_thr, now_s, (s1, s2, s1y), top),
    )  # fmt: skip


def _recent_change(t: np.ndarray, y: np.ndarray, growth_ssr: float) -> int | None:
    """The bins since a level change too recent to extrapolate from (fewer than
    JUMP_MIN_AFTER after it), or None. A change is taken as such when the best two-level
    split of ln m, its second level starting within the last JUMP_MIN_AFTER - 1 bins, leaves
    under RECENT_SSR_SHARE of the residual of the best growth line with MIN_AFTER bins or
    more after its change (a step explains the history far better than any growth seen so
    far). Before, the growth models were fitted to the 2-5 bins after a step (1.0 -> 3.2
    mm/s) and said the threshold came in 1-10 s; from JUMP_MIN_AFTER bins on the jump model
    explains the step (JumpStats)."""
    n = y.shape[0]
    first = n - JUMP_MIN_AFTER + 1  # j: the first bin after the change, first..n-1
    if first < 2:
        return None
    cs = np.concatenate(([0.0], np.cumsum(y)))
    cs2 = np.concatenate(([0.0], np.cumsum(y * y)))
    j = np.arange(first, n)
    npre, npost = j.astype(float), (n - j).astype(float)
    pre = cs2[j] - cs[j] ** 2 / npre
    post = (cs2[-1] - cs2[j]) - (cs[-1] - cs[j]) ** 2 / npost
    split = pre + post
    k = int(np.argmin(split))
    floor = _MIN_VAR * max(n - 2, 1)
    if max(float(split[k]), floor) >= RECENT_SSR_SHARE * max(growth_ssr, floor):
        return None
    return int(n - j[k])


def _jump_stats(
    t: np.ndarray,
    y: np.ndarray,
    y_thr: float,
    now_s: float,
    sums: tuple[np.ndarray, np.ndarray, np.ndarray],
    top: int,
) -> JumpStats | None:
    """The jump model's statistics (JumpStats): candidates spread over the history like the
    growth models', plus every bin near the best "level shift, then flat" fit (O(n) sums).

    Args:
        sums: _every_change's (sum e, sum e^2, sum e y) for a change at each bin 0..top.
    """
    n = y.shape[0]
    last = min(n - JUMP_MIN_AFTER, top)  # j: the first bin after the jump, 1..last
    if last < 1 or n < 4:
        return None
    cs = np.concatenate(([0.0], np.cumsum(y)))
    cs2 = np.concatenate(([0.0], np.cumsum(y * y)))
    j_all = np.arange(1, last + 1)
    npre = j_all.astype(float)
    sy_pre, syy_pre = cs[j_all], cs2[j_all]
    npost = n - npre
    sy_post, syy_post = cs[-1] - sy_pre, cs2[-1] - syy_pre
    ssr_flat = syy_pre - sy_pre**2 / npre + syy_post - sy_post**2 / npost
    jidx = np.unique(np.linspace(1, last, min(JUMP_CHANGES, last)).round().astype(int))
    b = int(j_all[np.argmin(ssr_flat)])
    jidx = np.unique(np.concatenate((jidx, np.arange(max(b - 3, 1), min(b + 3, last) + 1))))
    k = jidx - 1
    taus = t[jidx]
    edges = np.concatenate(([taus[0]], (taus[1:] + taus[:-1]) / 2.0, [now_s]))
    span = np.maximum(np.diff(edges), 1e-9)
    width = max(y_thr - float(y.min()), 1.0)
    extra = (0.5 * math.log(math.pi) - math.log(width)
             + math.lgamma((n - 2) / 2.0) - math.lgamma((n - 1) / 2.0))  # fmt: skip
    s1, s2, s1y = sums
    return JumpStats(
        now_s - taus, span / span.sum(), (s1[:, jidx], s2[:, jidx], s1y[:, jidx]),
        (npre[k], np.maximum(syy_pre[k] - sy_pre[k] ** 2 / npre[k], 0.0)),
        (npost[k], sy_post[k], syy_post[k]), extra - 0.5 * np.log(npre[k]),
        _MIN_VAR * max(n - 2, 1),
    )  # fmt: skip


def _every_change(
    t: np.ndarray, y: np.ndarray, top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For a change point at each bin 0..top and each growth power p (GROWTH_POWERS: 1 and
    2): sum e, sum e^2, sum e y with e = max(t - tau, 0)^p, and the best free-slope line's
    ssr, intercept and slope; each (P, top + 1).

    All in O(n): with u = (t - t_last) / scale in [-1, 0], suffix sums over j >= i of u^0..u^4
    and y u^0..u^2 give every candidate's sums by binomial expansion (the origin at the last
    bin keeps the late candidates, with few and small terms, exact).
    """
    scale = max(float(t[-1] - t[0]), 1e-9)
    u = (t - t[-1]) / scale
    u2 = u * u
    cols = np.stack((np.ones_like(u), u, u2, u2 * u, u2 * u2, y, u * y, u2 * y))
    a0, a1, a2, a3, a4, b0, b1, b2 = np.cumsum(cols[:, ::-1], axis=1)[:, ::-1][:, : top + 1]
    c = u[: top + 1]
    c2 = c * c
    d1 = a1 - c * a0  # sum (u - c) over the bins after the change
    d2 = a2 - 2.0 * c * a1 + c2 * a0  # sum (u - c)^2
    d4 = a4 - 4.0 * c * a3 + 6.0 * c2 * a2 - 4.0 * c2 * c * a1 + c2 * c2 * a0
    sc2 = scale * scale
    s1 = np.stack((d1 * scale, d2 * sc2))
    s2 = np.stack((d2 * sc2, d4 * sc2 * sc2))
    s1y = np.stack(((b1 - c * b0) * scale, (b2 - 2.0 * c * b1 + c2 * b0) * sc2))
    n, sy = t.shape[0], float(y.sum())
    den = n * s2 - s1 * s1
    slope = np.where(den > 0, (n * s1y - s1 * sy) / np.where(den > 0, den, 1.0), 0.0)
    icpt = (sy - slope * s1) / n
    ssr = float(y @ y) - 2 * icpt * sy - 2 * slope * s1y + n * icpt**2 + 2 * icpt * slope * s1 + (
        slope**2 * s2)  # fmt: skip
    return s1, s2, s1y, ssr, icpt, slope
