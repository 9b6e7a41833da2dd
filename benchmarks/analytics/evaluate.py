"""FEMTO evaluation: degradation onset and the per-feature baseline alarms with debounce.

Everything that is learned or tuned is chosen on five bearings and scored on the sixth
(leave-one-bearing-out). Time to failure is evaluated through `edge-agent replay` itself
(ttf_replay.py), never here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from feature_alarms import Baseline
from femto import CHANNELS, BearingRun

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
