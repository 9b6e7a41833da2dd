"""A dead device on a shared RTU line: how far apart its probes are.

Once its breaker is open, a device's failed polls may take at most SHARED_LINE_SHARE of
the line: the next probe comes no sooner than the failed poll's duration divided by that
share. That duration included the device's hold-off after its previous failure (3 of its
timeouts, waiting for a late answer), though the line is the other devices' meanwhile: a
0.35 s failed read was counted as up to 1.25 s, and the device was probed up to 25 s
apart instead of 7 s, so a device that came back was read again that much later.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from drivers.modbus import Bus, ModbusPoller, RtuLink
from drivers.modbus._poller import SHARED_LINE_SHARE
from drivers.profiles import load_profile
from tests.drivers.rtu_script import ScriptedLine, read_answer

pytestmark = [pytest.mark.network]

TIMEOUT_S = 0.3
HOLD_OFF_S = 3 * TIMEOUT_S  # the late-answer window after each failed read


class DeadAndAlive(ScriptedLine):
    """Device 1 never answers; device 2 answers at once."""

    def on_request(self, request: bytes) -> None:
        if request[0] != 1:
            self.later(0.005, read_answer(request, 0))


class Highest(random.Random):
    """Jitter that always draws the longest back-off: the floor shows as it is."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_a_dead_devices_probes_are_spaced_by_its_line_time_not_its_hold_off(
    serial_pair: tuple[str, str],
) -> None:
    device = DeadAndAlive(serial_pair[1])
    link = RtuLink(serial_pair[0], baudrate=115200, late_flush_s=0.05)
    bus = Bus("line-1", "rtu", [link])
    profile = load_profile("banner-qm30vt2")
    pollers = [
        ModbusPoller(
            f"s{unit}",
            bus=bus,
            device_id=unit,
            profile=profile,
            timeout_s=TIMEOUT_S,
            poll_interval_s=0.2,  # each poll of the dead device starts within its hold-off
            sink=lambda r: None,
            rng=Highest(),
        )
        for unit in (1, 2)
    ]
    dead = pollers[0]
    tasks = [asyncio.create_task(p.run(start_delay_s=0.0)) for p in pollers]
    try:
        deadline = time.monotonic() + 10.0
        while dead.ledger.backoff_s == 0.0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    finally:
        for p in pollers:
            p.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bus.close()
        device.close()
    assert dead.consecutive_failures >= 3, "the breaker did not open"
    # The back-off's floor, times the share, is the failed poll's measured duration: its
    # read (a timeout and a flush, 0.35 s), not also the hold-off it waited before it.
    counted_s = dead.ledger.backoff_s * SHARED_LINE_SHARE
    assert counted_s < HOLD_OFF_S, f"a failed poll counted as {counted_s:.2f} s of the line"
