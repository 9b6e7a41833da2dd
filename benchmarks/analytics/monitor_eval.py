"""FEMTO through the real Monitor (the code `edge-agent replay` and the agent run).

Features are computed once per snapshot with the same waveform_features call the Monitor
makes (femto.load_bearing) and fed to Monitor.update as feature readings, so every alarm,
onset and time-to-failure number below comes from monitor.py / lifecycle.py /
health_index.py / degradation.py. Leave-one-bearing-out, everything learned on the five
training bearings and scored on the sixth:
1. health-index settings (alpha, k, floor) from a 27-point grid: zero false alarms on the
   five (raise before the objective onset of evaluate.degradation_onset), then the longest
   mean lead as a fraction of life, ties to the less sensitive setting;
2. the growth-rate prior of the degradation model (from the five's onsets and failures);
3. likelihood weight and reported quantile: mean PHM accuracy of the model's estimates on
   the five (nested: each scored with a prior from the other four), 50..95 % of life;
4. the population priors of ttf_prior (life, onset -> failure): fitted on the five.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
from evaluate import phm_accuracy
from femto import CHANNELS, BearingRun
from ttf_prior import conditional_residuals, median_point

from agent.analysis.degradation import DegradationPrior, PosteriorTuning
from agent.analysis.health_index import HealthIndexTuning
from agent.analysis.monitor import Monitor, Tuning
from agent.analysis.trend import TrendEstimate
from agent.config import Config
from drivers.reading import Reading

T0 = datetime(2012, 1, 1, tzinfo=UTC)
FAILURE_G = 20.0
FRACTIONS = (0.5, 0.7, 0.9)
DENSE = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 50..95 % of life (selection)
WEIGHTS = (0.01, 0.03, 0.1)
QUANTILES = (0.1, 0.25, 0.5)
HI_GRID = tuple(
    HealthIndexTuning(alpha=a, k_mad=k, min_level=f)
    for a in (0.05, 0.1, 0.2)
    for k in (5.0, 10.0, 15.0)
    for f in (0.2, 0.3, 0.5)
)
AFTER_ONSET = ("model", "fused", "onset prior")  # answers compared where the model estimates
PRIOR_QUANTILES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)  # of the population priors' residuals
MEDIAN_SCALES = (0.25, 0.5, 0.75, 1.0)  # phase-2 fallback: scale x median of the survivors
LIFE_CANDIDATES = (*(f"log-normal q{q}" for q in PRIOR_QUANTILES),
                   *(f"survivor median x{c}" for c in MEDIAN_SCALES))  # fmt: skip
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


def replay_features(run: BearingRun, tuning: Tuning, at_idx: list[int], feats=None) -> dict:
    """Feed a bearing through a Monitor; returns drafts and per-index channel estimates."""
    mon = Monitor(femto_config(run), tuning=tuning)
    feats = feats or _readings(run)
    drafts, est = [], {}
    want = set(at_idx)
    for i, t in enumerate(run.t_s):
        at = T0 + timedelta(seconds=float(t))
        for c, ch in enumerate(CHANNELS):
            for d in mon.update(Reading("s", ch, at, feats[c][i], transport="replay")).drafts:
                drafts.append((i, ch, d))
        if i in want:
            est[i] = {v.channel: v.estimate for v in mon.views()}
    return {"drafts": drafts, "estimates": est}


def first_raise(res: dict) -> tuple[int, str] | None:
    """(index, channel) of the first trend raise on any channel."""
    for i, ch, d in res["drafts"]:
        if d.kind == "trend" and d.state == "raised":
            return i, ch
    return None


def learn_prior(runs: dict, base: dict, names: list[str]) -> DegradationPrior:
    """Growth rate of ln(accel_peak) from onset to the 20 g failure, over training bearings."""
    logs = []
    for b in names:
        info = first_raise(base[b])
        if info is not None:
            i, ch = info
            level = float(np.mean(runs[b].features[ch]["accel_peak_g"][max(0, i - 5) : i + 1]))
            dt_days = max(runs[b].life_s - runs[b].t_s[i], 60.0) / 86400.0
            logs.append(math.log(max(math.log(FAILURE_G / level), 0.1) / dt_days))
    if not logs:
        return DegradationPrior(24.0, 1.5)
    return DegradationPrior(math.exp(float(np.mean(logs))), max(float(np.std(logs)), 0.5))


def onset_durations(runs: dict, base: dict, names: list[str]) -> list[float]:
    """Monitor onset (first trend raise) -> failure, seconds, of the bearings in names."""
    out = []
    for b in names:
        info = first_raise(base[b])
        if info is not None:
            out.append(max(runs[b].life_s - float(runs[b].t_s[info[0]]), 10.0))
    return out


def alarm_stats(run: BearingRun, res: dict, onset: int) -> dict:
    raises = [(i, d.kind) for i, _, d in res["drafts"] if d.state == "raised"]
    trend = [i for i, k in raises if k == "trend"]
    true = [i for i in trend if i >= onset]
    return {
        "trend_false_alarms": sum(i < onset for i in trend),
        "severity_raises_before_onset": sum(i < onset for i, k in raises if k == "severity"),
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


def points(run, res, idx, fracs, lives, durations) -> list[dict]:
    """Every answer at each fraction of life (the scored ones and the compared ones)."""
    rows = []
    for f, i in zip(fracs, idx, strict=True):
        now, actual = float(run.t_s[i]), run.life_s - float(run.t_s[i])
        ests = [e for e in res["estimates"][i].values() if isinstance(e, TrendEstimate)]
        info = first_raise(res)
        row = {"fraction": f, "actual_s": actual,
               "life_q": [*np.quantile(conditional_residuals(now, lives), PRIOR_QUANTILES),
                          *(median_point(now, lives, c) for c in MEDIAN_SCALES)],
               }  # fmt: skip
        if ests and info is not None:
            e = min(ests, key=lambda x: x.hours)
            since = now - float(run.t_s[info[0]])
            onset_q = (
                np.quantile(conditional_residuals(since, durations), PRIOR_QUANTILES)
                if durations
                else np.full(len(PRIOR_QUANTILES), e.hours * 3600)
            )
            row.update(
                source="trend", model_s=e.hours * 3600, onset_q=onset_q,
                covered=e.lower_hours * 3600 <= actual <= e.upper_hours * 3600,
                lower_h=e.lower_hours, upper_h=e.upper_hours,
            )  # fmt: skip
        else:
            row.update(source="no trend: life prior", covered=None)
        rows.append(row)
    return rows


def answer(row: dict, after_onset: str = "model", ql: int = 2, qo: int = 2) -> float:
    """The scored prediction of a row: after onset the chosen answer (the model, the onset
    prior at quantile index qo, or their geometric mean), before it the life prior at
    quantile index ql."""
    if row["source"] != "trend":
        return float(row["life_q"][ql])
    onset = float(row["onset_q"][qo])
    return {"model": row["model_s"], "fused": math.sqrt(row["model_s"] * onset),
            "onset prior": onset}[after_onset]  # fmt: skip


def _mean(xs: list[float]) -> float | None:
    return round(float(np.mean(xs)), 3) if xs else None


def evaluate(runs: dict[str, BearingRun], onsets: dict[str, int]) -> dict:
    names = list(runs)
    feats = {b: _readings(r) for b, r in runs.items()}
    idx = {b: [int(np.searchsorted(r.t_s, f * r.life_s, side="right") - 1) for f in DENSE]
           for b, r in runs.items()}  # fmt: skip
    sel = [DENSE.index(f) for f in FRACTIONS]
    base = {(g, b): replay_features(runs[b], Tuning(health=h), idx[b], feats[b])
            for g, h in enumerate(HI_GRID) for b in names}  # fmt: skip
    stats = {k: alarm_stats(runs[k[1]], v, onsets[k[1]]) for k, v in base.items()}
    cache: dict = {}

    def rows(g, b, others, w, q) -> list[dict]:
        """Bearing b with HI setting g, priors from others, posterior (w, q)."""
        bg = {o: base[g, o] for o in names}
        prior = learn_prior(runs, bg, others)
        key = (g, b, tuple(others), w, q)
        if key not in cache:
            tu = Tuning(health=HI_GRID[g], prior=prior,
                        posterior=PosteriorTuning(likelihood_weight=w, quantile=q))  # fmt: skip
            cache[key] = replay_features(runs[b], tu, idx[b], feats[b])
        return points(runs[b], cache[key], idx[b], DENSE, [runs[o].life_s for o in others],
                      onset_durations(runs, bg, others))  # fmt: skip

    folds = {}
    for test in names:
        train = [b for b in names if b != test]
        g = choose_hi(stats, train)
        nested = {(w, q): [r for b in train for r in rows(g, b, [o for o in train if o != b], w, q)]
                  for w in WEIGHTS for q in QUANTILES}  # fmt: skip

        def acc(rs, trend, how="model", ql=2, qo=2):
            return _mean([phm_accuracy(r["actual_s"], answer(r, how, ql, qo))
                          for r in rs if (r["source"] == "trend") == trend]) or 0.0  # fmt: skip

        w, q = max(nested, key=lambda p: (acc(nested[p], True), p[1] == 0.25))
        nq = range(len(PRIOR_QUANTILES))
        ql = max(range(len(LIFE_CANDIDATES)), key=lambda i: acc(nested[w, q], False, ql=i))
        qo = max(nq, key=lambda i: acc(nested[w, q], True, "onset prior", qo=i))
        how = max(AFTER_ONSET, key=lambda m: acc(nested[w, q], True, m, qo=qo))
        prior = learn_prior(runs, {o: base[g, o] for o in names}, train)
        pts = rows(g, test, train, w, q)
        folds[test] = {
            "hi": {"alpha": HI_GRID[g].alpha, "k_mad": HI_GRID[g].k_mad,
                   "min_level": HI_GRID[g].min_level},
            "alarms": {k: v for k, v in stats[g, test].items() if k != "lead_frac"},
            "weight": w, "quantile": q, "after_onset": how,
            "life_prior": LIFE_CANDIDATES[ql], "onset_prior_q": PRIOR_QUANTILES[qo],
            "after_onset_train_A": {m: acc(nested[w, q], True, m, qo=qo) for m in AFTER_ONSET},
            "prior_rate_per_day": round(prior.rate_per_day, 2),
            "prior_log_sd": round(prior.log_sd, 2),
            "points": [_scored(r, how, ql, qo) for r in (pts[i] for i in sel)],
        }  # fmt: skip
    return {"folds": folds, "phm": summarise(folds), "hi_default": hi_default(folds)}


def _scored(r: dict, how: str, ql: int, qo: int) -> dict:
    """A scored point: the answer per method (life prior where the model has none)."""
    out = {k: v for k, v in r.items() if k not in ("life_q", "onset_q")}
    out["life_prior_s"] = float(r["life_q"][ql])
    out["pred_s"] = answer(r, "model", ql, qo)  # what the agent says (prior: benchmark only)
    out["selected_after_onset_s"] = answer(r, how, ql, qo)
    if r["source"] == "trend":
        out["onset_prior_s"] = float(r["onset_q"][qo])
        out["fused_s"] = answer(r, "fused", ql, qo)
        out["model_pred_s"] = r["model_s"]
    return out


def hi_default(folds: dict) -> dict:
    """The most common fold choice of the health-index settings (shipped default)."""
    c = Counter(tuple(f["hi"].values()) for f in folds.values())
    (a, k, m), n = c.most_common(1)[0]
    return {"alpha": a, "k_mad": k, "min_level": m, "folds": n, "of": len(folds)}


def summarise(folds: dict) -> dict:
    """PHM scores both ways (all points; trend-only points), bound coverage, comparisons."""
    pts = [p for f in folds.values() for p in f["points"]]
    out: dict = {}
    for label, sel in [*((f"{int(f * 100)}%", [p for p in pts if p["fraction"] == f])
                         for f in FRACTIONS), ("overall", pts)]:  # fmt: skip
        tr = [p for p in sel if p["source"] == "trend"]
        out[label] = {
            "all": _mean([phm_accuracy(p["actual_s"], p["pred_s"]) for p in sel]),
            "trend_only": _mean([phm_accuracy(p["actual_s"], p["pred_s"]) for p in tr]),
            "trend_points": len(tr),
            "points": len(sel),
        }
    tr = [p for p in pts if p["source"] == "trend"]
    nt = [p for p in pts if p["source"] != "trend"]
    a = lambda ps, k: _mean([phm_accuracy(p["actual_s"], p[k]) for p in ps])  # noqa: E731
    out["bounds_covered"] = f"{sum(bool(p['covered']) for p in tr)} of {len(tr)}"
    out["compare"] = {
        "no-trend points: life prior (scored)": a(nt, "life_prior_s"),
        "trend points: model": a(tr, "model_s"),
        "trend points: onset prior": a(tr, "onset_prior_s"),
        "trend points: fused (geometric mean)": a(tr, "fused_s"),
        "trend points: LOBO-selected after-onset answer": a(tr, "selected_after_onset_s"),
        "all points: life prior everywhere": a(pts, "life_prior_s"),
    }
    return out
