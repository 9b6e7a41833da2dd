"""FEMTO evaluation: degradation onset, baseline alarms with debounce, trend RUL and PHM score.

Everything that is learned or tuned is chosen on five bearings and scored on the sixth
(leave-one-bearing-out).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from feature_alarms import Baseline
from femto import CHANNELS, BearingRun

from agent.analysis.trend import NoEstimate, Trend

ALARM_FEATURES = (
    "accel_rms_g",
    "hf_accel_rms_g",
    "kurtosis",
    "envelope_bpfo_g",
    "envelope_bpfi_g",
    "envelope_bsf_g",
    "envelope_ftf_g",
)
K_GRID = (6.0, 10.0, 15.0, 20.0)
RATIO_GRID = (1.5, 2.0, 3.0, 4.0, 6.0)
DEBOUNCE = 3
LEARN_READINGS = 60  # 10 min of FEMTO snapshots
ONSET_REF_FRACTION = 0.10
ONSET_SIGMAS = 3.0
ONSET_HALF_WINDOW = 3  # centred median over 7 snapshots (70 s)
FAILURE_PEAK_G = 20.0
TREND_GRID = {
    "model": ("exponential", "linear"),
    "bin_s": (10.0, 60.0),
    "window_s": (300.0, 900.0, 1800.0),
}
TUNE_FRACTIONS = tuple(np.round(np.arange(0.50, 0.951, 0.025), 3))
SCORE_FRACTIONS = (0.5, 0.7, 0.9)


def centred_median(a: np.ndarray, half: int) -> np.ndarray:
    """Median over a centred window of 2*half+1 samples (shrunk at the ends)."""
    n = a.shape[0]
    return np.array([np.median(a[max(0, i - half) : i + half + 1]) for i in range(n)])


def degradation_onset(run: BearingRun) -> int:
    """Index of the degradation onset.

    Definition: reference = the first 10 % of life; per channel, threshold = median +
    3 x 1.4826 x MAD of accel_rms_g over the reference. The health indicator is accel_rms_g
    smoothed by a centred 7-snapshot (70 s) median. Onset = the earliest snapshot from which,
    until failure, at least one channel's indicator stays above its threshold.
    """
    n = run.t_s.shape[0]
    ref = max(30, int(ONSET_REF_FRACTION * n))
    above = np.zeros(n, dtype=bool)
    for ch in CHANNELS:
        a = run.features[ch]["accel_rms_g"]
        med = float(np.median(a[:ref]))
        sigma = 1.4826 * float(np.median(np.abs(a[:ref] - med)))
        above |= centred_median(a, ONSET_HALF_WINDOW) > med + ONSET_SIGMAS * sigma
    below = np.flatnonzero(~above)
    return int(below[-1] + 1) if below.shape[0] else 0


def exceed_matrix(run: BearingRun, feature: str, k: float, ratio: float) -> np.ndarray:
    """Per channel, per snapshot: above the learned level (False while learning)."""
    rows = []
    for ch in CHANNELS:
        a = run.features[ch][feature]
        base = Baseline(
            learn_readings=LEARN_READINGS,
            features=[feature],
            k_mad={feature: k},
            min_ratio={feature: ratio},
        )
        for i in range(LEARN_READINGS):
            base.update(float(run.t_s[i]), {feature: float(a[i])})
        level = base.levels()[feature][0]
        ex = a > level
        ex[:LEARN_READINGS] = False
        rows.append(ex)
    return np.array(rows)


def debounce(ex: np.ndarray, n: int = DEBOUNCE) -> tuple[np.ndarray, np.ndarray]:
    """Alarm active (run of >= n exceedances) and raise events (run reaching n)."""
    active = np.zeros_like(ex)
    raised = np.zeros_like(ex)
    for c in range(ex.shape[0]):
        run = 0
        for i, e in enumerate(ex[c]):
            run = run + 1 if e else 0
            active[c, i] = run >= n
            raised[c, i] = run == n
    return active, raised


@dataclass(frozen=True)
class AlarmOutcome:
    """Alarm result on one bearing."""

    false_alarms: int  # raise events before onset (all channels)
    detect_idx: int | None  # first snapshot at/after onset with an active alarm


def alarm_outcome(active: np.ndarray, raised: np.ndarray, onset: int) -> AlarmOutcome:
    """Count false alarms before onset and find the first active alarm from onset on."""
    fa = int(raised[:, :onset].sum())
    any_active = active.any(axis=0)
    hits = np.flatnonzero(any_active[onset:])
    return AlarmOutcome(fa, int(onset + hits[0]) if hits.shape[0] else None)


def alarm_tables(runs: dict[str, BearingRun], onsets: dict[str, int]) -> dict:
    """Per feature, per (k, ratio), per bearing: (active, raised) matrices."""
    table: dict = {}
    for f in ALARM_FEATURES:
        for k, r in itertools.product(K_GRID, RATIO_GRID):
            for name, run in runs.items():
                table[f, k, r, name] = debounce(exceed_matrix(run, f, k, r))
    return table


def choose_levels(table: dict, runs: dict, onsets: dict, train: list[str]) -> dict:
    """Per feature, the (k, ratio) with zero training false alarms and the longest
    mean lead (as a fraction of life) on the training bearings; None if none qualifies."""
    chosen = {}
    for f in ALARM_FEATURES:
        best = None
        for k, r in itertools.product(K_GRID, RATIO_GRID):
            outs = [alarm_outcome(*table[f, k, r, b], onsets[b]) for b in train]
            if any(o.false_alarms for o in outs):
                continue
            lead = np.mean(
                [
                    (runs[b].life_s - runs[b].t_s[o.detect_idx]) / runs[b].life_s
                    if o.detect_idx is not None
                    else 0.0
                    for b, o in zip(train, outs, strict=True)
                ]
            )
            # Longer lead first (leads within 1 % of life tie); among ties the least
            # sensitive setting, as a margin against bearings the tuning never saw.
            if (
                best is None
                or lead > best[0] + 0.01
                or (lead >= best[0] - 0.01 and k * r > best[1])
            ):
                best = (max(lead, best[0]) if best else lead, k * r, k, r)
        chosen[f] = None if best is None else (best[2], best[3])
    return chosen


def combined_outcome(table: dict, chosen: dict, name: str, onset: int) -> AlarmOutcome:
    """Alarm outcome with every chosen feature on both channels."""
    actives, raises = [], []
    for f, kr in chosen.items():
        if kr is not None:
            a, r = table[f, kr[0], kr[1], name]
            actives.append(a)
            raises.append(r)
    if not actives:
        return AlarmOutcome(0, None)
    return alarm_outcome(np.vstack(actives), np.vstack(raises), onset)


# ---------------------------------------------------------------- trend / time to failure


def health_indicator(run: BearingRun) -> np.ndarray:
    """accel_peak_g, larger of the two channels: the bench's failure metric (20 g)."""
    return np.maximum(run.features["h"]["accel_peak_g"], run.features["v"]["accel_peak_g"])


def phm_accuracy(actual: float, predicted: float) -> float:
    """PHM 2012 score of one prediction."""
    er = 100.0 * (actual - predicted) / actual
    if er <= 0.0:
        return math.exp(-math.log(0.5) * er / 5.0)
    return math.exp(math.log(0.5) * er / 20.0)


PRIOR_SCALES = (0.25, 0.5, 0.75, 1.0)


def prior_rul_s(age_s: float, train_lives: list[float], scale: float = 1.0) -> float:
    """Fallback when the trend gives no estimate: `scale` x the median remaining life of the
    training bearings that outlived this age (scale < 1 leans early, which the PHM score
    punishes less than late); 10 % of the age when none did."""
    rest = [life - age_s for life in train_lives if life > age_s]
    return scale * float(np.median(rest)) if rest else 0.1 * age_s


def trend_predictions(
    run: BearingRun, params: dict, fractions: tuple[float, ...], ratio_bounds=(0.3, 3.0)
) -> list[dict]:
    """Feed the indicator through a Trend and estimate at each fraction of life."""
    bin_s = params["bin_s"]
    trend = Trend(
        model=params["model"],
        bin_s=bin_s,
        window_bins=max(3, int(params["window_s"] / bin_s)),
        min_points=10,
        min_t=3.0,
        capacity=max(256, 2 * int(params["window_s"] / bin_s) + 2),
        ratio_bounds=ratio_bounds,
    )
    hi = health_indicator(run)
    life = run.life_s
    out = []
    targets = [f * life for f in fractions]
    j = 0
    for i, t in enumerate(run.t_s):
        trend.update(float(t), float(hi[i]))
        while j < len(targets) and (i + 1 >= len(run.t_s) or run.t_s[i + 1] > targets[j]):
            est = trend.estimate(float(t), FAILURE_PEAK_G)
            out.append({"fraction": fractions[j], "now_s": float(t), "est": est})
            j += 1
    return out


def score_predictions(
    preds: list[dict], life_s: float, train_lives: list[float], prior_scale: float = 1.0
) -> list[dict]:
    """Add actual RUL, predicted RUL (trend, or prior fallback) and PHM accuracy."""
    rows = []
    for p in preds:
        actual = life_s - p["now_s"]
        est = p["est"]
        if isinstance(est, NoEstimate):
            pred = prior_rul_s(p["now_s"], train_lives, prior_scale)
            rows.append({**p, "actual_s": actual, "pred_s": pred, "source": "prior"})
        else:
            rows.append(
                {
                    **p,
                    "actual_s": actual,
                    "pred_s": est.hours * 3600.0,
                    "source": "trend",
                    "covered": est.lower_hours * 3600.0 <= actual <= est.upper_hours * 3600.0,
                }
            )
        rows[-1]["A"] = phm_accuracy(actual, rows[-1]["pred_s"]) if actual > 0 else float("nan")
    return rows


def trend_param_grid() -> list[dict]:
    """All trend configurations compared."""
    keys = list(TREND_GRID)
    grid = [dict(zip(keys, v, strict=True)) for v in itertools.product(*TREND_GRID.values())]
    # A window holding fewer bins than min_points (10) could never estimate.
    return [p for p in grid if p["window_s"] / p["bin_s"] >= 10]


def calibrate_ratio_bounds(rows: list[dict], coverage: float = 0.8) -> tuple[float, float]:
    """Empirical (low, high) factors on actual/predicted so `coverage` of training
    trend predictions fall inside [hours*low, hours*high]."""
    ratios = [r["actual_s"] / r["pred_s"] for r in rows if r["source"] == "trend"]
    if len(ratios) < 3:
        return (0.3, 3.0)
    tail = (1.0 - coverage) / 2.0
    lo, hi = np.quantile(ratios, [tail, 1.0 - tail])
    return (float(min(max(lo, 0.01), 1.0)), float(max(hi, 1.0)))
