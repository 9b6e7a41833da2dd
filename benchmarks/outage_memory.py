"""Agent memory during an outage of every backend, then the drain through two uplinks.

The real pipeline pieces in one process: an Outbox on a temporary SQLite file and the
uplinks the runtime builds from a configuration (build_uplinks: two HTTP uplinks by
default, each pointed at a loopback port where nothing listens), and producers appending
alert drafts in batches (group commit, as the monitor would under an alert storm). Every
--sample-every alerts the process's RSS (/proc/self/status VmRSS) and tracemalloc's
current size are sampled. The claim under test: memory stays flat during an outage
because the backlog (one delivery row per alert and uplink) stays on disk.

Then a BackendServer starts on each port and the drain is measured: time until each
uplink delivered its first and its last alert, items/s over all uplinks. A few live
tier-1 alerts are appended mid-drain. Each backend's copy is checked: every alert exactly
once, the backlog in (tier, seq) order, the live tier-1 alerts ahead of the older tier-2/3
backlog. Prints one JSON object.

    python benchmarks/outage_memory.py [--count 100000] [--uplinks 2] [--no-tracemalloc]
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

from agent.config import Config
from agent.records import AlertDraft, AssetRef, SensorRef, Severity
from agent.store import Outbox
from agent.uplink import build_uplinks
from simulators.backend import MAX_LIST, BackendServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memsample import Sampler, mib, rss_bytes, slope_per_1000

T0 = datetime(2026, 11, 21, 8, 15, 2, 123000, tzinfo=UTC)
LIVE_TIER1 = 5  # live tier-1 alerts appended mid-drain
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


def free_port() -> int:
    """A loopback port nothing listens on (bound, read, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def bench_config(tmp: Path, ports: list[int], a: argparse.Namespace) -> Config:
    """Two HTTP uplinks, as an integrator writes them (the runtime builds from this)."""
    return Config.model_validate(
        {
            "gateway": {"id": "bench"},
            "assets": [
                {"id": "a", "machine": {"standard": "iso10816-1", "class": "I", "rpm": 3000}}
            ],
            "sensors": [{"id": "s", "asset": "a", "modbus": {"host": "127.0.0.1"}}],
            "uplinks": [
                {
                    "name": f"backend-{i + 1}",
                    "http": {
                        "url": f"http://127.0.0.1:{port}/v1/alerts",
                        "batch_size": a.uplink_batch,
                        "timeout_s": 5.0,
                        "max_backoff_s": a.max_backoff_s,
                    },
                }
                for i, port in enumerate(ports)
            ],
            "store": {"path": str(tmp / "outbox.db"), "max_bytes": 1 << 34},
        }
    )


def check_backend(
    stored: list[dict[str, Any]], total: int, live_seqs: list[int], stats: dict[str, int]
) -> dict[str, Any]:
    """One backend's copy: exactly once, the backlog in (tier, seq) order, live tier 1 early."""
    seqs = [r["seq"] for r in stored]
    live = set(live_seqs)
    backlog = [(int(r["asset"]["tier"]), r["seq"]) for r in stored if r["seq"] not in live]
    pos = {q: i for i, q in enumerate(seqs)}
    return {
        "stored": stats.get("stored"),
        "duplicates": stats.get("duplicates"),
        "posts": stats.get("posts"),
        "exactly_once": stats.get("stored") == total
        and len({r["alert_id"] for r in stored}) == total
        and len(set(seqs)) == total,
        "backlog_in_tier_then_seq_order": backlog == sorted(backlog),
        "live_tier1_ahead_of_older_tier2_3": all(
            any(r["asset"]["tier"] != 1 and r["seq"] < q for r in stored[pos[q] + 1 :])
            for q in live_seqs
            if q in pos
        ),
    }


async def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    ports = [free_port() for _ in range(a.uplinks)]
    config = bench_config(tmp, ports, a)
    sampler = Sampler()
    names = config.uplink_names()
    async with Outbox(
        config.store.path, gateway_id="bench", max_bytes=config.store.max_bytes, uplinks=names
    ) as ob:
        uplinks = build_uplinks(config, ob)
        tasks = [asyncio.create_task(u.run(), name=f"uplink[{u.name}]") for u in uplinks]
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
            u.name: {
                "attempts": u.status.attempts_total,
                "probes": u.status.probes_total,
                "delivered": u.status.delivered_total,
                "pending": outage_stats.uplinks[u.name].pending,
            }
            for u in uplinks
        }
        warm = max(1, appended // 10)
        after_warm = [(s["alerts"], s["rss"]) for s in sampler.samples if s["alerts"] >= warm]
        after_warm_t = [(s["alerts"], s["traced"]) for s in sampler.samples if s["alerts"] >= warm]

        # tracemalloc slows every allocation several fold; the drain is timed without it.
        tracing = tracemalloc.is_tracing()
        tracemalloc.stop()

        # --- both backends come back on their ports ----------------------------------
        backends = [BackendServer(port=p, db=tmp / f"backend-{i}.db") for i, p in enumerate(ports)]
        async with contextlib.AsyncExitStack() as stack:
            for b in backends:
                await stack.enter_async_context(b)
            tb = time.monotonic()
            first = await seconds_until(
                lambda: all(u.status.delivered_total > 0 for u in uplinks), a.drain_max_seconds
            )
            rss_peak = rss_bytes()
            live_seqs: list[int] = []
            t_end = tb + a.drain_max_seconds
            # Once the first uplink's tier-1 backlog is out, live tier-1 alerts arrive.
            await seconds_until(
                lambda: uplinks[0].status.delivered_total > tiers[1],
                max(0.0, t_end - time.monotonic()),
            )
            if uplinks[0].status.delivered_total < appended:
                recs = await ob.append([draft(appended + k, 1) for k in range(LIVE_TIER1)])
                live_seqs = [r["seq"] for r in recs]
            total = appended + len(live_seqs)
            done_at: dict[str, float] = {}
            while time.monotonic() < t_end and len(done_at) < len(uplinks):
                rss_peak = max(rss_peak, rss_bytes())
                for u in uplinks:  # the uplinks' own counters: no store query per poll
                    if u.name not in done_at and u.status.delivered_total >= total:
                        done_at[u.name] = time.monotonic() - tb
                await asyncio.sleep(POLL_S)
            drain_s = time.monotonic() - tb
            final = await ob.stats()
            copies = {
                u.name: check_backend(
                    await backend_alerts(b, total), total, live_seqs, await b.stats()
                )
                for u, b in zip(uplinks, backends, strict=True)
            }
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        items = total * len(uplinks)
        deliver_s = drain_s - (first or 0.0)
        drain = {
            "backends_up_to_first_delivery_on_every_uplink_s": None
            if first is None
            else round(first, 3),
            "backends_up_to_all_delivered_s": round(drain_s, 3),
            "per_uplink_all_delivered_s": {k: round(v, 3) for k, v in done_at.items()},
            "items_delivered": items - sum(b.pending for b in final.uplinks.values()),
            "items_per_s_all_uplinks": round(items / deliver_s, 1) if deliver_s > 0 else None,
            "hit_time_limit": final.pending > 0,
            "store_pending_after": final.pending,
            "store_complete_after": final.delivered,
            "rss_peak_mib": mib(rss_peak),
            "uplink_batch_size": a.uplink_batch,
        }
        check = {
            "appended": appended,
            "live_tier1_appended_mid_drain": len(live_seqs),
            "expected_at_each_backend": total,
            "tier1_backlog": tiers[1],
            "per_backend": copies,
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
            "uplinks": outage_status,
            "rss": rss,
            "tracemalloc": traced,
            "samples": len(sampler.samples),
        },
        "drain": drain,
        "check": check,
    }


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=100_000, help="alerts to append (bounded)")
    p.add_argument("--uplinks", type=int, default=2, help="HTTP uplinks (backends), 1 to 4")
    p.add_argument("--batch", type=int, default=100, help="alerts per append")
    p.add_argument("--producers", type=int, default=4, help="concurrent producers")
    p.add_argument("--sample-every", type=int, default=500, help="alerts between samples")
    p.add_argument("--max-seconds", type=float, default=60.0, help="time bound of the outage")
    p.add_argument("--drain-max-seconds", type=float, default=60.0, help="time bound of drain")
    p.add_argument("--uplink-batch", type=int, default=100, help="uplink batch_size")
    p.add_argument("--max-backoff-s", type=float, default=2.0, help="uplink max_backoff_s")
    p.add_argument("--no-tracemalloc", action="store_true", help="RSS only (less overhead)")
    # Made absolute: the configuration built from it needs an absolute store.path.
    p.add_argument(
        "--dir", type=lambda s: Path(s).absolute(), help="directory for the database files"
    )
    a = p.parse_args(argv)
    if not 0 < a.count <= 200_000 or a.batch < 1 or a.producers < 1 or a.sample_every < 1:
        p.error("--count 1..200000, --batch/--producers/--sample-every >= 1")
    if not 1 <= a.uplinks <= 4:
        p.error("--uplinks 1..4")
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
                    "uplinks": a.uplinks,
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
