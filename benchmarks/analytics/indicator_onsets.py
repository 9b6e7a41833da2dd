"""How long before failure do the FEMTO recordings show any sign of degradation?

A time-to-failure model can only tell a bearing's remaining life from its vibration once the
vibration has changed; before that, only the age and the fleet's lives inform it. This
measures, per bearing, when health indicators first leave the bearing's own healthy baseline
for good, and at how many of the time-to-failure benchmark's 40 cut points (ttf_replay.py)
such a change had already been confirmed.

Indicators (28 series): per snapshot and channel (horizontal, vertical), accel_rms_g,
accel_peak_g, kurtosis, crest_factor, hf_accel_rms_g and velocity_rms_mm_s from the agent's
own waveform_features, and the log10 energy of 8 equal bands from 0 to 12.8 kHz (Hann window).
Every snapshot is used; t = 10 s x snapshot index (Bearing1_1's t_s has a -52 s glitch at
index 2120; every other step is 10 s).

Rule, for k = 4 and 6 robust sigmas: each series is smoothed by a causal 6-snapshot moving
median; the baseline is the first 20 % of snapshots or 60 min, whichever is shorter; a
departure is the first run of 30 consecutive snapshots after the baseline outside
median +/- k x 1.4826 x MAD of the smoothed baseline.
  (a) earliest: the first departure of any series, either direction;
  (b) robust onset: the time by which at least 25 % of the series (7 of 28) have departed
      upward (a real damage sign: energy, peaks and impulsiveness rise); it is confirmed 30
      snapshots later (the end of its 30-snapshot run);
  (c) false departures: the same rule with the baseline's first half as reference, applied
      to its second half (series firing there, where the bearing is healthy by definition).

Run: .venv/bin/python benchmarks/analytics/indicator_onsets.py   (prints JSON, ~1 min)
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

sys.path.insert(0, str(Path(__file__).resolve().parent))
from femto import BEARINGS, CHANNELS, FEMTO_DIR
from ttf_replay import cut_points

from agent.analysis.features import waveform_features

WAVEFORM = ("accel_rms_g", "accel_peak_g", "kurtosis", "crest_factor", "hf_accel_rms_g",
            "velocity_rms_mm_s")  # fmt: skip
N_BANDS = 8
STEP_S = 10.0  # snapshot spacing
SMOOTH = 6  # causal moving median, snapshots
RUN = 30  # consecutive snapshots outside the band that make a departure
BASELINE_SHARE, BASELINE_MAX = 0.2, 360  # 20 % of snapshots or 60 min
KS = (4, 6)
SHARE_UP = 0.25  # share of series that must depart upward for the robust onset


def band_log_energies(x: np.ndarray, fs_hz: float) -> np.ndarray:
    """log10 energy of N_BANDS equal bands from 0 to Nyquist, per record (rows of x)."""
    n = x.shape[-1]
    p = np.abs(np.fft.rfft((x - x.mean(axis=-1, keepdims=True)) * np.hanning(n))) ** 2
    edges = np.linspace(0.0, fs_hz / 2, N_BANDS + 1)
    idx = np.clip(
        np.searchsorted(edges, np.fft.rfftfreq(n, 1 / fs_hz), "right") - 1, 0, N_BANDS - 1
    )
    e = np.stack([p[:, idx == b].sum(axis=1) for b in range(N_BANDS)], axis=1)
    return np.log10(e + 1e-30)


def indicators(bearing: str) -> tuple[list[str], np.ndarray]:
    """(series names, array snapshots x series) of one bearing, both channels."""
    with np.load(FEMTO_DIR / f"{bearing}.npz") as d:
        acc = d["acc"].astype(np.float64) * float(d["scale_g"])
        fs = float(d["fs_hz"])
    names, cols = [], []
    for c, ch in enumerate(CHANNELS):
        rows = [waveform_features(acc[i, :, c], fs) for i in range(acc.shape[0])]
        cols += [np.array([r[k] for r in rows]) for k in WAVEFORM]
        cols += list(band_log_energies(acc[:, :, c], fs).T)
        names += [f"{k}/{ch}" for k in WAVEFORM] + [f"band{b}_log/{ch}" for b in range(N_BANDS)]
    return names, np.stack(cols, axis=1)


def causal_median(s: np.ndarray) -> np.ndarray:
    """Median of each snapshot and the SMOOTH - 1 before it (fewer at the start), per column."""
    head = [np.median(s[: i + 1], axis=0) for i in range(min(SMOOTH - 1, len(s)))]
    tail = np.median(sliding_window_view(s, SMOOTH, axis=0), axis=-1)
    return np.vstack([np.array(head).reshape(-1, s.shape[1]), tail])


def limits(ref: np.ndarray, k: float) -> tuple[np.ndarray, np.ndarray]:
    """median -/+ k robust sigmas (1.4826 x MAD) of each column of ref."""
    med = np.median(ref, axis=0)
    mad = 1.4826 * np.median(np.abs(ref - med), axis=0)
    mad = np.maximum(mad, 1e-9 * np.maximum(np.abs(med), 1e-12))  # a flat baseline
    return med - k * mad, med + k * mad


def first_run(out: np.ndarray) -> int | None:
    """First index from which out stays True for RUN consecutive entries, or None."""
    count = 0
    for i, o in enumerate(out):
        count = count + 1 if o else 0
        if count == RUN:
            return i - RUN + 1
    return None


def departures(s: np.ndarray, ref: slice, search: slice, k: float, up_only: bool) -> list:
    """Per column: index (from search.start) of its first departure, or None."""
    lo, hi = limits(s[ref], k)
    out = s[search] > hi if up_only else (s[search] < lo) | (s[search] > hi)
    return [None if (i := first_run(col)) is None else i + search.start for col in out.T]


def onsets(names: list[str], s: np.ndarray, k: float) -> dict:
    """(a), (b) and (c) of one bearing's smoothed series at k robust sigmas."""
    n = len(s)
    nb = min(int(BASELINE_SHARE * n), BASELINE_MAX)
    life = STEP_S * (n - 1)
    anyway = departures(s, slice(0, nb), slice(nb, n), k, up_only=False)
    up = sorted(
        i for i in departures(s, slice(0, nb), slice(nb, n), k, up_only=True) if i is not None
    )
    false = departures(s, slice(0, nb // 2), slice(nb // 2, nb), k, up_only=False)
    need = math.ceil(SHARE_UP * len(names))

    def when(i: int | None) -> dict | None:
        return None if i is None else {"lead_h": round((life - STEP_S * i) / 3600, 2),
                                       "life_fraction": round(i / (n - 1), 3)}  # fmt: skip

    first = min(((i, nm) for i, nm in zip(anyway, names, strict=True) if i is not None),
                default=None)  # fmt: skip
    robust = up[need - 1] if len(up) >= need else None
    return {
        "earliest_any": None if first is None else {**when(first[0]), "series": first[1]},
        "robust_onset": when(robust),
        "robust_onset_index": robust,
        "series_departed_up": len(up),
        "false_departures": [nm for i, nm in zip(false, names, strict=True) if i is not None],
    }


def confirmed_at_cuts(bearing: str, n: int, robust: int | None) -> list[bool]:
    """Per cut point of ttf_replay: was the robust onset confirmed within the cut's snapshots?"""
    last = [math.floor(f * (n - 1) + 1e-9) for _, f in cut_points(bearing)]
    return [robust is not None and robust + RUN - 1 <= i for i in last]


def evaluate() -> dict:
    """Every figure of the benchmark, per bearing and in total."""
    t0 = time.perf_counter()
    per, confirmed = {}, {k: 0 for k in KS}
    n_cuts = 0
    for b in BEARINGS:
        names, x = indicators(b)
        s = causal_median(x)
        n = len(s)
        row = {"snapshots": n, "life_h": round(STEP_S * (n - 1) / 3600, 3),
               "baseline_snapshots": min(int(BASELINE_SHARE * n), BASELINE_MAX)}  # fmt: skip
        for k in KS:
            o = onsets(names, s, k)
            cuts = confirmed_at_cuts(b, n, o.pop("robust_onset_index"))
            o["confirmed_at_cuts"] = f"{sum(cuts)}/{len(cuts)}"
            confirmed[k] += sum(cuts)
            row[f"k{k}"] = o
        n_cuts += len(cut_points(b))
        per[b] = row
    return {
        "series": len(names),
        "robust_onset_min_series": math.ceil(SHARE_UP * len(names)),
        "bearings": per,
        "cut_points": n_cuts,
        "robust_onset_confirmed_before_cut": {f"k{k}": confirmed[k] for k in KS},
        "false_departures_total": {
            f"k{k}": sum(len(r[f"k{k}"]["false_departures"]) for r in per.values()) for k in KS
        },
        "runtime_s": round(time.perf_counter() - t0, 1),
    }


if __name__ == "__main__":
    print(json.dumps(evaluate(), indent=1))
