"""Agent memory during a backend outage, then the drain when the backend comes back.

The real pipeline pieces in one process: an Outbox on a temporary SQLite file, an
HttpUplink pointed at a loopback port where nothing listens (the outage), and producers
appending alert drafts in batches (group commit, as the monitor would under an alert
storm). Every --sample-every alerts the process's RSS (/proc/self/status VmRSS) and
tracemalloc's current size are sampled. The claim under test: memory stays flat during an
outage because the backlog stays on disk, so RSS and traced memory grow by (close to)
nothing per 1000 alerts after warm-up, while the database grows.

Then a BackendServer starts on that same port and the drain is measured: time to the
first delivery (the uplink's back-off), time until nothing is pending, alerts/s. A few
live tier-1 alerts are appended mid-drain, once the tier-1 backlog is out. The backend's
copy is checked: every alert exactly once (duplicates counted separately), the backlog in
(tier, seq) order (tier 1 first, oldest first within a tier), and the live tier-1 alerts
ahead of the older tier-2/3 backlog. Prints one JSON object.

    python benchmarks/outage_memory.py [--count 50000] [--batch 100] [--max-seconds 25]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import platform
import socket
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import HttpUplink as HttpUplinkConfig
from agent.records import AlertDraft, AssetRef, SensorRef, Severity
from agent.store import Outbox
from agent.uplink import HttpUplink
from simulators.backend import MAX_LIST, BackendServer

T0 = datetime(2026, 11, 21, 8, 15, 2, 123000, tzinfo=UTC)
LIVE_TIER1 = 5  # live tier-1 alerts appended mid-drain
MAX_SAMPLES = 10_000  # bound on the sample list
POLL_S = 0.05


def draft(i: int, tier: int) -> AlertDraft:
    """A severity alert like tests/agent/store/_drafts.py builds, detected i s after T0."""
    aid = f"asset-t{tier}-{i % 7}"
    return AlertDraft(
        asset=AssetRef(aid, f"Asset {aid}", tier),
        sensor=SensorRef("m1-de", "z", "modbus"),
        kind="severity",
        state="raised",
        detected_at=T0 + timedelta(seconds=i),
        severity=Severity(
            "warning", "C", "ISO 10816-3 group 2 rigid", "velocity_rms_mm_s", 4.9, 4.5
        ),
        evidence={"features": {"kurtosis": 5.8, "accel_rms_g": 0.41, "crest_factor": 4.2}},
    )


def rss_bytes() -> int:
    """This process's resident set size (VmRSS), bytes."""
    # A /proc read returns in microseconds: harmless on the event loop.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def free_port() -> int:
    """A loopback port nothing listens on (bound, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slope_per_1000(points: list[tuple[int, int]]) -> float | None:
    """Least-squares slope of bytes over alerts, in bytes per 1000 alerts."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return round(1000.0 * sxy / sxx, 1)


def mib(n: int | float | None) -> float | None:
    return None if n is None else round(n / 2**20, 2)


class Sampler:
    """RSS and traced memory against the number of alerts appended so far."""

    def __init__(self) -> None:
        self.samples: list[dict[str, int]] = []

    def take(self, alerts: int) -> dict[str, int]:
        cur, peak = tracemalloc.get_traced_memory() if tracemalloc.is_tracing() else (0, 0)
        s = {"alerts": alerts, "rss": rss_bytes(), "traced": cur, "traced_peak": peak}
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(s)
        return s

    def at(self, alerts: int) -> dict[str, int]:
        """The first sample taken at or after `alerts` appended."""
        for s in self.samples:
            if s["alerts"] >= alerts:
                return s
        return self.samples[-1]


async def produce(
    ob: Outbox, a: argparse.Namespace, sampler: Sampler, deadline: float
) -> tuple[int, dict[int, int]]:
    """Append up to a.count alerts in batches of a.batch from a.producers producers."""
    claimed = 0
    appended = 0
    next_sample = a.sample_every
    tiers: dict[int, int] = {1: 0, 2: 0, 3: 0}

    async def producer() -> None:
        nonlocal claimed, appended, next_sample
        while claimed < a.count and time.monotonic() < deadline:
            start = claimed
            n = min(a.batch, a.count - start)
            claimed += n  # claimed before the await: exactly a.count in total
            drafts = [draft(i, 1 + i % 3) for i in range(start, start + n)]
            for i in range(start, start + n):
                tiers[1 + i % 3] += 1
            await ob.append(drafts)  # the returned records are dropped, as the runtime does
            del drafts
            appended += n
            if appended >= next_sample:
                next_sample += a.sample_every
                sampler.take(appended)

    await asyncio.gather(*(producer() for _ in range(a.producers)))
    return appended, tiers


async def seconds_until(cond: Callable[[], bool], limit_s: float) -> float | None:
    """Seconds until `cond()` held (polled), or None if not within limit_s."""
    t0 = time.monotonic()
    while (waited := time.monotonic() - t0) < limit_s:
        if cond():
            return waited
        await asyncio.sleep(POLL_S)
    return None


async def backend_alerts(backend: BackendServer, limit: int) -> list[dict[str, Any]]:
    """Everything the backend stored, in receipt order (bounded paging)."""
    out: list[dict[str, Any]] = []
    after = 0
    for _ in range(limit // MAX_LIST + 2):
        page = await backend.alerts(after)
        if not page:
            break
        out.extend(r["alert"] for r in page)
        after = page[-1]["receipt"]
    return out


async def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/alerts"
    cfg = HttpUplinkConfig(
        url=url, batch_size=a.uplink_batch, timeout_s=5.0, max_backoff_s=a.max_backoff_s
    )
    sampler = Sampler()
    db = tmp / "outbox.db"
    async with Outbox(db, gateway_id="bench", max_bytes=1 << 34) as ob:
        uplink = HttpUplink(cfg, ob, name="bench")
        up_task = asyncio.create_task(uplink.run(), name="uplink")
        # Warm up the code paths (imports, first connection refusal) before the baseline.
        await asyncio.sleep(0.5)
        gc.collect()
        start = sampler.take(0)
        t0 = time.monotonic()
        appended, tiers = await produce(ob, a, sampler, t0 + a.max_seconds)
        produce_s = time.monotonic() - t0
        gc.collect()
        end_sample = sampler.take(appended)  # after a collection: what is really retained
        outage_stats = await ob.stats()
        outage_status = {
            "attempts": uplink.status.attempts_total,
            "failures": uplink.status.failures_total,
            "delivered": uplink.status.delivered_total,
            "last_error": uplink.status.last_error,
        }

        warm = max(1, appended // 10)
        after_warm = [(s["alerts"], s["rss"]) for s in sampler.samples if s["alerts"] >= warm]
        after_warm_t = [(s["alerts"], s["traced"]) for s in sampler.samples if s["alerts"] >= warm]

        # tracemalloc slows every allocation several fold; the drain is timed without it.
        tracing = tracemalloc.is_tracing()
        tracemalloc.stop()

        # --- the backend comes back on the same port ---------------------------------
        backend = BackendServer(port=port, db=tmp / "backend.db")
        drain: dict[str, Any] = {}
        async with backend:
            tb = time.monotonic()
            t_first = await seconds_until(
                lambda: uplink.status.delivered_total > 0, a.drain_max_seconds
            )
            drain_rss_peak = rss_bytes()
            live_seqs: list[int] = []
            live_at_delivered: list[int] = []
            t_end = tb + a.drain_max_seconds
            # Wait for the tier-1 backlog to be out, then add live tier-1 alerts.
            await seconds_until(
                lambda: uplink.status.delivered_total > tiers[1], max(0.0, t_end - time.monotonic())
            )
            if uplink.status.delivered_total < appended:
                delivered_then = uplink.status.delivered_total
                recs = await ob.append([draft(appended + k, 1) for k in range(LIVE_TIER1)])
                live_seqs = [r["seq"] for r in recs]
                live_at_delivered = [delivered_then] * len(live_seqs)
            total = appended + len(live_seqs)
            while time.monotonic() < t_end:
                drain_rss_peak = max(drain_rss_peak, rss_bytes())
                if (await ob.stats()).pending == 0:
                    break
                await asyncio.sleep(POLL_S)
            drain_s = time.monotonic() - tb
            final = await ob.stats()
            bstats = await backend.stats()
            stored = await backend_alerts(backend, total)
            up_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await up_task

        seqs = [r["seq"] for r in stored]
        ids = [r["alert_id"] for r in stored]
        live = set(live_seqs)
        backlog_order = [
            (int(r["asset"]["tier"]), r["seq"]) for r in stored if r["seq"] not in live
        ]
        in_order = backlog_order == sorted(backlog_order)
        # How far behind its append each live alert landed (in alerts received after).
        pos = {s: i for i, s in enumerate(seqs)}
        live_lag = [
            pos[s] - d for s, d in zip(live_seqs, live_at_delivered, strict=True) if s in pos
        ]
        first_tier23 = next(
            (i for i, r in enumerate(stored) if r["asset"]["tier"] != 1 and r["seq"] not in live),
            None,
        )
        live_before_older_t23 = all(
            any(r["asset"]["tier"] != 1 and r["seq"] < s for r in stored[pos[s] + 1 :])
            for s in live_seqs
            if s in pos
        )
        deliver_s = drain_s - (t_first or 0.0)
        delivered = total - final.pending
        drain = {
            "backend_up_to_first_delivery_s": None if t_first is None else round(t_first, 3),
            "backend_up_to_all_delivered_s": round(drain_s, 3),
            "first_to_last_delivery_s": round(deliver_s, 3),
            "delivered": delivered,
            "alerts_per_s": round(delivered / deliver_s, 1) if deliver_s > 0 else None,
            "hit_time_limit": final.pending > 0,
            "pending_after": final.pending,
            "rss_peak_mib": mib(drain_rss_peak),
            "uplink_batch_size": a.uplink_batch,
            "posts": bstats.get("posts"),
        }
        check = {
            "appended": appended,
            "live_tier1_appended_mid_drain": len(live_seqs),
            "expected_at_backend": total,
            "backend_stored": bstats.get("stored"),
            "backend_accepted": bstats.get("accepted"),
            "backend_duplicates": bstats.get("duplicates"),
            "distinct_alert_ids": len(set(ids)),
            "missing_seqs": len(set(range(1, total + 1)) - set(seqs)),
            "exactly_once": (
                bstats.get("stored") == total
                and len(set(ids)) == total
                and set(seqs) == set(range(1, total + 1))
            ),
            "backlog_in_tier_then_seq_order": in_order,
            "first_tier2or3_receipt_index": first_tier23,
            "tier1_backlog": tiers[1],
            "live_tier1_received_within_alerts_of_append": live_lag,
            "live_tier1_ahead_of_older_tier2_3": live_before_older_t23,
        }

    rss = {
        "start_mib": mib(start["rss"]),
        "at_10pct_mib": mib(sampler.at(appended // 10)["rss"]),
        "at_50pct_mib": mib(sampler.at(appended // 2)["rss"]),
        "at_100pct_mib": mib(sampler.at(appended)["rss"]),
        "end_after_gc_mib": mib(end_sample["rss"]),
        "growth_start_to_end_mib": mib(end_sample["rss"] - start["rss"]),
        "growth_10pct_to_end_mib": mib(end_sample["rss"] - sampler.at(appended // 10)["rss"]),
        "slope_bytes_per_1000_alerts_after_warmup": slope_per_1000(after_warm),
    }
    traced = {
        "start_mib": mib(start["traced"]),
        "at_10pct_mib": mib(sampler.at(appended // 10)["traced"]),
        "at_50pct_mib": mib(sampler.at(appended // 2)["traced"]),
        "at_100pct_mib": mib(sampler.at(appended)["traced"]),
        "end_after_gc_mib": mib(end_sample["traced"]),
        "peak_mib": mib(end_sample["traced_peak"]),
        "slope_bytes_per_1000_alerts_after_warmup": slope_per_1000(after_warm_t),
    }
    return {
        "outage": {
            "alerts_appended": appended,
            "hit_time_limit": appended < a.count,
            "seconds": round(produce_s, 3),
            "alerts_per_s": round(appended / produce_s, 1) if produce_s > 0 else None,
            "timed_with_tracemalloc": tracing,
            "store_pending": outage_stats.pending,
            "store_db_bytes": outage_stats.db_bytes,
            "db_bytes_per_alert": round(outage_stats.db_bytes / max(appended, 1), 1),
            "uplink": outage_status,
            "rss": rss,
            "tracemalloc": traced,
            "samples": len(sampler.samples),
        },
        "drain": drain,
        "check": check,
    }


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=50_000, help="alerts to append (bounded)")
    p.add_argument("--batch", type=int, default=100, help="alerts per append")
    p.add_argument("--producers", type=int, default=4, help="concurrent producers")
    p.add_argument("--sample-every", type=int, default=500, help="alerts between samples")
    p.add_argument("--max-seconds", type=float, default=25.0, help="time bound of the outage")
    p.add_argument("--drain-max-seconds", type=float, default=25.0, help="time bound of drain")
    p.add_argument("--uplink-batch", type=int, default=100, help="uplink batch_size")
    p.add_argument("--max-backoff-s", type=float, default=2.0, help="uplink max_backoff_s")
    p.add_argument("--no-tracemalloc", action="store_true", help="RSS only (less overhead)")
    p.add_argument("--dir", type=Path, default=None, help="directory for the database files")
    a = p.parse_args(argv)
    if not 0 < a.count <= 200_000 or a.batch < 1 or a.producers < 1 or a.sample_every < 1:
        p.error("--count 1..200000, --batch/--producers/--sample-every >= 1")
    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    if not a.no_tracemalloc:
        tracemalloc.start()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        result = await run(a, Path(tmp))
    print(
        json.dumps(
            {
                "benchmark": "outage_memory",
                "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version,
                "settings": {
                    "count": a.count,
                    "batch": a.batch,
                    "producers": a.producers,
                    "sample_every": a.sample_every,
                    "uplink_batch_size": a.uplink_batch,
                    "uplink_max_backoff_s": a.max_backoff_s,
                    "tracemalloc": not a.no_tracemalloc,
                    "dir": str(a.dir or tempfile.gettempdir()),
                },
                **result,
                "total_seconds": round(time.monotonic() - t0, 2),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
