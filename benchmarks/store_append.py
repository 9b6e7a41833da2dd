"""Outbox append throughput: group commit vs one transaction per alert, side by side.

Both use the real Outbox (WAL, synchronous=FULL, fsync per commit) on a temporary file in
--dir (default: the system temp dir; point it at the gateway's real disk to measure that).
"Group commit": --concurrency producers append one alert each, concurrently, so the
writer thread commits many per transaction. "One per transaction": the same appends, one
after another, so every alert waits for its own fsync. Prints one JSON object.

    python benchmarks/store_append.py [--count 2000] [--concurrency 64] [--max-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.records import AlertDraft, AssetRef, SensorRef, Severity
from agent.store import Outbox


def _draft(i: int) -> AlertDraft:
    return AlertDraft(
        asset=AssetRef("press-7", "Press 7 main motor", 1 + i % 3),
        sensor=SensorRef("m1-de", "z", "modbus"),
        kind="severity",
        state="raised",
        detected_at=datetime.now(UTC),
        severity=Severity(
            "warning", "C", "ISO 10816-3 group 2 rigid", "velocity_rms_mm_s", 4.9, 4.5
        ),
        evidence={"features": {"kurtosis": 5.8, "accel_rms_g": 0.41}},
    )


async def _serial(ob: Outbox, count: int, deadline: float) -> int:
    done = 0
    while done < count and time.monotonic() < deadline:
        await ob.append([_draft(done)])
        done += 1
    return done


async def _grouped(ob: Outbox, count: int, concurrency: int, deadline: float) -> int:
    done = 0

    async def producer() -> None:
        nonlocal done
        while done < count and time.monotonic() < deadline:
            done += 1  # claimed before the await: exactly `count` appends in total
            await ob.append([_draft(done)])

    await asyncio.gather(*(producer() for _ in range(concurrency)))
    return done


async def _measure(
    mode: str, directory: Path, count: int, concurrency: int, max_s: float
) -> dict[str, Any]:
    path = directory / f"bench-{mode}.db"
    async with Outbox(path, gateway_id="bench", max_bytes=1 << 32, first_seq=1) as ob:
        t0 = time.monotonic()
        deadline = t0 + max_s
        if mode == "group_commit":
            n = await _grouped(ob, count, concurrency, deadline)
        else:
            n = await _serial(ob, count, deadline)
        elapsed = time.monotonic() - t0
        c = ob.counters
        stats = await ob.stats()
    assert stats.pending == n and stats.last_seq == n, "lost or extra alerts"
    return {
        "appends": n,
        "seconds": round(elapsed, 3),
        "appends_per_s": round(n / elapsed, 1),
        "transactions": c.transactions,
        "alerts_per_transaction": round(n / max(c.transactions, 1), 1),
        "mean_ack_ms": round(
            1000 * elapsed / n * (concurrency if mode == "group_commit" else 1), 3
        ),
        "hit_time_limit": n < count,
    }


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=2000, help="appends per mode (bounded)")
    p.add_argument("--concurrency", type=int, default=64, help="producers for group commit")
    p.add_argument("--max-seconds", type=float, default=20.0, help="time bound per mode")
    p.add_argument("--dir", type=Path, default=None, help="directory for the database files")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        d = Path(tmp)
        one = await _measure("one_per_transaction", d, a.count, 1, a.max_seconds)
        group = await _measure("group_commit", d, a.count, a.concurrency, a.max_seconds)
    print(
        json.dumps(
            {
                "benchmark": "store_append",
                "sqlite": sqlite3.sqlite_version,
                "python": platform.python_version(),
                "settings": {
                    "journal_mode": "WAL",
                    "synchronous": "FULL",
                    "count": a.count,
                    "concurrency": a.concurrency,
                    "dir": str(a.dir or tempfile.gettempdir()),
                },
                "one_per_transaction": one,
                "group_commit": group,
                "speedup": round(group["appends_per_s"] / one["appends_per_s"], 2),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
