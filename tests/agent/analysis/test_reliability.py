"""The life prior: Weibull lives with an uncertain scale, conditioned on the asset's age."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.analysis.reliability import CATALOGUE_LIVES, FleetLife, LifePrior, life_prior
from agent.analysis.ttf import Estimate, remaining_life


def test_one_life_is_the_median_and_the_quantiles_invert_the_survival() -> None:
    prior = life_prior(lives_hours=[1000.0])
    assert prior is not None and (prior.events, prior.shape) == (1.0, 1.5)
    assert prior.median_life_hours == pytest.approx(1000.0)
    for age in (0.0, 400.0, 2500.0):  # also past the only known life
        for q in (0.025, 0.25, 0.5, 0.975):
            (r,) = prior.remaining_quantiles(age, [q])
            surv = prior.survival(age + r) / prior.survival(age)
            assert float(surv) == pytest.approx(1.0 - q, rel=1e-9)


def test_the_remaining_life_density_integrates_to_its_quantiles() -> None:
    prior = life_prior(lives_hours=[800.0, 1500.0, 2600.0])
    assert prior is not None
    age = 900.0
    r = np.exp(np.linspace(math.log(1e-3), math.log(1e6), 20001))
    dens = np.exp(prior.remaining_log_density(age, r) - math.log(float(prior.survival(age))))
    cdf = np.concatenate(([0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(r))))
    assert cdf[-1] == pytest.approx(1.0, abs=1e-3)
    (median,) = prior.remaining_quantiles(age, [0.5])
    assert float(np.interp(median, r, cdf)) == pytest.approx(0.5, abs=2e-3)


def test_an_older_machine_has_less_life_left_when_lives_are_well_known() -> None:
    """Many lives: nearly a Weibull of shape 1.5, whose hazard grows with age (wear-out)."""
    prior = life_prior(lives_hours=[1000.0] * 500)
    assert prior is not None
    left = [prior.remaining_quantiles(age, [0.5])[0] for age in (0.0, 500.0, 1000.0, 2000.0)]
    assert left == sorted(left, reverse=True)


def test_l10_is_the_life_ninety_percent_survive() -> None:
    prior = life_prior(l10_hours=20000.0)
    assert prior is not None and prior.events == CATALOGUE_LIVES
    assert float(prior.survival(20000.0)) == pytest.approx(0.9, abs=0.002)
    weibull = life_prior(weibull=(2.0, 5000.0))
    assert weibull is not None and weibull.shape == 2.0
    # Worth 10 lives, not infinitely many: close to the catalogue's e^-1 at its scale.
    n = CATALOGUE_LIVES
    assert float(weibull.survival(5000.0)) == pytest.approx((1 + 1 / n) ** -n)
    assert float(weibull.survival(5000.0)) == pytest.approx(math.exp(-1.0), rel=0.05)


def test_fleet_lives_add_to_the_configured_ones_and_suspensions_only_add_exposure() -> None:
    base = life_prior(lives_hours=[1000.0])
    more = life_prior(lives_hours=[1000.0], fleet=[FleetLife(3000.0, True)])
    healthy = life_prior(lives_hours=[1000.0], fleet=[FleetLife(3000.0, False)])
    assert base is not None and more is not None and healthy is not None
    assert (more.events, healthy.events) == (2.0, 1.0)
    assert healthy.exposure == pytest.approx(more.exposure)
    assert more.median_life_hours > base.median_life_hours  # it lived longer
    assert (
        "1 life in the fleet history" in more.source
        and "1 replaced while healthy" in healthy.source
    )
    # Only lives that did not fail say no life has been seen end: no prior.
    assert life_prior(fleet=[FleetLife(500.0, False)]) is None
    assert life_prior() is None


def test_more_lives_narrow_the_bounds() -> None:
    def width(prior: LifePrior | None) -> float:
        assert prior is not None
        lo, hi = prior.remaining_quantiles(0.0, [0.025, 0.975])
        return hi / lo

    assert width(life_prior(lives_hours=[1000.0] * 20)) < width(life_prior(lives_hours=[1000.0]))


@pytest.mark.parametrize("shape", [0.1, 1.5, 20.0])
@pytest.mark.parametrize("hours", [1e-6, 1.0, 1e6])
@pytest.mark.parametrize("age_h", [0.0, 1e-6, 5e3, 1.2e6])
def test_every_corner_of_the_configurable_space_gives_finite_bounds(
    shape: float, hours: float, age_h: float
) -> None:
    """Lives, scales and L10s up to the configuration's 1,000,000 h, shapes 0.1 to 20, ages
    from 0 to an installation in 1900, with 10,000 fleet lives: a record's hours and bounds
    are finite and not negative (NaN would make the record unstorable)."""
    fleet = [FleetLife(hours, i % 2 == 0) for i in range(10_000)]
    priors = [
        life_prior(lives_hours=[hours] * 10_000, shape=shape, fleet=fleet),
        life_prior(weibull=(shape, hours), fleet=fleet),
        life_prior(l10_hours=hours, shape=shape),
    ]
    for prior in priors:
        assert prior is not None
        est = remaining_life(life=(prior, age_h), evidence=None)
        assert isinstance(est, Estimate)
        got = (est.hours, est.lower_hours, est.upper_hours, prior.median_life_hours)
        assert all(math.isfinite(x) and x >= 0 for x in got), (prior, got)
        assert est.lower_hours <= est.hours <= est.upper_hours
