"""A slow RTU device whose answer comes after our timeout, once the line had been quiet.

RTU frames carry no transaction id: the late answer to request N has the device id,
function code and byte count of the answer to request N+1. The post-timeout flush ends
after 50 ms of quiet, before such an answer begins, so the next request to the device used
to take it as its own (seen in a real run: a timeout, then an 'ok' read with the previous
request's data). The scripted devices answer with the number of the request they answer.
"""

from __future__ import annotations

import asyncio
import os
import time
import tty
from collections.abc import Iterator

import pytest

from drivers.modbus import Bus, RtuLink
from drivers.modbus._link import LinkTimeout
from tests.drivers.rtu_script import ScriptedLine, read_answer

pytestmark = [pytest.mark.network]

TIMEOUT_S = 0.5
LATE_S = TIMEOUT_S + 0.2  # device 1 answers 0.2 s after our timeout...
PROMPT_S = 0.01  # ...the others at once


class SlowDevice(ScriptedLine):
    """Devices on ``path``: device 1 answers each read ``delay_s`` after it, the others
    after PROMPT_S; register values = the request's number on the line (from 1)."""

    def __init__(self, path: str, delay_s: float = LATE_S) -> None:
        super().__init__(path)
        self.delay_s = delay_s
        self.asked: list[tuple[int, float]] = []  # (device id, monotonic time)

    def on_request(self, request: bytes) -> None:
        self.asked.append((request[0], time.monotonic()))
        delay = self.delay_s if request[0] == 1 else PROMPT_S
        self.later(delay, read_answer(request, self.requests))


@pytest.fixture
def line(serial_pair: tuple[str, str]) -> Iterator[tuple[str, str]]:
    yield serial_pair


async def test_a_late_answer_is_never_taken_by_the_next_request(line: tuple[str, str]) -> None:
    agent_tty, device_tty = line
    device = SlowDevice(device_tty)
    link = RtuLink(agent_tty, baudrate=115200, late_flush_s=0.05)
    bus = Bus("line-1", "rtu", [link])
    try:
        with pytest.raises(LinkTimeout):
            await bus.read(1, 3, 0, 2, TIMEOUT_S)  # request 1; its answer comes 0.2 s late
        # A patient read: the device's own answer (0.7 s) comes within it.
        values = await bus.read(1, 3, 0, 2, 5.0)
        assert values == [2, 2], "the next read took the previous request's late answer"
    finally:
        bus.close()
        device.close()
    assert link.late_answers == 1 and link.duplicate_answers == 0
    assert bus.status().late_answers == 1
    # Not asked again before its late answer had come (which ended its window).
    (_, first), (_, second) = device.asked
    assert second - first >= LATE_S


async def test_other_devices_use_the_line_while_a_late_device_is_held_off(
    line: tuple[str, str],
) -> None:
    """The late-answer window holds back only the device that timed out; its late answer,
    arriving while another device is being read, is dropped and counted."""
    agent_tty, device_tty = line
    device = SlowDevice(device_tty)
    link = RtuLink(agent_tty, baudrate=115200, late_flush_s=0.05)
    bus = Bus("line-1", "rtu", [link])
    try:
        with pytest.raises(LinkTimeout):
            await bus.read(1, 3, 0, 1, TIMEOUT_S)
        held = asyncio.create_task(bus.read(1, 3, 0, 1, 5.0))
        await asyncio.sleep(0)
        others = 0
        while not held.done() and others < 200:  # bounded
            got = await asyncio.wait_for(bus.read(2, 3, 0, 1, 1.0), 5)
            assert got == [device.requests]  # each its own answer, never device 1's
            others += 1
        assert others >= 3, "device 2 did not get the line while device 1 was held off"
        assert (await held)[0] > 1
    finally:
        bus.close()
        device.close()
    assert link.late_answers == 1


async def test_a_stale_frame_in_the_buffer_is_not_the_answer(line: tuple[str, str]) -> None:
    """A whole frame from the device, already there when we ask it, is dropped as late."""
    agent_tty, device_tty = line
    device = SlowDevice(device_tty, delay_s=PROMPT_S)
    link = RtuLink(agent_tty, baudrate=115200)
    bus = Bus("line-1", "rtu", [link])
    try:
        assert await bus.read(1, 3, 0, 2, 1.0) == [1, 1]
        stale = read_answer(bytes((1, 3, 0, 0, 0, 2, 0, 0)), 99)
        device.write(stale)
        await asyncio.sleep(0.1)  # read into our buffer
        assert await bus.read(1, 3, 0, 2, 1.0) == [2, 2]
    finally:
        bus.close()
        device.close()
    assert link.late_answers == 1


async def test_an_answer_cannot_begin_before_the_request_is_sent(line: tuple[str, str]) -> None:
    """At 300 baud an 8-byte request is on the wire for 0.27 s: a frame that arrives before
    then (a stale one read late from the port, another device's) is not its answer."""
    agent_tty, device_tty = line
    fd = os.open(device_tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    loop = asyncio.get_running_loop()
    link = RtuLink(agent_tty, baudrate=300)
    sent_s = 8 * link.char_s
    pending = bytearray()

    def on_request() -> None:
        pending.extend(os.read(fd, 256))
        while len(pending) >= 8:
            request = bytes(pending[:8])
            del pending[:8]
            os.write(fd, read_answer(request, 99))  # at once: during our request
            loop.call_later(sent_s + 0.1, os.write, fd, read_answer(request, 7))

    loop.add_reader(fd, on_request)
    bus = Bus("line-1", "rtu", [link])
    try:
        assert await bus.read(1, 3, 0, 1, 2.0) == [7]
        await asyncio.sleep(sent_s + 0.3)  # the answer was written; nothing more comes
    finally:
        bus.close()
        loop.remove_reader(fd)
        os.close(fd)
    assert link.late_answers == 1
