"""Trend model: synthetic degradations, no estimate without a trend, state round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from agent.analysis.trend import NoEstimate, Trend, TrendEstimate

HOUR = 3600.0


def _feed(trend: Trend, t: np.ndarray, v: np.ndarray) -> None:
    for ti, vi in zip(t, v, strict=True):
        trend.update(float(ti), float(vi))


def test_exponential_degradation_bounds_contain_truth() -> None:
    rng = np.random.default_rng(11)
    t = np.arange(0, 48 * HOUR, 600.0)  # every 10 min for 48 h
    growth = math.log(4.0) / (24 * HOUR)  # x4 per day
    v = 1.0 * np.exp(growth * t) * np.exp(rng.normal(0, 0.05, t.shape[0]))
    trend = Trend(model="exponential", bin_s=1800.0, window_bins=24)
    _feed(trend, t, v)
    now = float(t[-1])
    threshold = 40.0
    truth_h = (math.log(threshold) - growth * now) / growth / HOUR
    est = trend.estimate(now, threshold)
    assert isinstance(est, TrendEstimate), est
    assert est.lower_hours <= truth_h <= est.upper_hours
    assert est.hours == pytest.approx(truth_h, rel=0.25)
    assert est.model == "exponential"
    assert est.rate_per_day > 0


def test_linear_degradation_bounds_contain_truth() -> None:
    rng = np.random.default_rng(5)
    t = np.arange(0, 10 * 24 * HOUR, HOUR)
    v = 2.0 + 0.1 * t / (24 * HOUR) + rng.normal(0, 0.05, t.shape[0])
    trend = Trend(model="linear", bin_s=6 * HOUR, window_bins=30)
    _feed(trend, t, v)
    now = float(t[-1])
    truth_h = (4.5 - (2.0 + 0.1 * now / (24 * HOUR))) / 0.1 * 24
    est = trend.estimate(now, 4.5)
    assert isinstance(est, TrendEstimate), est
    assert est.lower_hours <= truth_h <= est.upper_hours
    assert est.rate_per_day == pytest.approx(0.1, rel=0.2)


def test_flat_noisy_signal_gives_no_estimate() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(0, 24 * HOUR, 300.0)
    v = 3.0 + rng.normal(0, 0.3, t.shape[0])
    trend = Trend(bin_s=1800.0, window_bins=24)
    _feed(trend, t, v)
    est = trend.estimate(float(t[-1]), 10.0)
    assert isinstance(est, NoEstimate)
    assert "no significant upward trend" in est.reason


def test_too_few_points_and_past_threshold() -> None:
    trend = Trend(bin_s=60.0, window_bins=30)
    for i in range(4):
        trend.update(i * 60.0, 1.0 + i)
    est = trend.estimate(240.0, 10.0)
    assert isinstance(est, NoEstimate)
    assert est.reason.startswith("only 4 points")
    for i in range(4, 20):
        trend.update(i * 60.0, math.exp(0.3 * i))
    assert trend.estimate(20 * 60.0, 2.0) == NoEstimate("already past the threshold")


def test_memory_is_bounded() -> None:
    trend = Trend(bin_s=1.0, window_bins=30, capacity=64)
    for i in range(10_000):
        trend.update(float(i), 1.0 + i * 1e-3)
    assert len(trend) <= 65
    est = trend.estimate(9999.0, 100.0)
    assert isinstance(est, TrendEstimate)


def test_state_round_trip() -> None:
    trend = Trend(model="exponential", bin_s=60.0, window_bins=20, ratio_bounds=(0.4, 2.0))
    for i in range(500):
        trend.update(i * 20.0, math.exp(i / 200.0))
    state = json.loads(json.dumps(trend.to_dict()))
    again = Trend.from_dict(state)
    assert again.to_dict() == trend.to_dict()
    assert again.estimate(10_000.0, 50.0) == trend.estimate(10_000.0, 50.0)
    trend.reset()
    assert len(trend) == 0
    with pytest.raises(ValueError):
        Trend.from_dict({**state, "version": 99})
