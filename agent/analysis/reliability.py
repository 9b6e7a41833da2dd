"""The life prior: how long machines of one class live, from configuration and the fleet.

Lives are Weibull with shape beta: T^beta is exponential with rate lam. The prior knowledge
of lam is a Gamma(n, S) distribution, built from:
- completed lives t_i (configured `lives_hours`, or the fleet's history in the store):
  n += 1 and S += t_i^beta each (a run to failure);
- lives ended by a replacement while still healthy (suspensions): S += t_i^beta only (the
  part survived that long; it did not fail);
- a catalogue Weibull (`weibull: {shape, scale_hours}`, or `l10_hours`, the ISO 281 rating
  life, converted with the shape): counts as CATALOGUE_LIVES lives at its scale, so the
  fleet's own lives can correct it.
The predictive life distribution (lam integrated out) has survival (1 + t^beta / S)^-n: a
Weibull when n is large, heavier-tailed when only a few lives are known, so the bounds stay
honest about how little one or two lives say. Conditioned on the asset having survived to
its age a, the remaining life R has P(R > r) = ((S + a^beta) / (S + (a + r)^beta))^n.

Pure numpy and math; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CATALOGUE_LIVES",
    "DEFAULT_SHAPE",
    "FleetLife",
    "LifePrior",
    "life_prior",
    "plausible",
]

# Weibull shape assumed for rolling bearings when only lives or an L10 are given: ISO 281's
# life-modification factor for reliability (a1) follows a Weibull of slope 3/2.
DEFAULT_SHAPE = 1.5
# How many observed lives a catalogue Weibull (or L10) is worth against the fleet's own.
CATALOGUE_LIVES = 10.0
_L10_SURVIVAL = 0.9
# The longest life taken (as the configuration's bound, agent.config MAX_LIFE_HOURS): with
# shapes up to 20 its powers stay finite. A stored life above it, or not finite, came from a
# store written before lives were bounded; it is ignored, and the prior's source says so.
MAX_LIFE_HOURS = 1_000_000.0


def plausible(hours: float) -> bool:
    """A life the prior can take: finite, greater than 0, at most MAX_LIFE_HOURS."""
    return 0.0 < hours <= MAX_LIFE_HOURS


@dataclass(frozen=True, slots=True)
class FleetLife:
    """One completed life of a machine part from the fleet history.

    Attributes:
        hours: the part's life, installation to replacement.
        failed: True for a run to failure or a replacement because of degradation; False
            for a replacement while healthy (a suspension: it survived that long).
        asset: the asset it was recorded on.
        ended_at: UTC time of the replacement (ISO-8601).
    """

    hours: float
    failed: bool = True
    asset: str = ""
    ended_at: str = ""


@dataclass(frozen=True, slots=True)
class LifePrior:
    """Predictive life distribution of one asset class (see the module docstring).

    Attributes:
        shape: Weibull shape beta.
        events: n, the failures (plus a catalogue's equivalent lives).
        exposure: S, the sum of lives^beta (hours^beta), suspensions included.
        source: what it was built from, for the records.
    """

    shape: float
    events: float
    exposure: float
    source: str

    def survival(self, hours: np.ndarray | float) -> np.ndarray:
        """P(T > t)."""
        t = np.maximum(np.asarray(hours, dtype=np.float64), 0.0)
        return np.asarray((1.0 + t**self.shape / self.exposure) ** (-self.events))

    def remaining_quantiles(self, age_h: float, qs: Iterable[float]) -> list[float]:
        """Quantiles of the remaining life (hours) at age age_h, given survival to it."""
        b, s = self.shape, self.exposure
        base = s + max(age_h, 0.0) ** b
        out = []
        for q in qs:
            tb = base * (1.0 - min(max(q, 0.0), 1.0 - 1e-12)) ** (-1.0 / self.events) - s
            out.append(max(tb ** (1.0 / b) - age_h, 0.0))
        return out

    def remaining_log_density(self, age_h: float, remaining_h: np.ndarray) -> np.ndarray:
        """log density of the remaining life at remaining_h (hours), given survival to age_h
        (up to a constant)."""
        b, s, n = self.shape, self.exposure, self.events
        t = np.maximum(age_h + remaining_h, 1e-12)
        return np.asarray(
            math.log(n * b / s) + (b - 1.0) * np.log(t) - (n + 1.0) * np.log1p(t**b / s)
        )

    @property
    def median_life_hours(self) -> float:
        """Median of the (unconditional) life."""
        return float((self.exposure * (2.0 ** (1.0 / self.events) - 1.0)) ** (1.0 / self.shape))


def _lives(n: int) -> str:
    return f"{n} life" if n == 1 else f"{n} lives"


def life_prior(
    *,
    lives_hours: Iterable[float] = (),
    weibull: tuple[float, float] | None = None,
    l10_hours: float | None = None,
    shape: float | None = None,
    fleet: Iterable[FleetLife] = (),
) -> LifePrior | None:
    """The prior from an asset's configuration and its class's fleet history.

    Args:
        lives_hours: configured completed lives of comparable machines.
        weibull: a catalogue Weibull (shape, scale in hours).
        l10_hours: an ISO 281 rating life (90 % survive it).
        shape: Weibull shape for lives and L10 (default DEFAULT_SHAPE; a catalogue Weibull
            brings its own).
        fleet: completed lives recorded by `maintenance --replaced` for the class.

    Returns:
        The prior, or None when nothing defines one (no life, or only suspensions).
    """
    b = weibull[0] if weibull is not None else (shape or DEFAULT_SHAPE)
    n, s = 0.0, 0.0
    parts = []
    configured = [float(x) for x in lives_hours if plausible(x)]
    if configured:
        n += len(configured)
        s += sum(x**b for x in configured)
        parts.append(f"{_lives(len(configured))} configured")
    if weibull is not None or l10_hours is not None:
        if weibull is not None:
            scale = weibull[1]
            parts.append(f"catalogue Weibull (scale {scale:g} h, worth {CATALOGUE_LIVES:g} lives)")
        else:
            assert l10_hours is not None
            scale = l10_hours / (-math.log(_L10_SURVIVAL)) ** (1.0 / b)
            parts.append(f"L10 {l10_hours:g} h (worth {CATALOGUE_LIVES:g} lives)")
        n += CATALOGUE_LIVES
        s += CATALOGUE_LIVES * scale**b
    fleet = list(fleet)
    failed = [f.hours for f in fleet if f.failed and plausible(f.hours)]
    healthy = [f.hours for f in fleet if not f.failed and plausible(f.hours)]
    ignored = sum(1 for f in fleet if not plausible(f.hours))
    if failed:
        n += len(failed)
        s += sum(x**b for x in failed)
        parts.append(f"{_lives(len(failed))} in the fleet history")
    if healthy:
        s += sum(x**b for x in healthy)
        parts.append(f"{len(healthy)} replaced while healthy")
    if ignored and parts:
        parts[-1] += f" ({ignored} implausible {'life' if ignored == 1 else 'lives'} ignored)"
    if n <= 0.0 or s <= 0.0:
        return None
    return LifePrior(b, n, s, f"Weibull shape {b:g}: " + ", ".join(parts))
