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
from collections.abc import Iterator
from dataclasses import asdict

import pytest

from agent.health_metrics import render_metrics
from drivers.modbus import Bus, RtuLink
from tests.drivers.rtu_script import ScriptedLine, read_answer

pytestmark = [pytest.mark.network]

TURNAROUND_S = 0.02  # the device answers 20 ms after a request...
REPEAT_S = 0.01  # ...and sends the same answer again 10 ms later
READS = 8


class TwiceAnswering(ScriptedLine):
    """Answers each read on ``path`` twice; register values = the request's number."""

    def on_request(self, request: bytes) -> None:
        answer = read_answer(request, self.requests)
        self.later(TURNAROUND_S, answer)
        self.later(TURNAROUND_S + REPEAT_S, answer)


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
