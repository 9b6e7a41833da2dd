"""FEMTO through the real Monitor (the code `edge-agent replay` and the agent run).

Features are computed once per snapshot with the same waveform_features call the Monitor
makes (femto.load_bearing) and fed to Monitor.update as feature readings, so every alarm,
onset and time-to-failure number below comes from monitor.py / lifecycle.py /
health_index.py / degradation.py. Leave-one-bearing-out: the growth-rate prior, the
posterior tuning and the prior-fallback scale are learned on five bearings, scored on the
sixth.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
from evaluate import phm_accuracy, prior_rul_s
from femto import CHANNELS, BearingRun

from agent.analysis.degradation import DegradationPrior, PosteriorTuning
from agent.analysis.monitor import Monitor, Tuning
from agent.analysis.trend import TrendEstimate
from agent.config import Config
from drivers.reading import Reading

T0 = datetime(2012, 1, 1, tzinfo=UTC)
FAILURE_G = 20.0
FRACTIONS = (0.5, 0.7, 0.9)
WEIGHTS = (0.01, 0.03, 0.1)
QUANTILES = (0.1, 0.25, 0.5)
PRIOR_SCALES = (0.25, 0.5, 0.75, 1.0)
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


def replay_features(run: BearingRun, tuning: Tuning, at_idx: list[int]) -> dict:
    """Feed a bearing through a Monitor; returns drafts and per-index channel estimates."""
    mon = Monitor(femto_config(run), tuning=tuning)
    drafts, est = [], {}
    feats = {ch: [dict(zip(run.features[ch], v, strict=True)) for v in
                  zip(*run.features[ch].values(), strict=True)] for ch in CHANNELS}  # fmt: skip
    want = set(at_idx)
    for i, t in enumerate(run.t_s):
        at = T0 + timedelta(seconds=float(t))
        for ch in CHANNELS:
            for d in mon.update(Reading("s", ch, at, feats[ch][i], transport="replay")).drafts:
                drafts.append((i, ch, d))
        if i in want:
            est[i] = {v.channel: v.estimate for v in mon.views()}
    return {"drafts": drafts, "estimates": est}


def onset_info(run: BearingRun, res: dict) -> tuple[int, float] | None:
    """(index, accel_peak level) of the first trend raise on any channel."""
    for i, ch, d in res["drafts"]:
        if d.kind == "trend" and d.state == "raised":
            lo = max(0, i - 5)
            return i, float(np.mean(run.features[ch]["accel_peak_g"][lo : i + 1]))
    return None


def learn_prior(runs: dict, base: dict, names: list[str]) -> DegradationPrior:
    """Growth rate of ln(accel_peak) from onset to the 20 g failure, over training bearings."""
    logs = []
    for b in names:
        info = onset_info(runs[b], base[b])
        if info is not None:
            i, level = info
            dt_days = max(runs[b].life_s - runs[b].t_s[i], 60.0) / 86400.0
            logs.append(math.log(max(math.log(FAILURE_G / level), 0.1) / dt_days))
    if not logs:
        return DegradationPrior(24.0, 1.5)
    return DegradationPrior(math.exp(float(np.mean(logs))), max(float(np.std(logs)), 0.5))


def score(run: BearingRun, res: dict, idx: list[int], train_lives: list[float], scale: float):
    rows = []
    for f, i in zip(FRACTIONS, idx, strict=True):
        now, actual = float(run.t_s[i]), run.life_s - float(run.t_s[i])
        ests = [e for e in res["estimates"][i].values() if isinstance(e, TrendEstimate)]
        if ests:
            e = min(ests, key=lambda x: x.hours)
            pred, src = e.hours * 3600, "trend"
            cov = e.lower_hours * 3600 <= actual <= e.upper_hours * 3600
        else:
            pred, src, cov = prior_rul_s(now, train_lives, scale), "no trend: prior", None
        rows.append({"fraction": f, "actual_h": actual / 3600, "pred_h": pred / 3600,
                     "source": src, "covered": cov, "A": phm_accuracy(actual, pred)})  # fmt: skip
    return rows


def evaluate(runs: dict[str, BearingRun], onsets: dict[str, int]) -> dict:
    names = list(runs)
    idx = {b: [int(np.searchsorted(r.t_s, f * r.life_s, side="right") - 1) for f in FRACTIONS]
           for b, r in runs.items()}  # fmt: skip
    base = {b: replay_features(runs[b], Tuning(), idx[b]) for b in names}
    alarms = {}
    for b, run in runs.items():
        raises = [(i, ch, d.kind) for i, ch, d in base[b]["drafts"] if d.state == "raised"]
        trend = [i for i, _, k in raises if k == "trend"]
        alarms[b] = {
            "trend_false_alarms": sum(i < onsets[b] for i in trend),
            "severity_raises_before_onset": sum(
                i < onsets[b] for i, _, k in raises if k == "severity"),
            "lead_min": None if not [i for i in trend if i >= onsets[b]] else round(
                (run.life_s - run.t_s[min(i for i in trend if i >= onsets[b])]) / 60, 1),
            "first_raise_min_before_failure": None if not trend else round(
                (run.life_s - run.t_s[min(trend)]) / 60, 1),
        }  # fmt: skip
    cache: dict = {}

    def scored(b: str, train: list[str], w: float, q: float, c: float) -> list[dict]:
        prior = learn_prior(runs, base, train)
        key = (b, tuple(train), w, q)
        if key not in cache:
            tu = Tuning(posterior=PosteriorTuning(likelihood_weight=w, quantile=q), prior=prior)
            cache[key] = replay_features(runs[b], tu, idx[b])
        return score(runs[b], cache[key], idx[b], [runs[o].life_s for o in train], c)

    folds = {}
    for test in names:
        train = [b for b in names if b != test]
        best = max(
            ((w, q, c) for w in WEIGHTS for q in QUANTILES for c in PRIOR_SCALES),
            key=lambda p: np.mean([r["A"] for b in train
                                   for r in scored(b, [o for o in train if o != b], *p)]),
        )  # fmt: skip
        prior = learn_prior(runs, base, train)
        folds[test] = {
            "weight": best[0], "quantile": best[1], "prior_scale": best[2],
            "prior_rate_per_day": round(prior.rate_per_day, 2),
            "prior_log_sd": round(prior.log_sd, 2),
            "points": scored(test, train, *best),
        }  # fmt: skip
    pts = [p for f in folds.values() for p in f["points"]]
    phm = {}
    for f in FRACTIONS:
        sel = [p for p in pts if p["fraction"] == f]
        tr = [p["A"] for p in sel if p["source"] == "trend"]
        phm[f"{int(f * 100)}%"] = {"all": round(float(np.mean([p["A"] for p in sel])), 3),
                                   "trend_only": round(float(np.mean(tr)), 3) if tr else None,
                                   "trend_points": len(tr)}  # fmt: skip
    tr_all = [p["A"] for p in pts if p["source"] == "trend"]
    phm["overall"] = {"all": round(float(np.mean([p["A"] for p in pts])), 3),
                      "trend_only": round(float(np.mean(tr_all)), 3) if tr_all else None,
                      "trend_points": len(tr_all),
                      "trend_bounds_cover": sum(bool(p["covered"]) for p in pts)}  # fmt: skip
    return {"alarms": alarms, "folds": folds, "phm": phm}
