"""Monitor.update throughput for feature readings (the smart-sensor path), one core.

Run: .venv/bin/python benchmarks/monitor_throughput.py   (prints JSON)
Readings: one asset, one sensor, two channels, 1 s apart, Banner-like features with noise
and a slow drift, so the baseline is learned, bins close and estimates are computed.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import numpy as np

from agent.analysis.monitor import Monitor
from agent.config import Config
from drivers.reading import Reading

N = 100_000


def measure(n: int = N) -> dict:
    cfg = Config.model_validate(
        {
            "gateway": {"id": "bench"},
            "assets": [
                {
                    "id": "a",
                    "machine": {
                        "standard": "iso10816-3",
                        "group": 2,
                        "foundation": "rigid",
                        "rpm": 1480,
                    },
                }
            ],
            "sensors": [{"id": "s", "asset": "a", "modbus": {"host": "127.0.0.1"}}],
            "store": {"path": "/nonexistent/bench.db"},
        }
    )
    rng = np.random.default_rng(3)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    noise = rng.normal(1.0, 0.03, (n, 4))
    drift = np.linspace(1.0, 1.5, n)
    readings = [
        Reading("s", "zx"[i % 2], t0 + timedelta(seconds=i // 2),
                {"velocity_rms_mm_s": 1.2 * noise[i, 0] * drift[i],
                 "accel_rms_g": 0.3 * noise[i, 1] * drift[i],
                 "hf_accel_rms_g": 0.2 * noise[i, 2] * drift[i],
                 "accel_peak_g": 1.1 * noise[i, 3] * drift[i], "kurtosis": 3.0})
        for i in range(n)
    ]  # fmt: skip
    mon = Monitor(cfg)
    drafts = writes = 0
    start = time.perf_counter()
    for r in readings:
        u = mon.update(r)
        drafts += len(u.drafts)
        writes += len(u.state)
    dt = time.perf_counter() - start
    return {"readings": n, "updates_per_s": round(n / dt), "us_per_update": round(dt / n * 1e6, 2),
            "drafts": drafts, "state_writes": writes}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
