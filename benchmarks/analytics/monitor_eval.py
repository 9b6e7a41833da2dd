"""FEMTO through the real Monitor: how the early-detection defaults were chosen.

Features are computed once per snapshot with the same waveform_features call the Monitor
makes (femto.load_bearing) and fed to Monitor.update as feature readings, so every alarm and
onset below comes from monitor.py / lifecycle.py / health_index.py. Leave-one-bearing-out:
the health-index settings (alpha, k, floor) are chosen from a 27-point grid on the five
training bearings (zero false alarms, i.e. no raise before the objective onset of
evaluate.degradation_onset, then the longest mean lead as a fraction of life, ties to the
less sensitive setting) and scored on the sixth. The shipped default is the most common
fold choice. Time to failure is not evaluated here: ttf_replay.py runs `edge-agent replay`.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
from femto import CHANNELS, BearingRun

from agent.analysis.health_index import HealthIndexTuning
from agent.analysis.monitor import Monitor, Tuning
from agent.config import Config
from drivers.reading import Reading

T0 = datetime(2012, 1, 1, tzinfo=UTC)
FAILURE_G = 20.0
HI_GRID = tuple(
    HealthIndexTuning(alpha=a, k_mad=k, min_level=f)
    for a in (0.05, 0.1, 0.2)
    for k in (5.0, 10.0, 15.0)
    for f in (0.2, 0.3, 0.5)
)
HORIZON_H = 1.0  # bench lives are hours: escalate under one hour left


def femto_config(run: BearingRun) -> Config:
    return Config.model_validate(
        {
            "gateway": {"id": "bench"},
            "assets": [
                {
                    "id": run.name,
                    "machine": {
                        "standard": "iso10816-3",
                        "group": 2,
                        "foundation": "rigid",
                        "rpm": run.shaft_hz * 60,
                    },
                    "bearing": {"balls": 13, "ball_mm": 3.5, "pitch_mm": 25.6},
                    "failure": {"metric": "accel_peak_g", "threshold": FAILURE_G},
                    "planning_horizon_hours": HORIZON_H,
                    "alerting": {"debounce": 3, "baseline_readings": 60},
                }
            ],
            "sensors": [{"id": "s", "asset": run.name, "modbus": {"host": "127.0.0.1"}}],
            "store": {"path": "/nonexistent/bench.db"},
        }
    )


def _readings(run: BearingRun) -> list[list[dict]]:
    return [[dict(zip(run.features[ch], v, strict=True)) for v in
             zip(*run.features[ch].values(), strict=True)] for ch in CHANNELS]  # fmt: skip


def replay_features(run: BearingRun, tuning: Tuning, feats: list[list[dict]]) -> list:
    """Feed a bearing through a Monitor; returns (index, channel, draft) of every draft."""
    mon = Monitor(femto_config(run), tuning=tuning, persist=False)
    drafts = []
    for i, t in enumerate(run.t_s):
        at = T0 + timedelta(seconds=float(t))
        for c, ch in enumerate(CHANNELS):
            for d in mon.update(Reading("s", ch, at, feats[c][i], transport="replay")).drafts:
                drafts.append((i, ch, d))
    return drafts


def alarm_stats(run: BearingRun, drafts: list, onset: int) -> dict:
    raises = [(i, d.kind) for i, _, d in drafts if d.state == "raised"]
    trend = [i for i, k in raises if k == "trend"]
    true = [i for i in trend if i >= onset]
    return {
        "trend_false_alarms": sum(i < onset for i in trend),
        "severity_raises": sum(k == "severity" for _, k in raises),
        "lead_min": round((run.life_s - run.t_s[min(true)]) / 60, 1) if true else None,
        "lead_frac": (run.life_s - run.t_s[min(true)]) / run.life_s if true else 0.0,
    }


def choose_hi(stats: dict, train: list[str]) -> int:
    """Grid index: fewest false alarms on train (zero if possible), then the longest mean
    lead (fraction of life), then the less sensitive setting (higher k, floor; lower alpha)."""

    def key(g: int):
        h = HI_GRID[g]
        fa = sum(stats[g, b]["trend_false_alarms"] for b in train)
        lead = float(np.mean([stats[g, b]["lead_frac"] for b in train]))
        return (-fa, round(lead, 4), h.k_mad, h.min_level, -h.alpha)

    return max(range(len(HI_GRID)), key=key)


def evaluate(runs: dict[str, BearingRun], onsets: dict[str, int]) -> dict:
    names = list(runs)
    feats = {b: _readings(r) for b, r in runs.items()}
    stats = {
        (g, b): alarm_stats(
            runs[b], replay_features(runs[b], Tuning(health=h), feats[b]), onsets[b]
        )
        for g, h in enumerate(HI_GRID)
        for b in names
    }
    folds = {}
    for test in names:
        g = choose_hi(stats, [b for b in names if b != test])
        folds[test] = {
            "hi": {"alpha": HI_GRID[g].alpha, "k_mad": HI_GRID[g].k_mad,
                   "min_level": HI_GRID[g].min_level},
            "alarms": {k: v for k, v in stats[g, test].items() if k != "lead_frac"},
        }  # fmt: skip
    c = Counter(tuple(f["hi"].values()) for f in folds.values())
    (a, k, m), n = c.most_common(1)[0]
    return {
        "folds": folds,
        "hi_default": {"alpha": a, "k_mad": k, "min_level": m, "folds": n, "of": len(folds)},
    }
