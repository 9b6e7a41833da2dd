"""Shared lines: do healthy devices keep their rate beside a dead (and a slow) device?

Three lines, each served by an ``edge-sim modbus`` process as a plant has them:

    rtu-9600    an RS-485 line at 9600 baud (a socat pseudo-terminal pair; the simulator
                paces every answer to the line speed)
    rtu-115200  the same at 115200 baud
    gateway     a TCP-to-RTU gateway endpoint (one request at a time, 19200-baud line,
                0.5 s gateway timeout answered with exception 11)

On each line, one after another: ``base`` (--healthy devices only), ``dead`` (+ one device
that never answers) and ``dead+slow`` (+ one more that answers 0.5 s late, past its
timeout). The agent side is the real driver: one Bus, one ModbusPoller per device, the
production breaker (first probe after one interval, cap --backoff-max). Measured per case:
the healthy devices' polls achieved / expected (rate ratio), the ratio of each fault case
to ``base`` on the same line, the line utilisation the bus measured and the one planned,
late answers dropped, and readings credited to the wrong device (every device serves its
own fixed velocity, so each reading names its source). Prints one JSON object.

    python benchmarks/modbus_buses.py [--healthy 4] [--duration 30] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _modbus_sim import modbus_simulator  # noqa: E402  (beside this script)

from drivers.modbus import (  # noqa: E402
    Backoff,
    Bus,
    ModbusPoller,
    RtuLink,
    TcpLink,
    line_utilisation,
    plan_profile,
)
from drivers.profiles import load_profile  # noqa: E402
from drivers.reading import Reading  # noqa: E402
from simulators.serial_pair import pty_pair  # noqa: E402

DEAD_ID, SLOW_ID = 101, 102
MAX_HEALTHY = 16
SLOW_S = 0.5
GATEWAY_BAUD = 19200


def velocity(device_id: int) -> float:
    return round(1.0 + 0.01 * device_id, 3)


async def run_case(
    line: str, case: str, args: argparse.Namespace, pty: tuple[str, str] | None
) -> dict[str, Any]:
    healthy = list(range(1, args.healthy + 1))
    specs = [f"{i}:velocity={velocity(i)}" for i in healthy]
    faulty = []
    if "dead" in case:
        specs.append(f"{DEAD_ID}:velocity={velocity(DEAD_ID)},dead")
        faulty.append(DEAD_ID)
    if "slow" in case:
        specs.append(f"{SLOW_ID}:velocity={velocity(SLOW_ID)},slow={SLOW_S}")
        faulty.append(SLOW_ID)
    sim_args = [a for s in specs for a in ("--device", s)]
    profile = load_profile("banner-qm30vt2")
    if line.startswith("rtu"):
        assert pty is not None
        baud = int(line.split("-")[1])
        sim_args += ["--rtu", pty[1], "--baud", str(baud)]
    else:
        baud = GATEWAY_BAUD
        sim_args += ["--gateway", "--line-baud", str(baud), "--gateway-timeout", "0.5"]
    async with modbus_simulator(sim_args, REPO) as info:
        if line.startswith("rtu"):
            assert pty is not None
            links: list[Any] = [RtuLink(pty[0], baudrate=baud)]
            kind = "rtu"
        else:
            links = [TcpLink("127.0.0.1", info["port"], connect_timeout_s=1.0, settle_s=1.0)]
            kind = "gateway"
        ids = healthy + faulty
        plan = plan_profile(profile)
        bus = Bus(
            line,
            kind,
            links,
            planned_utilisation=line_utilisation([(plan, args.interval)] * len(ids), baudrate=baud),
        )
        got: dict[int, list[Reading]] = {i: [] for i in ids}
        wrong = 0

        def sink(r: Reading, dev: int) -> None:
            nonlocal wrong
            if abs(r.features.get("velocity_rms_mm_s", -1) - velocity(dev)) > 0.0015:
                wrong += 1
            if r.channel == "z":  # one reading per channel: count polls once
                got[dev].append(r)

        pollers = [
            ModbusPoller(
                f"d{i}",
                bus=bus,
                device_id=i,
                profile=profile,
                timeout_s=args.timeout,
                poll_interval_s=args.interval,
                sink=lambda r, i=i: sink(r, i),
                backoff=Backoff(min(args.interval, 1.0), args.backoff_max),
            )
            for i in ids
        ]
        tasks = [asyncio.create_task(p.run(start_delay_s=0.0)) for p in pollers]
        started = time.monotonic()
        await asyncio.sleep(args.duration)
        status = bus.status()
        for p in pollers:
            p.stop()
        await asyncio.wait(tasks, timeout=3)
        span = time.monotonic() - started
        bus.close()
    expected = len(healthy) * args.duration / args.interval
    achieved = sum(len(got[i]) for i in healthy)
    return {
        "line": line,
        "case": case,
        "healthy_polls": achieved,
        "healthy_expected": round(expected),
        "rate_ratio": round(achieved / expected, 4),
        "faulty_attempts": {f"d{i}": pollers[ids.index(i)].status.polls_total for i in faulty},
        "utilisation_measured": status.utilisation,
        "utilisation_planned": round(bus.planned_utilisation or 0, 3),
        "late_answers": status.late_answers,
        "wrong_device_readings": wrong,
        "span_s": round(span, 1),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results = []
    for line in ("rtu-9600", "rtu-115200", "gateway"):
        for case in ("base", "dead", "dead+slow"):
            if line.startswith("rtu"):
                with pty_pair() as pty:
                    results.append(await run_case(line, case, args, pty))
            else:
                results.append(await run_case(line, case, args, None))
            print(json.dumps(results[-1]), file=sys.stderr)
    ratios = {}
    for line in ("rtu-9600", "rtu-115200", "gateway"):
        base = next(r for r in results if r["line"] == line and r["case"] == "base")
        for r in results:
            if r["line"] == line and r["case"] != "base":
                ratios[f"{line} {r['case']} / base"] = round(
                    r["rate_ratio"] / base["rate_ratio"], 4
                )
    return {
        "benchmark": "modbus_buses",
        "python": platform.python_version(),
        "params": vars(args),
        "load_average_at_end": os.getloadavg(),
        "cases": results,
        "ratios_to_base": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--healthy", type=int, default=4)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per case")
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, s")
    parser.add_argument("--timeout", type=float, default=0.3, help="per-device timeout, s")
    parser.add_argument("--backoff-max", type=float, default=30.0, help="breaker cap, s")
    args = parser.parse_args()
    args.healthy = max(1, min(args.healthy, MAX_HEALTHY))
    args.duration = max(1.0, min(args.duration, 300.0))
    print(json.dumps(asyncio.run(main_async(args)), indent=1))


if __name__ == "__main__":
    main()
