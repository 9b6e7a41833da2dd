"""Time to failure on the FEMTO learning bearings, exactly as a user gets it: `edge-agent replay`.

Every number here comes from the JSON Lines that the `edge-agent replay` command prints,
run as a subprocess with only its documented flags:

    edge-agent replay BEARING.npz --rpm RPM --failure-metric accel_peak_g
        --failure-threshold 20 --prior-life-hours H[,H...] --age-hours 0 [--limit N]

The prior is the completed lives of the other bearings of the same operating condition
(leave-one-bearing-out: one life per fold for these six); nothing else is learned, tuned or
added per bearing. A cut of the recording at a point of life is `--limit N` (the first N
snapshots, as if the recording stopped there, the way the PHM 2012 challenge truncated its
test bearings); the scored estimate is the summary line's `time_to_failure` (the asset's
shortest channel). The full replay of each bearing gives the first alert, its lead time, the
severity alerts and the estimates over time (bounds coverage over the whole life).

The reported point is the agent's default (--point-tail 0.25: the geometric mean over the
posterior's lowest quarter, about the remaining L10). As a check, the full replays are also
run with --point-tail 0.1, 0.5 and 1: the tail chosen on five bearings is scored on the sixth
(point_tail_loo), to show whether the default is what the learning set would pick.

Cut points: 50, 70 and 90 % of life, and the challenge's own cut-off points: the fraction of
life at which each test bearing of the same operating condition was truncated (its observed
duration over observed duration + actual RUL, from the challenge's published test set),
applied to the learning bearings of that condition.

The over-time score is the mean A of the estimate in force at every snapshot from 50 % of
life to failure (per bearing, then averaged over the bearings), from the full replay: a
single estimate hits or misses the score's narrow window (A >= 0.5 only from 0.8 to 1.05
times the actual remaining life), so a few cut points reward luck; the over-time score is
the steadier measure of a change.

Run: .venv/bin/python benchmarks/analytics/ttf_replay.py   (prints JSON)
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from femto import BEARINGS, FEMTO_DIR, SHAFT_RPM

from agent.analysis.ttf import POINT_TAIL

REPO = Path(__file__).resolve().parents[2]
EDGE_AGENT = REPO / ".venv" / "bin" / "edge-agent"
FAILURE_G = 20.0
FRACTIONS = (0.5, 0.7, 0.9)
# The over-time score: every snapshot from this share of life to failure (a denser, less
# lucky measure than a few cut points: one estimate hits or misses PHM's narrow window).
OVER_TIME_FROM = 0.5
# A data-free reference, not the agent: remaining life = c x age, c chosen leave-one-out
# from these ratios. It knows the machine's age only, so a model that does not beat it
# shows no skill on these bearings, whatever its score.
AGE_RATIOS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
TAILS = (0.1, 0.25, 0.5, 1.0)  # --point-tail values of the leave-one-bearing-out check
# PHM 2012 test set: (observed duration s, actual RUL s) per test bearing, by condition.
CHALLENGE_TEST = {
    "1": {"Bearing1_3": (18010, 5730), "Bearing1_4": (11380, 339), "Bearing1_5": (23010, 1610),
          "Bearing1_6": (23010, 1460), "Bearing1_7": (15010, 7570)},
    "2": {"Bearing2_3": (12010, 7530), "Bearing2_4": (6110, 1390), "Bearing2_5": (20010, 3090),
          "Bearing2_6": (5710, 1290), "Bearing2_7": (1710, 580)},
    "3": {"Bearing3_3": (3510, 820)},
}  # fmt: skip


def phm_accuracy(actual: float, predicted: float) -> float:
    """PHM 2012 accuracy: Er = 100 (act - pred) / act; late (Er <= 0) costs more."""
    er = 100.0 * (actual - predicted) / actual
    return math.exp(-math.log(0.5) * er / 5.0) if er <= 0 else math.exp(math.log(0.5) * er / 20.0)


def condition(bearing: str) -> str:
    return bearing[len("Bearing")]


def command(
    bearing: str, lives_s: list[float], limit: int | None = None, tail: float | None = None
) -> list[str]:
    """The user's command line for one bearing (prior: the other lives of its condition)."""
    cmd = [
        str(EDGE_AGENT), "replay", str(FEMTO_DIR / f"{bearing}.npz"),
        "--rpm", f"{SHAFT_RPM[condition(bearing)]:g}",
        "--failure-metric", "accel_peak_g", "--failure-threshold", f"{FAILURE_G:g}",
        "--prior-life-hours", ",".join(f"{x / 3600:.4f}" for x in lives_s),
        "--age-hours", "0",
    ]  # fmt: skip
    cmd += ["--point-tail", f"{tail:g}"] if tail is not None else []
    return cmd + (["--limit", str(limit)] if limit is not None else [])


def _shown(cmd: list[str]) -> str:
    """The command as a user in the repository types it."""
    return " ".join(cmd).replace(str(REPO) + "/", "").replace(str(REPO.parent) + "/", "../")


def replay(cmd: list[str]) -> tuple[list[dict], float, float]:
    """(JSON lines, wall s, child CPU s) of one replay."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return [json.loads(x) for x in proc.stdout.splitlines()], wall, cpu


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def cut_points(bearing: str) -> list[tuple[str, float]]:
    pts = [(f"{int(f * 100)}%", f) for f in FRACTIONS]
    pts += [(f"cut-off of {name}", obs / (obs + rul))
            for name, (obs, rul) in CHALLENGE_TEST[condition(bearing)].items()]  # fmt: skip
    return pts


def asset_series(summary: dict) -> list[tuple[float, float, float, float]]:
    """(time, hours, lower, upper) of the asset (its shortest channel) at every estimate,
    each channel's figure counted down from when it was made to that time (as a record
    made then states it: agent.analysis.ttf.aged)."""
    events: dict[float, dict[str, tuple[float, float, float]]] = {}
    for ch, s in summary["estimates"].items():
        for at, h, lo, hi in zip(s["at"], s["hours"], s["lower_hours"], s["upper_hours"],
                                 strict=True):  # fmt: skip
            if h is not None:
                events.setdefault(_ts(at), {})[ch] = (h, lo, hi)
    out, current = [], {}
    for t in sorted(events):
        current.update({ch: (t, *v) for ch, v in events[t].items()})
        out.append((t, *min(told(e, t) for e in current.values())))
    return out


def told(entry: tuple[float, float, float, float], t: float) -> tuple[float, float, float]:
    """(hours, lower, upper) of an estimate made at entry[0], as of t (s): what a record or
    the replay's estimate line at t says (less the time since, none under 0)."""
    made, *figures = entry
    gone_h = max(t - made, 0.0) / 3600.0
    h, lo, hi = (max(x - gone_h, 0.0) for x in figures)
    return h, lo, hi


def over_time_score(series: list[tuple[float, float, float, float]], t_s: np.ndarray) -> float:
    """Mean PHM accuracy of the estimate in force at every snapshot from OVER_TIME_FROM of
    life to the last one before failure (the replay's own estimates over time, as of that
    snapshot)."""
    life_s, start = float(t_s[-1]), _ts("2026-01-01T00:00:00Z")
    times = np.asarray([s[0] for s in series])
    scores = []
    for t in t_s[(t_s >= OVER_TIME_FROM * life_s) & (t_s < life_s)]:
        at = start + float(t)
        k = int(np.searchsorted(times, at + 1e-6, side="right") - 1)
        if k >= 0:
            scores.append(phm_accuracy((life_s - float(t)) / 3600.0, told(series[k], at)[0]))
    return float(np.mean(scores)) if scores else 0.0


def evaluate_bearing(bearing: str) -> dict:
    t_s = np.load(FEMTO_DIR / f"{bearing}.npz")["t_s"]
    life_s = float(t_s[-1])
    start = _ts("2026-01-01T00:00:00Z")  # replay's default --start
    lives = _lives(bearing)
    full_cmd = command(bearing, lives)
    lines, wall, cpu = replay(full_cmd)
    summary = lines[-1]
    alerts = [x for x in lines if x.get("schema")]
    series = asset_series(summary)
    covered = [lo <= (life_s - (t - start)) / 3600.0 <= hi for t, _, lo, hi in series]
    first = summary["first_alert"]
    points = []
    for label, f in cut_points(bearing):
        i = int(np.searchsorted(t_s, f * life_s, side="right") - 1)
        lines_cut, _, _ = replay(command(bearing, lives, limit=i + 1))
        ttf = lines_cut[-1]["time_to_failure"]
        actual_h = (life_s - float(t_s[i])) / 3600.0
        at = _ts(lines_cut[-1]["recording"]["last"])
        full = [s for s in series if s[0] <= at]
        points.append({
            "point": label, "fraction": round(f, 4), "snapshots": i + 1,
            "age_h": round(float(t_s[i]) / 3600.0, 4),
            "actual_h": round(actual_h, 4), "hours": ttf["hours"],
            "lower_hours": ttf["lower_hours"], "upper_hours": ttf["upper_hours"],
            "model": ttf["model"], "A": round(phm_accuracy(actual_h, ttf["hours"]), 4),
            "covered": ttf["lower_hours"] <= actual_h <= ttf["upper_hours"],
            # rounding: the line and the series each give 5 decimals
            "same_as_full_replay": bool(full) and abs(told(full[-1], at)[0] - ttf["hours"]) < 2e-5,
            "command": _shown(command(bearing, lives, limit=i + 1)),
        })  # fmt: skip
    return {
        "life_h": round(life_s / 3600, 4),
        "prior_life_hours": [round(x / 3600, 4) for x in lives],
        "command": _shown(full_cmd),
        "replay_wall_s": round(wall, 2),
        "replay_cpu_s": round(cpu, 2),
        "snapshots": summary["recording"]["snapshots"],
        "skipped": summary["recording"]["skipped"],
        "first_alert": first,
        "alerts_raised": summary["alerts_raised"],
        "severity_alerts": sum(a["kind"] == "severity" for a in alerts),
        "flaps": summary["flaps"],
        "estimates_over_time": len(series),
        "covered_over_time": round(float(np.mean(covered)), 3) if covered else None,
        "phm_over_time": round(over_time_score(series, t_s), 4),
        "points": points,
    }


def _lives(bearing: str) -> list[float]:
    return [float(np.load(FEMTO_DIR / f"{o}.npz")["t_s"][-1]) for o in BEARINGS
            if o != bearing and condition(o) == condition(bearing)]  # fmt: skip


def tail_scores(bearing: str, tail: float) -> tuple[list[float], float]:
    """PHM accuracy at each cut point with `--point-tail tail`, from one full replay, and
    the over-time score of that replay."""
    scores, _, over_time = _scored(bearing, tail, _lives(bearing))
    return scores, over_time


def _scored(bearing: str, tail: float, lives: list[float]) -> tuple[list[float], list[bool], float]:
    """PHM accuracy and bounds coverage at each cut point, from one full replay with these
    prior lives (a cut replay gives the full replay's estimate at that time: evaluate()
    checks it), and the over-time score of that replay."""
    t_s = np.load(FEMTO_DIR / f"{bearing}.npz")["t_s"]
    life_s, start = float(t_s[-1]), _ts("2026-01-01T00:00:00Z")
    lines, _, _ = replay(command(bearing, lives, tail=tail))
    series = asset_series(lines[-1])
    scores, covered = [], []
    for _, f in cut_points(bearing):
        i = int(np.searchsorted(t_s, f * life_s, side="right") - 1)
        at = start + float(t_s[i])
        hours, lo, hi = told([s for s in series if s[0] <= at + 1e-6][-1], at)
        actual = (life_s - float(t_s[i])) / 3600.0
        scores.append(phm_accuracy(actual, hours))
        covered.append(lo <= actual <= hi)
    return scores, covered, over_time_score(series, t_s)


def larger_fleet() -> dict:
    """The same command with a larger fleet: the lives of all five other bearings as the
    prior (any condition, so a mixed class: five lives per fold instead of one)."""
    runs = [
        _scored(b, POINT_TAIL, [float(np.load(FEMTO_DIR / f"{o}.npz")["t_s"][-1])
                                for o in BEARINGS if o != b])
        for b in BEARINGS
    ]  # fmt: skip
    return {
        "score": round(float(np.mean([a for r in runs for a in r[0]])), 3),
        "over_time": round(float(np.mean([r[2] for r in runs])), 3),
        "bounds_coverage": round(float(np.mean([c for r in runs for c in r[1]])), 3),
    }


def age_rule_reference(per: dict) -> dict:
    """The data-free reference (AGE_RATIOS): its ratio chosen on five bearings (best mean A
    over their cut points), scored on the sixth; and each ratio's over-time score."""
    ages = {b: np.load(FEMTO_DIR / f"{b}.npz")["t_s"] for b in per}
    pts = {c: {b: [phm_accuracy(p["actual_h"], c * p["age_h"]) for p in x["points"]]
               for b, x in per.items()} for c in AGE_RATIOS}  # fmt: skip
    held = []
    for b in per:
        train = {c: np.mean([a for o in per if o != b for a in s[o]]) for c, s in pts.items()}
        best = max(AGE_RATIOS, key=lambda c: round(float(train[c]), 4))
        held += pts[best][b]

    def over_time(c: float) -> float:
        def series(t_s: np.ndarray) -> list[tuple[float, float, float, float]]:
            start = _ts("2026-01-01T00:00:00Z")
            return [(start + float(t), c * float(t) / 3600.0, 0.0, 0.0) for t in t_s]

        return float(np.mean([over_time_score(series(t_s), t_s) for t_s in ages.values()]))

    return {
        "loo_score": round(float(np.mean(held)), 3),
        "score_by_ratio": {
            str(c): round(float(np.mean([a for s in pts[c].values() for a in s])), 3)
            for c in AGE_RATIOS
        },
        "over_time_by_ratio": {str(c): round(over_time(c), 3) for c in AGE_RATIOS},
    }


def point_tail_loo(default: dict[str, tuple[list[float], float]]) -> dict:
    """The point's tail chosen on five bearings (best mean A), scored on the sixth: is the
    shipped default what the learning set would choose, and what does choosing it earn?
    Also the over-time score (mean over bearings) of each tail."""
    runs = {t: {b: tail_scores(b, t) for b in BEARINGS} for t in TAILS if t != POINT_TAIL}
    runs[POINT_TAIL] = default
    scores = {t: {b: x[0] for b, x in r.items()} for t, r in runs.items()}
    folds, held = {}, []
    for b in BEARINGS:
        train = {t: float(np.mean([a for o in BEARINGS if o != b for a in s[o]]))
                 for t, s in scores.items()}  # fmt: skip
        best = max(sorted(train), key=lambda t: round(train[t], 4))
        folds[b] = {"tail": best, "train_A": round(train[best], 3),
                    "held_out_A": round(float(np.mean(scores[best][b])), 3)}  # fmt: skip
        held += scores[best][b]
    by_tail = {t: [a for s in scores[t].values() for a in s] for t in sorted(scores)}
    return {
        "score_by_tail": {str(t): round(float(np.mean(a)), 3) for t, a in by_tail.items()},
        "over_time_by_tail": {
            str(t): round(float(np.mean([x[1] for x in runs[t].values()])), 3) for t in sorted(runs)
        },
        "folds": folds,
        "loo_score": round(float(np.mean(held)), 3),
    }


def evaluate() -> dict:
    t0 = time.perf_counter()
    per = {b: evaluate_bearing(b) for b in BEARINGS}
    pts = [p for b in per.values() for p in b["points"]]

    def mean(xs: list[float]) -> float | None:
        return round(float(np.mean(xs)), 3) if xs else None

    score = {label: mean([p["A"] for p in pts if p["point"] == label])
             for label in ("50%", "70%", "90%")}  # fmt: skip
    score["challenge cut-offs"] = mean([p["A"] for p in pts if p["point"].startswith("cut-off")])
    score["50/70/90 %"] = mean([p["A"] for p in pts if p["point"].endswith("%")])
    score["all points"] = mean([p["A"] for p in pts])
    over_time = [b["covered_over_time"] for b in per.values() if b["covered_over_time"] is not None]
    loo = point_tail_loo(
        {b: ([p["A"] for p in x["points"]], x["phm_over_time"]) for b, x in per.items()}
    )
    return {
        "bearings": per,
        "phm_score": score,
        "phm_over_time": mean([b["phm_over_time"] for b in per.values()]),
        "bounds_coverage_scored_points": mean([float(p["covered"]) for p in pts]),
        "bounds_coverage_over_time_mean": mean(over_time),
        "cut_replays_match_full_replay": all(p["same_as_full_replay"] for p in pts),
        "severity_alerts_total": sum(b["severity_alerts"] for b in per.values()),
        "point_tail": POINT_TAIL,
        "point_tail_loo": loo,
        "age_rule_reference": age_rule_reference(per),
        "larger_fleet": larger_fleet(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "runtime_s": round(time.perf_counter() - t0, 1),
    }


if __name__ == "__main__":
    print(json.dumps(evaluate(), indent=1))
