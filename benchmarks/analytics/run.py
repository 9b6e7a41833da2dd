"""Analytics benchmark: velocity accuracy, FEMTO alarms and time to failure, feature cost.

Run: .venv/bin/python benchmarks/analytics/run.py   (prints JSON, rewrites README.md here)
Runtime: about 4 min on 2 shared cores; all FEMTO snapshots are used (no decimation). Time
to failure comes from `edge-agent replay` itself (ttf_replay.py, also runnable alone), with
when the recordings first show degradation (indicator_onsets.py, also runnable alone).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evaluate as ev
import femto
import indicator_onsets
import monitor_eval
import ttf_replay
from report import write_report

from agent.analysis.bearing import FEMTO_BEARING, fault_frequencies
from agent.analysis.features import velocity_band_for_rpm, waveform_features

G = 9806.65


def velocity_accuracy() -> dict:
    """Calibrated 1 g-peak sines through velocity RMS (2 s records at 25.6 kHz)."""
    fs, n = 25600.0, 51200
    t = np.arange(n) / fs
    rows = []
    for f, band in [
        *((f, (10.0, 1000.0)) for f in (5, 10, 20, 50, 100, 200, 500, 1000, 2000)),
        *((f, velocity_band_for_rpm(300)) for f in (1, 2, 5)),
    ]:
        x = np.sin(2 * math.pi * f * t + 0.3)
        got = waveform_features(x, fs, band_hz=band)["velocity_rms_mm_s"]
        expected = G / math.sqrt(2) / (2 * math.pi * f)
        ratio = got / expected
        in_band = band[0] <= f <= band[1]
        rows.append(
            {
                "freq_hz": f,
                "band_hz": list(band),
                "expected_mm_s": round(expected, 4),
                "measured_mm_s": round(got, 4),
                "error_pct" if in_band else "attenuation_db": (
                    round(100 * (ratio - 1), 3)
                    if in_band
                    else (round(20 * math.log10(ratio), 1) if ratio > 0 else -math.inf)
                ),
            }
        )
    return {"fs_hz": fs, "n": n, "rows": rows}


def feature_cost() -> dict:
    """Microseconds per 2560-sample snapshot through all features (envelope included)."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.3, 2560)
    waveform_features(x, 25600.0, shaft_hz=30.0, bearing=FEMTO_BEARING)  # warm the cache
    reps = 3000
    t0 = time.perf_counter()
    for _ in range(reps):
        waveform_features(x, 25600.0, shaft_hz=30.0, bearing=FEMTO_BEARING)
    us = (time.perf_counter() - t0) / reps * 1e6
    return {"us_per_snapshot": round(us, 1), "snapshots_per_s": round(1e6 / us)}


def zone_boundaries() -> dict:
    """Every ISO table through agent.analysis.severity: a value on a boundary is the upper
    zone, one just below it the lower zone."""
    from agent.analysis.severity import zone_table
    from agent.config import Iso10816_1, Iso10816_3

    machines = [
        Iso10816_3(standard="iso10816-3", group=g, foundation=f, rpm=1480)
        for g in (1, 2)
        for f in ("rigid", "flexible")
    ] + [Iso10816_1.model_validate({"standard": "iso10816-1", "class": c, "rpm": 1480})
         for c in ("I", "II", "III", "IV")]  # fmt: skip
    rows, ok = [], True
    for m in machines:
        t = zone_table(m)
        exact = all(
            t.zone(b) == z and t.zone(math.nextafter(b, 0.0)) == prev
            for b, z, prev in ((t.ab, "B", "A"), (t.bc, "C", "B"), (t.cd, "D", "C"))
        )
        ok &= exact
        rows.append({"standard": t.standard, "ab": t.ab, "bc": t.bc, "cd": t.cd, "exact": exact})
    return {"all_exact": ok, "rows": rows}


def monitor_throughput() -> dict:
    """Monitor.update calls per second for feature readings (smart-sensor path), one core."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from monitor_throughput import measure

    return measure()


def femto_alarms(runs: dict, onsets: dict) -> dict:
    """Leave-one-bearing-out baseline alarms with debounce."""
    table = ev.alarm_tables(runs, onsets)
    names = list(runs)
    folds = {}
    for test in names:
        train = [b for b in names if b != test]
        chosen = ev.choose_levels(table, runs, onsets, train)
        out = ev.combined_outcome(table, chosen, test, onsets[test])
        run = runs[test]
        per_feature = {}
        for f, kr in chosen.items():
            if kr is None:
                continue
            o = ev.alarm_outcome(*table[f, kr[0], kr[1], test], onsets[test])
            per_feature[f] = {
                "false_alarms": o.false_alarms,
                "lead_min": None
                if o.detect_idx is None
                else round((run.life_s - run.t_s[o.detect_idx]) / 60, 1),
            }
        folds[test] = {
            "chosen": {f: None if kr is None else list(kr) for f, kr in chosen.items()},
            "false_alarms": out.false_alarms,
            "lead_min": None
            if out.detect_idx is None
            else round((run.life_s - run.t_s[out.detect_idx]) / 60, 1),
            "onset_lead_min": round((run.life_s - run.t_s[onsets[test]]) / 60, 1),
            "per_feature": per_feature,
        }
    all_six = ev.choose_levels(table, runs, onsets, names)
    return {"folds": folds, "chosen_on_all_six": all_six}


def main() -> int:
    t0 = time.perf_counter()
    result: dict = {
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "fault_frequency_multiples": {
            k: round(v, 4) for k, v in fault_frequencies(1.0, FEMTO_BEARING).items()
        },
        "velocity_accuracy": velocity_accuracy(),
        "cost": feature_cost(),
        "zone_boundaries": zone_boundaries(),
        "monitor_throughput": monitor_throughput(),
    }
    if femto.available():
        t1 = time.perf_counter()
        runs = {b: femto.load_bearing(b) for b in femto.BEARINGS}
        load_s = time.perf_counter() - t1
        onsets = {b: ev.degradation_onset(r) for b, r in runs.items()}
        result["femto"] = {
            "feature_extraction_s": round(load_s, 1),
            "bearings": {
                b: {
                    "snapshots": int(r.t_s.shape[0]),
                    "life_h": round(r.life_s / 3600, 3),
                    "onset_fraction": round(onsets[b] / r.t_s.shape[0], 3),
                    "onset_to_failure_min": round((r.life_s - r.t_s[onsets[b]]) / 60, 1),
                }
                for b, r in runs.items()
            },
            "alarms": femto_alarms(runs, onsets),
            "monitor": monitor_eval.evaluate(runs, onsets),
        }
        result["ttf"] = ttf_replay.evaluate()
        result["onsets"] = indicator_onsets.evaluate()
    else:
        result["femto"] = {"skipped": f"{femto.FEMTO_DIR} not present"}
    result["runtime_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=1, default=str))
    write_report(result, Path(__file__).resolve().parent / "README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
