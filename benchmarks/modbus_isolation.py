"""Modbus device isolation: do a dead or a slow device cost the healthy ones any cadence?

One Modbus TCP simulator endpoint serves --healthy healthy devices, each polled by its own
real ModbusPoller on its own TCP connection (as for `host:`) at --interval. Cases, run one
after another in the same process, each on a fresh endpoint for --duration seconds:

    a   healthy devices only (baseline)
    b   + one dead device (never answers)
    c   + one slow device (answers --slow-s late; its timeout is --timeout-s)
    d   + dead + slow
    a2  healthy only again: a control for drift of the shared machine during the run

Cases run one at a time, not concurrently, on purpose: a fault that stalled the event loop
would slow every case of a concurrent run alike and the ratios would hide it.

Per case, for the healthy devices: polls achieved vs expected, mean/p95/max gap between
polls, missed ticks, RTT p50/p95, and the event loop's lag (a 10 ms ticker's overshoot).
Every device serves its own constant values, so a reading credited to the wrong device is
detected and counted (``mismatched_readings``). Ratios compare each fault case with the
baseline measured in the same run. Prints one JSON object.

    python benchmarks/modbus_isolation.py [--healthy 4] [--duration 8] [--interval 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import platform
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.modbus import Bus as ModbusBus
from drivers.modbus import ModbusPoller, TcpLink
from drivers.profiles import load_profile
from drivers.reading import Reading
from simulators.modbus import Fault, ModbusSimServer, SimDevice
from simulators.scenario import Constant

DEAD_ID = 101
SLOW_ID = 102
LAG_TICK_S = 0.01
MAX_DEVICES = 64  # bound on --healthy
VALUE_TOLERANCE = 0.0015  # velocity register scale is 0.001 mm/s


def device_values(device_id: int) -> dict[str, float]:
    """Constant values unique to one device, so a reading names its true source."""
    return {
        "velocity_rms_mm_s": round(1.0 + 0.037 * device_id, 3),
        "kurtosis": round(3.0 + 0.011 * device_id, 3),
        "temperature_c": 30.0 + 0.25 * device_id,
    }


def source_of(reading: Reading, ids: list[int]) -> int | None:
    """The device whose values this reading carries (None if no device matches)."""
    v = reading.features.get("velocity_rms_mm_s")
    if v is None:
        return None
    for i in ids:
        if abs(device_values(i)["velocity_rms_mm_s"] - v) <= VALUE_TOLERANCE:
            return i
    return None


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def ms(x: float | None) -> float | None:
    return None if x is None else round(1000.0 * x, 2)


@dataclass
class Track:
    """What one device's sink saw."""

    poll_times: list[float] = field(default_factory=list)  # monotonic, one per poll
    rtts: list[float] = field(default_factory=list)
    readings: int = 0
    mismatched: int = 0
    unmatched: int = 0
    last_ts: Any = None


async def _loop_lag(stop: asyncio.Event, lags: list[float]) -> None:
    # Bounded by the case's duration: the caller sets `stop`.
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(LAG_TICK_S)
        lags.append(time.monotonic() - t - LAG_TICK_S)


async def run_case(
    name: str, healthy: int, faulty: list[SimDevice], a: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """Run one case for a.duration seconds and summarise the healthy devices."""
    healthy_ids = list(range(1, healthy + 1))
    devices = [SimDevice(i, Constant(device_values(i))) for i in healthy_ids] + faulty
    all_ids = [d.device_id for d in devices]
    tracks: dict[int, Track] = defaultdict(Track)
    rng = random.Random(seed)
    async with ModbusSimServer(devices) as srv:
        pollers: dict[int, ModbusPoller] = {}

        def sink_for(dev: int) -> Callable[[Reading], None]:
            def sink(r: Reading) -> None:
                tr = tracks[dev]
                tr.readings += 1
                src = source_of(r, all_ids)
                if src is None:
                    tr.unmatched += 1
                elif src != dev:
                    tr.mismatched += 1
                if r.timestamp != tr.last_ts:  # one poll gives one Reading per channel
                    tr.last_ts = r.timestamp
                    tr.poll_times.append(time.monotonic())
                    rtt = pollers[dev].status.last_rtt_s
                    if rtt is not None:
                        tr.rtts.append(rtt)

            return sink

        for d in devices:
            link = TcpLink(srv.host, srv.port, connect_timeout_s=1.0)
            pollers[d.device_id] = ModbusPoller(
                f"dev-{d.device_id}",
                bus=ModbusBus(f"dev-{d.device_id}", "tcp", [link]),
                device_id=d.device_id,
                profile=load_profile("banner-qm30vt2"),
                timeout_s=a.timeout_s,
                poll_interval_s=a.interval,
                sink=sink_for(d.device_id),
                rng=random.Random(seed * 1000 + d.device_id),
            )
        delays = {i: rng.uniform(0.0, a.interval) for i in pollers}
        stop = asyncio.Event()
        lags: list[float] = []
        t0 = time.monotonic()
        tasks = [
            asyncio.create_task(p.run(start_delay_s=delays[i]), name=f"poll[{i}]")
            for i, p in pollers.items()
        ]
        lag_task = asyncio.create_task(_loop_lag(stop, lags))
        await asyncio.sleep(a.duration)
        t_end = time.monotonic()
        stop.set()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await lag_task
        requests = dict(srv.requests)

    gaps: list[float] = []
    rtts: list[float] = []
    achieved = expected = missed = errors = mismatched = unmatched = readings = 0
    per_device = {}
    for i in healthy_ids:
        tr = tracks[i]
        # Ticks fall at t0 + delay + k * interval; a poll takes ms, so count ticks < t_end.
        exp = int((t_end - t0 - delays[i]) // a.interval) + 1
        g = [b - x for x, b in zip(tr.poll_times, tr.poll_times[1:], strict=False)]
        st = pollers[i].status
        achieved += len(tr.poll_times)
        expected += exp
        missed += st.missed_ticks
        errors += st.errors_total
        gaps += g
        rtts += tr.rtts
        per_device[f"dev-{i}"] = {
            "polls": len(tr.poll_times),
            "expected": exp,
            "max_gap_ms": ms(max(g) if g else None),
        }
    for i in all_ids:
        mismatched += tracks[i].mismatched
        unmatched += tracks[i].unmatched
        readings += tracks[i].readings
    faulty_out = {}
    for d in faulty:
        st = pollers[d.device_id].status
        faulty_out[f"dev-{d.device_id}"] = {
            "fault": d.fault.kind if d.fault.kind != "slow" else f"slow={d.fault.delay_s}",
            "polls_attempted": st.polls_total,
            "errors": st.errors_total,
            "good_polls": len(tracks[d.device_id].poll_times),
            "state_at_end": st.state,
            "requests_seen_by_simulator": requests.get(d.device_id, 0),
        }
    return {
        "case": name,
        "seconds": round(t_end - t0, 3),
        "healthy_devices": healthy,
        "healthy": {
            "polls": achieved,
            "expected": expected,
            "achieved_ratio": round(achieved / expected, 4) if expected else None,
            "gap_mean_ms": ms(statistics.fmean(gaps) if gaps else None),
            "gap_p95_ms": ms(pct(gaps, 0.95)),
            "gap_max_ms": ms(max(gaps) if gaps else None),
            "missed_ticks": missed,
            "errors": errors,
            "rtt_p50_ms": ms(pct(rtts, 0.5)),
            "rtt_p95_ms": ms(pct(rtts, 0.95)),
            "per_device": per_device,
        },
        "faulty": faulty_out,
        "loop_lag_p95_ms": ms(pct(lags, 0.95)),
        "loop_lag_max_ms": ms(max(lags) if lags else None),
        "readings": readings,
        "mismatched_readings": mismatched,
        "unattributable_readings": unmatched,
    }


def _ratio(x: float | None, y: float | None) -> float | None:
    return None if x is None or not y else round(x / y, 3)


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--healthy", type=int, default=4, help="healthy devices (1..64)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per case (<= 12)")
    p.add_argument("--interval", type=float, default=0.2, help="poll interval, seconds")
    p.add_argument("--timeout-s", type=float, default=0.3, help="per-request timeout")
    p.add_argument("--slow-s", type=float, default=2.0, help="the slow device's answer delay")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    if not 1 <= a.healthy <= MAX_DEVICES or not 0 < a.duration <= 12 or a.interval <= 0:
        p.error("--healthy 1..64, --duration in (0, 12], --interval > 0")
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)

    def dead() -> SimDevice:
        return SimDevice(DEAD_ID, Constant(device_values(DEAD_ID)), Fault("dead"))

    def slow() -> SimDevice:
        return SimDevice(SLOW_ID, Constant(device_values(SLOW_ID)), Fault("slow", a.slow_s))

    plan = [
        ("a_healthy", []),
        ("b_plus_dead", [dead()]),
        ("c_plus_slow", [slow()]),
        ("d_plus_dead_and_slow", [dead(), slow()]),
        ("a2_healthy_again", []),
    ]
    t0 = time.monotonic()
    cases = {}
    for k, (name, faulty) in enumerate(plan):
        cases[name] = await run_case(name, a.healthy, faulty, a, a.seed + k)
    base = cases["a_healthy"]["healthy"]
    ratios = {}
    for name in ("b_plus_dead", "c_plus_slow", "d_plus_dead_and_slow", "a2_healthy_again"):
        h = cases[name]["healthy"]
        ratios[name] = {
            "achieved": _ratio(h["achieved_ratio"], base["achieved_ratio"]),
            "gap_mean": _ratio(h["gap_mean_ms"], base["gap_mean_ms"]),
            "gap_p95": _ratio(h["gap_p95_ms"], base["gap_p95_ms"]),
            "rtt_p95": _ratio(h["rtt_p95_ms"], base["rtt_p95_ms"]),
        }
    print(
        json.dumps(
            {
                "benchmark": "modbus_isolation",
                "python": platform.python_version(),
                "settings": {
                    "healthy_devices": a.healthy,
                    "duration_s_per_case": a.duration,
                    "interval_s": a.interval,
                    "timeout_s": a.timeout_s,
                    "slow_delay_s": a.slow_s,
                    "endpoint": "one ModbusSimServer on 127.0.0.1 per case",
                },
                "cases": cases,
                "ratio_to_baseline": ratios,
                "mismatched_readings_total": sum(c["mismatched_readings"] for c in cases.values()),
                "total_seconds": round(time.monotonic() - t0, 2),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
