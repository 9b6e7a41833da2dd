"""An RTU device that answers every request twice (a flaky slave, an RS-485 repeater).

RTU frames carry no transaction id: the repeat of answer N has the device id, function
code and byte count of the answer to request N+1. The scripted device answers with the
number of the request it answers, so a read that returns an earlier request's number got
stale data. The repeats must be dropped, counted per line, shown in /metrics and logged
once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import tty
from collections.abc import Iterator
from dataclasses import asdict

import pytest

from agent.health_metrics import render_metrics
from drivers.modbus import Bus, RtuLink
from drivers.modbus._frames import rtu_frame

pytestmark = [pytest.mark.network]

TURNAROUND_S = 0.02  # the device answers 20 ms after a request...
REPEAT_S = 0.01  # ...and sends the same answer again 10 ms later
READS = 8


class TwiceAnswering:
    """Answers each read on ``path`` twice; register values = the request's number."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.requests = 0
        self._pending = bytearray()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._on_request)

    def _on_request(self) -> None:
        self._pending += os.read(self.fd, 256)
        while len(self._pending) >= 8:
            request = bytes(self._pending[:8])
            del self._pending[:8]
            self.requests += 1
            count = int.from_bytes(request[4:6], "big")
            regs = struct.pack(f">{count}H", *[self.requests] * count)
            answer = rtu_frame(request[0], bytes((3, 2 * count)) + regs)
            self._loop.call_later(TURNAROUND_S, self._write, answer)
            self._loop.call_later(TURNAROUND_S + REPEAT_S, self._write, answer)

    def _write(self, frame: bytes) -> None:
        if self.fd >= 0:
            os.write(self.fd, frame)

    def close(self) -> None:
        self._loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1


@pytest.fixture
def line(serial_pair: tuple[str, str]) -> Iterator[tuple[str, str]]:
    yield serial_pair


async def test_a_repeated_answer_is_never_taken_for_the_next_one(
    line: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    agent_tty, device_tty = line
    device = TwiceAnswering(device_tty)
    # A guard far above the repeat's 10 ms, so a loaded machine cannot fail the test.
    link = RtuLink(agent_tty, baudrate=115200, repeat_guard_s=0.15)
    bus = Bus("line-1", "rtu", [link])
    try:
        with caplog.at_level(logging.WARNING, logger="edge_agent.drivers.modbus"):
            for _ in range(READS):
                asked = device.requests + 1  # the number of the request this read sends
                values = await bus.read(1, 3, 0, 2, 1.0)
                assert values == [asked, asked], "a read returned an earlier request's data"
            await asyncio.sleep(0.15)  # the last repeat arrives
            assert await bus.read(1, 3, 0, 2, 1.0) == [READS + 1] * 2
    finally:
        bus.close()
        device.close()
    assert link.duplicate_answers == READS
    assert link.late_answers == 0
    status = bus.status()
    assert status.duplicate_answers == READS and status.echoes == 0
    lines = [r for r in caplog.records if "answered a request twice" in r.getMessage()]
    assert len(lines) == 1, caplog.text  # once per episode, not once per repeat
    assert agent_tty in lines[0].getMessage() and "device 1" in lines[0].getMessage()
    metrics = render_metrics({"buses": [asdict(status)]}).decode()
    assert f'edge_bus_duplicate_answers_total{{bus="line-1"}} {float(READS)}' in metrics
    assert 'edge_bus_echoes_total{bus="line-1"} 0.0' in metrics


async def test_other_devices_use_the_line_while_one_is_held_off(
    line: tuple[str, str],
) -> None:
    """The guard holds back only the device that just answered, not the line."""
    agent_tty, device_tty = line
    device = TwiceAnswering(device_tty)
    link = RtuLink(agent_tty, baudrate=115200, repeat_guard_s=0.3)
    bus = Bus("line-1", "rtu", [link])
    try:
        await bus.read(1, 3, 0, 1, 1.0)
        held = asyncio.create_task(bus.read(1, 3, 0, 1, 1.0))
        await asyncio.sleep(0)
        # Device 2 gets the line while device 1 waits out its guard (0.3 s).
        assert await asyncio.wait_for(bus.read(2, 3, 0, 1, 1.0), 5) == [2]
        assert not held.done()
        assert await held == [3]
    finally:
        bus.close()
        device.close()
