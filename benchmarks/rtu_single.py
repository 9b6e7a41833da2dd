"""One RTU device, several read blocks, polled back to back: reads/s and poll duration.

The line's worst case for a per-device hold-off between answers and requests (the RTU
repeat guard, ``repeat_guard_s``): a single device on the line, so no other device can use
the wait, and a plan of several blocks, so every poll pays it once per block. The QM30VT2
profile (21 registers, one block) is split into ``--blocks`` blocks; one ModbusPoller's
``poll_once`` runs back to back for ``--duration`` s on a socat pty pair served by
``edge-sim modbus --rtu`` (answers paced to the baud rate). Runs against whatever tree
``PYTHONPATH`` names (so two commits can be compared side by side). Prints one JSON object.

    PYTHONPATH=TREE python benchmarks/rtu_single.py [--blocks 1 4] [--baud 9600 115200]
        [--duration 8] [--repeat-guard S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import time
from pathlib import Path

from _modbus_sim import modbus_simulator  # beside this script

from drivers.modbus import Bus, ModbusPoller, RtuLink, plan_profile
from drivers.profiles import load_profile
from simulators.serial_pair import pty_pair

TREE = Path(os.environ.get("PYTHONPATH", ".").split(os.pathsep)[0]).resolve()


async def run_case(baud: int, blocks: int, duration: float, guard: float | None) -> dict:
    profile = load_profile("banner-qm30vt2")
    full = plan_profile(profile)
    regs = sum(b.count for b in full.blocks)
    plan = plan_profile(profile, max_count=math.ceil(regs / blocks))
    with pty_pair() as pty:
        async with modbus_simulator(
            ["--device", "1:velocity=1.01", "--rtu", pty[1], "--baud", str(baud)], TREE
        ):
            # repeat_guard_s exists from 8cfd4cf's parent on; older trees do not take it
            extra = {} if guard is None else {"repeat_guard_s": guard}
            bus = Bus("rtu", "rtu", [RtuLink(pty[0], baudrate=baud, **extra)])
            poller = ModbusPoller(
                "d1", bus=bus, device_id=1, profile=profile, plan=plan,
                timeout_s=0.5, poll_interval_s=1.0, sink=lambda r: None,
            )  # fmt: skip
            await poller.poll_once()  # connect and warm up
            durations: list[float] = []
            errors = 0
            start = time.monotonic()
            while time.monotonic() - start < duration and len(durations) < 100_000:
                t0 = time.monotonic()
                try:
                    await poller.poll_once()
                except Exception:
                    errors += 1
                    continue
                durations.append(time.monotonic() - t0)
            span = time.monotonic() - start
            bus.close()
    durations.sort()
    return {
        "baud": baud,
        "blocks": len(plan.blocks),
        "polls": len(durations),
        "errors": errors,
        "reads_per_s": round(len(durations) * len(plan.blocks) / span, 1),
        "poll_ms_median": round(1000 * statistics.median(durations), 2),
        "poll_ms_p95": round(1000 * durations[int(0.95 * (len(durations) - 1))], 2),
    }


async def main_async(args: argparse.Namespace) -> dict:
    cases = []
    for baud in args.baud:
        for blocks in args.blocks:
            cases.append(await run_case(baud, blocks, args.duration, args.repeat_guard))
    return {"tree": str(TREE), "load_avg": os.getloadavg(), "cases": cases}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, nargs="+", default=[1, 4])
    p.add_argument("--baud", type=int, nargs="+", default=[9600, 115200])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per case (bounded)")
    p.add_argument(
        "--repeat-guard", type=float, default=None,
        help="RtuLink repeat_guard_s (default: the tree's default; trees before it: omit)",
    )  # fmt: skip
    args = p.parse_args()
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
