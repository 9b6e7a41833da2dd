"""Sync reads against devices that refuse them: a sensor serving only its own block.

While a device owes a late answer to a block, a read of it is preceded by a sync read of
another shape. Many real sensors implement holding registers only, for a narrow range,
and some refuse a read that cuts a 32-bit value in half (exception 02): the sync read's
exception answer carries only its function code, so one to a function the device owed a
late answer of could not be told from that late answer.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from drivers.modbus import Bus, RtuLink
from drivers.modbus._frames import rtu_frame
from drivers.modbus._link import LinkTimeout
from tests.drivers.rtu_script import ScriptedLine

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
