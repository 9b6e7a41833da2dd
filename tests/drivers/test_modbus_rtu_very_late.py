"""A slow RTU device whose answer comes several timeouts late, or after a cancelled read.

RTU frames carry no transaction id: the answer to request N, arriving while request N+1
to the same device (a retry, the next poll of the same block) waits, has its device id,
function code and byte count, and was taken as its answer once it came later than the
late-answer window (then the timeout again: a 0.3 s timeout, an answer 1 s late). The
scripted devices answer each request with its number on the line, so a stale answer shows
as an old number.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import asdict

import pytest

from agent.health_metrics import render_metrics
from drivers.modbus import Bus, RtuLink
from drivers.modbus._frames import FrameError, rtu_frame
from drivers.modbus._link import LinkTimeout
from tests.drivers.rtu_script import ScriptedLine, read_answer

pytestmark = [pytest.mark.network]

TIMEOUT_S = 0.3
VERY_LATE_S = 1.0  # past timeout + flush + timeout, within 1 + 3 timeouts


class LateDevices(ScriptedLine):
    """Device 1 answers request k (its k-th) after ``delays[k - 1]`` (the last one for
    the rest); the others at once. Register values: the request's number on the line."""

    def __init__(self, path: str, *delays: float) -> None:
        super().__init__(path)
        self.delays = delays
        self.last_of: dict[int, int] = {}  # device id -> number of its latest request
        self.asked: dict[int, int] = {}  # device id -> requests to it

    def on_request(self, request: bytes) -> None:
        unit = request[0]
        self.last_of[unit] = self.requests
        self.asked[unit] = self.asked.get(unit, 0) + 1
        k = self.asked[unit]
        delay = self.delays[min(k, len(self.delays)) - 1] if unit == 1 else 0.005
        self.later(delay, read_answer(request, self.requests))


def late_line(pair: tuple[str, str], *delays: float) -> tuple[LateDevices, RtuLink, Bus]:
    device = LateDevices(pair[1], *delays)
    link = RtuLink(pair[0], baudrate=115200, late_flush_s=0.05)
    return device, link, Bus("line-1", "rtu", [link])


async def test_an_answer_several_timeouts_late_is_not_the_next_reads(
    serial_pair: tuple[str, str],
) -> None:
    device, link, bus = late_line(serial_pair, VERY_LATE_S, 0.5)
    try:
        with pytest.raises(LinkTimeout):
            await bus.read(1, 3, 0, 2, TIMEOUT_S)  # request 1: answered 1 s later
        got = await bus.read(1, 3, 0, 2, 2.0)  # the same block again, answered 0.5 s later
    finally:
        bus.close()
        device.close()
    assert got == [2, 2], "the next read of the block took the previous request's answer"
    assert link.late_answers == 1 and bus.status().late_answers == 1


async def test_a_late_answer_to_another_block_is_dropped_and_the_read_waits_for_its_own(
    serial_pair: tuple[str, str],
) -> None:
    """Block A's answer (3 registers) arriving during the read of block B (1 register) of
    the same device: a valid frame, not ours; dropped as late, not a failed read."""
    device, link, bus = late_line(serial_pair, 2.0, 1.2)
    try:
        with pytest.raises(LinkTimeout):
            await bus.read(1, 3, 0, 3, TIMEOUT_S)  # block A, answered 2 s later
        got = await bus.read(1, 3, 10, 1, 3.0)  # block B, asked at ~1.25 s: answered ~2.45 s
    finally:
        bus.close()
        device.close()
    assert got == [2]
    assert link.late_answers == 1


async def test_a_cancelled_read_holds_the_device_off_until_its_answer(
    serial_pair: tuple[str, str],
) -> None:
    """A read cancelled with its request on the wire (a poller stopped by a reload, the
    line kept): the device's answer to it is not the next read's."""
    device, link, bus = late_line(serial_pair, 0.4, 0.5)
    try:
        read = asyncio.create_task(bus.read(1, 3, 0, 2, 5.0))
        deadline = time.monotonic() + 2.0
        while not device.asked and time.monotonic() < deadline:  # noqa: ASYNC110 (bounded)
            await asyncio.sleep(0.01)
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        # Held off (a 5 s read: a 5 s window) only until its late answer came.
        got = await asyncio.wait_for(bus.read(1, 3, 0, 2, 2.0), 4.0)
    finally:
        bus.close()
        device.close()
    assert got == [2, 2], "the read after a cancelled one took its answer"
    assert link.late_answers == 1


async def test_an_always_late_device_never_passes_a_stale_answer_and_its_neighbour_keeps_its_rate(
    serial_pair: tuple[str, str],
) -> None:
    """Device 1 answers every request 1 s late (timeout 0.3 s): every answer that arrives
    while it is asked again is the previous request's, so none may be taken. Device 2 on
    the same line is polled on its cadence meanwhile, each read its own answer."""
    device, link, bus = late_line(serial_pair, VERY_LATE_S)
    interval, ticks = 0.5, 6
    stale: list[tuple[list[int], int]] = []
    polled = 0

    async def slow() -> None:
        while True:
            try:
                got = await bus.read(1, 3, 0, 1, TIMEOUT_S)
                stale.append((got, device.last_of[1]))
            except LinkTimeout:
                pass

    async def neighbour() -> None:
        nonlocal polled
        next_at = time.monotonic()
        for _ in range(ticks):
            got = await bus.read(2, 3, 0, 1, TIMEOUT_S)
            assert got == [device.last_of[2]]
            polled += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    slow_task = asyncio.create_task(slow())
    try:
        await asyncio.wait_for(neighbour(), ticks * interval + 3.0)
    finally:
        slow_task.cancel()
        await asyncio.gather(slow_task, return_exceptions=True)
        bus.close()
        device.close()
    assert polled == ticks
    assert device.asked[1] >= 2, "the slow device was not asked again"
    assert stale == [], "a late answer was taken as the next request's"
    assert link.late_answers >= 1


class ShortBlockDevice(ScriptedLine):
    """Answers every read with one register fewer than asked (a block it cannot serve)."""

    def on_request(self, request: bytes) -> None:
        count = int.from_bytes(request[4:6], "big")
        short = request[:4] + (count - 1).to_bytes(2, "big") + request[6:]
        self.later(0.005, read_answer(short, 7))


async def test_a_device_answering_another_byte_count_fails_as_such_not_as_silent(
    serial_pair: tuple[str, str],
) -> None:
    """Its answers are dropped as not ours, and the read says why it failed."""
    device = ShortBlockDevice(serial_pair[1])
    link = RtuLink(serial_pair[0], baudrate=115200, late_flush_s=0.05)
    bus = Bus("line-1", "rtu", [link])
    try:
        with pytest.raises(FrameError) as failed:
            await bus.read(1, 3, 0, 2, TIMEOUT_S)
    finally:
        bus.close()
        device.close()
    assert failed.value.reason == "byte_count"


class ShortAnswers(ScriptedLine):
    """Device 1 answers every read at once with one register fewer than asked (a block it
    cannot serve whole); device 2 answers in full."""

    def on_request(self, request: bytes) -> None:
        if request[0] == 1:
            count = int.from_bytes(request[4:6], "big") - 1
            self.later(0.005, rtu_frame(1, bytes((3, 2 * count)) + b"\x00\x07" * count))
        else:
            self.later(0.005, read_answer(request, self.requests))


async def test_a_device_that_owes_no_late_answer_and_answers_another_byte_count_fails_at_once(
    serial_pair: tuple[str, str],
) -> None:
    """Its frame is its answer, wrong: the read fails as byte_count when it comes, not
    after waiting out its timeout (5 s of the line) for an answer that cannot come, and
    the device is not held off as if its answer were still to come."""
    device = ShortAnswers(serial_pair[1])
    link = RtuLink(serial_pair[0], baudrate=115200, late_flush_s=0.05)
    bus = Bus("line-1", "rtu", [link])
    try:
        for _ in range(3):
            with pytest.raises(FrameError) as failed:
                await asyncio.wait_for(bus.read(1, 3, 0, 2, 5.0), 2.0)
            assert failed.value.reason == "byte_count"
        got = await asyncio.wait_for(bus.read(2, 3, 0, 1, 5.0), 2.0)
    finally:
        bus.close()
        device.close()
    assert got == [device.requests]
    assert device.requests == 4 and link.late_answers == 0


class SilentThenShort(ShortAnswers):
    """Device 1 ignores its first request, then answers every read one register short."""

    def on_request(self, request: bytes) -> None:
        if request[0] != 1 or self.requests > 1:
            super().on_request(request)


async def test_a_device_that_timed_out_once_then_answers_another_byte_count_fails_at_once(
    serial_pair: tuple[str, str],
) -> None:
    """Its short answers do not fit the block it failed (a late answer to it would have
    its byte count): they are answers to our reads, wrong, each failing at once; before,
    each was taken for the late answer to the read before, its read waited out the whole
    timeout, failed and left the device owing again, read after read."""
    device = SilentThenShort(serial_pair[1])
    link = RtuLink(serial_pair[0], baudrate=115200, late_flush_s=0.05)
    bus = Bus("line-1", "rtu", [link])
    try:
        with pytest.raises(LinkTimeout):
            await bus.read(1, 3, 0, 2, TIMEOUT_S)
        for _ in range(3):  # held off 0.9 s once (3 timeouts of 0.3 s), then at once
            with pytest.raises(FrameError) as failed:
                await asyncio.wait_for(bus.read(1, 3, 0, 2, 5.0), 3.0)
            assert failed.value.reason == "byte_count"
    finally:
        bus.close()
        device.close()
    # The first read after the timeout is preceded by its sync read (answered wrong: an
    # answer all the same, so the block is asked too).
    assert device.requests == 5 and link.late_answers == 0 and link.sync_reads == 1


SPLIT_READ_S = 1.5  # its late-answer window: 4.5 s


class SplitAtTheDeadline(ScriptedLine):
    """Device 1 starts its first answer just before the read's deadline and ends it just
    after; then answers at once."""

    def on_request(self, request: bytes) -> None:
        answer = read_answer(request, self.requests)
        if self.requests == 1:
            self.later(SPLIT_READ_S - 0.02, answer[:3])
            self.later(SPLIT_READ_S + 0.01, answer[3:])
        else:
            self.later(0.005, answer)


async def test_a_late_answer_completed_during_the_flush_is_counted_and_ends_the_hold_off(
    serial_pair: tuple[str, str],
) -> None:
    """The read fails short; its answer, whole once the flush has waited out the line, is
    the late answer: counted, and the device is asked again at once, not 3 timeouts later
    (4.5 s here)."""
    device = SplitAtTheDeadline(serial_pair[1])
    link = RtuLink(serial_pair[0], baudrate=115200, late_flush_s=0.05)
    bus = Bus("line-1", "rtu", [link])
    try:
        with pytest.raises(FrameError) as failed:
            await bus.read(1, 3, 0, 2, SPLIT_READ_S)
        assert failed.value.reason == "short"
        assert link.late_answers == 1
        got = await asyncio.wait_for(bus.read(1, 3, 0, 2, 5.0), 2.0)
    finally:
        bus.close()
        device.close()
    assert got == [2, 2]


class InOrderDevice(ScriptedLine):
    """Device 1 as a Modbus slave is: it serves one request at a time, in order, each
    ``delays[k - 1]`` after it could start on it (the last delay for the rest); it answers
    with the request's function code, every register holding the request's number on the
    line. ``numbers`` lists the numbers of its requests for (function, address, count)."""

    def __init__(self, path: str, *delays: float, lost: int = 0) -> None:
        super().__init__(path)
        self.delays = delays
        self.lost = lost  # its first ``lost`` requests never reach it (noise on the line)
        self.busy_until = 0.0  # monotonic: when its last queued answer goes out
        self.numbers: dict[tuple[int, int, int], list[int]] = {}

    def on_request(self, request: bytes) -> None:
        if request[0] != 1:
            return
        if self.lost > 0:
            self.lost -= 1
            return
        fc, address, count = request[1], *struct.unpack(">HH", request[2:6])
        asked = self.numbers.setdefault((fc, address, count), [])
        asked.append(self.requests)
        k = sum(len(v) for v in self.numbers.values())
        now = time.monotonic()
        self.busy_until = max(now, self.busy_until) + self.delays[min(k, len(self.delays)) - 1]
        regs = struct.pack(f">{count}H", *[self.requests] * count)
        self.later(self.busy_until - now, rtu_frame(1, bytes((fc, 2 * count)) + regs))


@pytest.mark.parametrize("late_s", [1.6, 2.4])  # 5.3 and 8 timeouts of 0.3 s
async def test_an_answer_five_or_more_timeouts_late_is_never_taken_for_a_later_read(
    serial_pair: tuple[str, str], late_s: float
) -> None:
    """Past the late-answer window (3 timeouts after the flush) the device is asked the
    same block again while its first answer is still to come: that answer (value 1) has the
    device id, function and byte count of the next read's, and was taken as its answer.
    Now the device is first asked a part of the block (an answer nothing owed can look
    like), which it answers after the late one: the read gets its own request's value."""
    device = InOrderDevice(serial_pair[1], late_s, 0.01)
    link = RtuLink(serial_pair[0], baudrate=115200, late_flush_s=0.05)
    bus = Bus("line-1", "rtu", [link])
    try:
        with pytest.raises(LinkTimeout):
            await bus.read(1, 3, 0, 2, TIMEOUT_S)  # request 1, answered late_s later
        got = await asyncio.wait_for(bus.read(1, 3, 0, 2, 1.5), 5.0)
    finally:
        bus.close()
        device.close()
    asked = device.numbers[(3, 0, 2)]
    assert got != [1, 1], "a read took the answer to a request 5+ timeouts older"
    assert got == [asked[-1]] * 2, "the read's value is not its own request's"
    status = bus.status()
    assert link.late_answers == 1 and status.sync_reads == 1
    metrics = render_metrics({"buses": [asdict(status)]}).decode()
    assert 'edge_bus_sync_reads_total{bus="line-1"} 1.0' in metrics


async def test_a_device_whose_request_was_lost_is_read_after_one_sync_read(
    serial_pair: tuple[str, str],
) -> None:
    """A one-register block: its sync read is one register of the other function (no
    shorter part exists); the device answers it and then the block, each with its own
    request's value, and owes nothing after."""
    device = InOrderDevice(serial_pair[1], 0.01, lost=1)
    link = RtuLink(serial_pair[0], baudrate=115200, late_flush_s=0.05)
    bus = Bus("line-1", "rtu", [link])
    try:
        with pytest.raises(LinkTimeout):
            await bus.read(1, 3, 7, 1, TIMEOUT_S)
        got = await asyncio.wait_for(bus.read(1, 3, 7, 1, TIMEOUT_S), 3.0)
        again = await asyncio.wait_for(bus.read(1, 3, 7, 1, TIMEOUT_S), 3.0)
    finally:
        bus.close()
        device.close()
    assert device.numbers == {(4, 7, 1): [2], (3, 7, 1): [3, 4]}
    assert got == [3] and again == [4]
    assert link.sync_reads == 1 and link.late_answers == 0
