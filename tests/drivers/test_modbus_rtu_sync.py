"""Sync reads against devices that refuse them: a sensor serving only its own block.

While a device owes a late answer to a block, a read of it is preceded by a sync read of
another shape. Many real sensors implement holding registers only, for a narrow range,
and some refuse a read that cuts a 32-bit value in half (exception 02): the sync read's
exception answer carries only its function code, so one to a function the device owed a
late answer of could not be told from that late answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest

from drivers.modbus import Bus, RtuLink
from drivers.modbus._frames import FrameError, rtu_frame
from drivers.modbus._link import LinkTimeout
from tests.drivers.rtu_script import ScriptedLine
from tests.drivers.test_modbus_rtu_very_late import InOrderDevice

pytestmark = [pytest.mark.network]

TIMEOUT_S = 0.3
BLOCK = (3, 0, 8)  # holding registers 0..7: four 32-bit values


class OwnBlockOnly(ScriptedLine):
    """Device 1 serves holding registers 0..7 read whole and nothing else: input registers
    answer exception 01, any other holding read exception 02. Its first ``lost`` requests
    never reach it (noise on the line). Registers hold the request's number on the line;
    ``asked`` lists (function, address, count) of every request it got."""

    def __init__(self, path: str, lost: int) -> None:
        super().__init__(path)
        self.lost = lost
        self.asked: list[tuple[int, int, int]] = []

    def on_request(self, request: bytes) -> None:
        fc, address, count = request[1], *struct.unpack(">HH", request[2:6])
        self.asked.append((fc, address, count))
        if self.lost > 0:
            self.lost -= 1
            return
        if fc != 3:
            answer = rtu_frame(1, bytes((fc | 0x80, 1)))
        elif (fc, address, count) != BLOCK:
            answer = rtu_frame(1, bytes((0x83, 2)))
        else:
            regs = struct.pack(f">{count}H", *[self.requests] * count)
            answer = rtu_frame(1, bytes((3, 2 * count)) + regs)
        self.later(0.005, answer)


async def reads(pair: tuple[str, str], lost: int, polls: int) -> tuple[list[str], OwnBlockOnly]:
    """``polls`` reads of the block; each one's value or ``timeout``."""
    device = OwnBlockOnly(pair[1], lost)
    link = RtuLink(pair[0], baudrate=115200, late_flush_s=0.05)
    bus = Bus("line-1", "rtu", [link])
    got: list[str] = []
    try:
        for _ in range(polls):
            try:
                values = await asyncio.wait_for(bus.read(1, *BLOCK, TIMEOUT_S), 5.0)
            except LinkTimeout:
                got.append("timeout")
            else:
                assert values == [device.requests] * 8, "a read took another request's answer"
                got.append("ok")
    finally:
        bus.close()
        device.close()
    return got, device


async def test_a_lost_request_costs_one_failed_poll_on_a_device_serving_only_its_block(
    serial_pair: tuple[str, str],
) -> None:
    """The sync read was a part of the block (7 registers): the device refused it with
    exception 02, which was dropped as the late answer it owed, and the read failed as a
    timeout though the device answered. Now the sync read asks the other function, whose
    refusal (exception 01) nothing owed can look like."""
    got, device = await reads(serial_pair, lost=1, polls=3)
    assert got == ["timeout", "ok", "ok"]
    assert device.asked[1] == (4, 0, 1)


async def test_two_lost_requests_cost_two_failed_polls_not_one_per_shape_it_refuses(
    serial_pair: tuple[str, str],
) -> None:
    """The block's request and its sync read's (the other function) lost: the device owes
    late answers of both functions, so the next sync read is a part of the block, which it
    refuses with an exception that may be the late answer it owes. That read failed on its
    timeout and left the device owing a new shape: each poll after asked another part (then
    longer blocks), refused, failed as a timeout, up to 31 in a row for a device that
    answered every one. The refusal is the device answering in order: the block is read."""
    got, device = await reads(serial_pair, lost=2, polls=6)
    assert got == ["timeout", "timeout", "ok", "ok", "ok", "ok"]
    assert device.asked[:2] == [BLOCK, (4, 0, 1)]


class IgnoresInputRegisters(OwnBlockOnly):
    """As OwnBlockOnly, but input register reads get no answer at all (against the spec,
    which asks for exception 01; some devices do)."""

    def on_request(self, request: bytes) -> None:
        if request[1] == 4:
            self.asked.append((4, *struct.unpack(">HH", request[2:6])))
            return
        super().on_request(request)


async def test_a_device_ignoring_the_other_function_is_synced_with_a_part_of_the_block_after(
    serial_pair: tuple[str, str],
) -> None:
    """Its first sync read (an input register) goes unanswered, the next (a part of the
    block, refused) syncs it; a later lost request is then synced at once the same way,
    not by another input register read costing a failed poll each time."""
    device = IgnoresInputRegisters(serial_pair[1], lost=1)
    link = RtuLink(serial_pair[0], baudrate=115200, late_flush_s=0.05)
    bus = Bus("line-1", "rtu", [link])
    got: list[str] = []
    try:
        for lost in (1, 0, 0, 0, 1, 0):
            device.lost = lost
            try:
                await asyncio.wait_for(bus.read(1, *BLOCK, TIMEOUT_S), 5.0)
            except LinkTimeout:
                got.append("timeout")
            else:
                got.append("ok")
    finally:
        bus.close()
        device.close()
    assert got == ["timeout", "timeout", "ok", "ok", "timeout", "ok"]
    assert [fc for fc, _, _ in device.asked].count(4) == 1


async def test_a_frame_from_an_older_request_during_a_sync_read_does_not_end_the_sync(
    serial_pair: tuple[str, str],
) -> None:
    """A device that queues requests and answers them in order, slowly: block X's read
    fails (its answer comes 2.8 s later), then block B's (queued behind X: 4.3 s). B's
    next read is synced first; X's late answer arrives during that sync read and nothing
    after it before its deadline. B's own late answer is still to come, so the device is
    not in order again: the block read must not follow (it took B's stale answer)."""
    device = InOrderDevice(serial_pair[1], 2.8, 1.5, 0.01)
    link = RtuLink(serial_pair[0], baudrate=115200, late_flush_s=0.05)
    bus = Bus("line-1", "rtu", [link])
    got: list[int] | None = None
    try:
        with pytest.raises(LinkTimeout):
            await bus.read(1, 3, 100, 2, TIMEOUT_S)  # X
        with pytest.raises(LinkTimeout):
            await bus.read(1, *BLOCK, TIMEOUT_S)  # B, held off until X's window ended
        with contextlib.suppress(LinkTimeout, FrameError):  # failing is fine; stale is not
            got = await asyncio.wait_for(bus.read(1, *BLOCK, 1.0), 8.0)
    finally:
        bus.close()
        device.close()
    first_b = device.numbers[BLOCK][0]
    assert got != [first_b] * 8, "the read took the answer to B's earlier request"
    assert link.sync_reads >= 1
