"""`edge-agent replay` of one FEMTO bearing, as a user runs it: the .npz file and the same
recording in the original PRONOSTIA CSV layout (one acc_NNNNN.csv per snapshot, no header),
written to a temporary folder from the .npz (never into the repository).

Run: .venv/bin/python benchmarks/replay_speed.py [--bearing Bearing1_1] [--runs 3]
Prints JSON: wall and CPU seconds of the whole command (start-up included) per run, their
median, and whether both inputs give the same summary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "analytics"))
from femto import FEMTO_DIR, SHAFT_RPM

REPO = Path(__file__).resolve().parents[1]
FIRST_S = 9 * 3600 + 39 * 60 + 39  # time of day of the first snapshot (the folder's clock)


def write_csv(npz: Path, folder: Path) -> int:
    """The recording as PRONOSTIA CSV files: hour, minute, second, microsecond, h g, v g."""
    with np.load(npz) as d:
        acc, scale, t_s, fs = d["acc"], float(d["scale_g"]), d["t_s"], float(d["fs_hz"])
    offs = np.arange(acc.shape[1]) / fs
    for i in range(acc.shape[0]):
        t = FIRST_S + float(t_s[i]) + offs
        us = np.round((t % 1.0) * 1e6).astype(int)
        sec = np.floor(t).astype(int)
        rows = np.column_stack((sec // 3600 % 24, sec // 60 % 60, sec % 60, us))
        h, v = acc[i].T * scale
        lines = [f"{a},{b},{c},{u},{x:.3f},{y:.3f}"
                 for (a, b, c, u), x, y in zip(rows.tolist(), h, v, strict=True)]  # fmt: skip
        (folder / f"acc_{i + 1:05d}.csv").write_text("\n".join(lines) + "\n")
    return int(acc.shape[0])


def run(cmd: list[str]) -> tuple[float, float, dict]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, json.loads(out.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bearing", default="Bearing1_1")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    npz = FEMTO_DIR / f"{a.bearing}.npz"
    flags = ["--rpm", f"{SHAFT_RPM[a.bearing[len('Bearing')]]:g}", "--failure-metric",
             "accel_peak_g", "--failure-threshold", "20", "--prior-life-hours", "2.4167",
             "--start", "2026-01-01T00:00:00Z"]  # fmt: skip
    exe = str(REPO / ".venv" / "bin" / "edge-agent")
    result: dict = {"bearing": a.bearing, "load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / a.bearing
        folder.mkdir()
        result["snapshots"] = write_csv(npz, folder)
        # the npz starts at --start; the CSV folder at 09:39:39 that day: same recording
        npz_flags = [*flags[:-1], "2026-01-01T09:39:39Z"]
        inputs = {"npz": [exe, "replay", str(npz), *npz_flags],
                  "pronostia_csv": [exe, "replay", str(folder), *flags]}  # fmt: skip
        summaries = {}
        for name, cmd in inputs.items():
            runs = [run(cmd) for _ in range(a.runs)]
            summaries[name] = runs[-1][2]
            walls, cpus = [round(r[0], 2) for r in runs], [round(r[1], 2) for r in runs]
            result[name] = {"wall_s": walls, "cpu_s": cpus,
                            "median_wall_s": statistics.median(walls),
                            "median_cpu_s": statistics.median(cpus)}  # fmt: skip
    s = [summaries[k] for k in inputs]
    result["same_first_alert"] = s[0]["first_alert"] == s[1]["first_alert"]
    result["same_recording_span"] = s[0]["recording"] == s[1]["recording"]
    result["load_average_end"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
