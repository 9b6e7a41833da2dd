"""A USB-serial adapter unplugged under a running RTU line.

The hung-up tty stays readable with read() returning nothing, forever. The link ignored an
empty read: its reader callback then ran ~400,000 times a second (a whole core) until the
next poll's write failed, and a read waiting for an answer ran into its timeout and was
reported as the device not answering. Now an empty read closes the port: one warning, a
waiting read fails as a lost connection, and the next poll reopens the port once the
adapter is back under the same path. A socat pty pair stands in for the adapter: killing
socat hangs up the agent's end as unplugging hangs up /dev/ttyUSB0.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.modbus import Bus, RtuLink
from drivers.modbus._link import LinkDown
from simulators.serial_pair import pty_pair
from tests.drivers.rtu_script import ScriptedLine, read_answer

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed"),
]

VALUE = 42


class Device(ScriptedLine):
    """Device 1 answers every read with VALUE; ``mute`` stops it answering."""

    mute = False

    def on_request(self, request: bytes) -> None:
        if not self.mute:
            self.later(0.005, read_answer(request, VALUE))


async def wait_until(condition: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_an_unplugged_adapter_closes_the_port_and_is_reopened_when_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.drivers.modbus")
    link: RtuLink | None = None
    with pty_pair(tmp_path) as (agent_tty, device_tty):
        device = Device(device_tty)
        link = RtuLink(agent_tty, baudrate=115200)
        bus = Bus("line-1", "rtu", [link])
        assert await bus.read(1, 3, 0, 2, 1.0) == [VALUE, VALUE]
        device.close()
    # socat is gone: the agent's end is hung up, as after unplugging the adapter.
    assert await wait_until(lambda: not link.connected), "the hung-up port was kept open"
    gone = [r for r in caplog.records if "serial port failed" in r.getMessage()]
    assert len(gone) == 1 and agent_tty in gone[0].getMessage()
    with pytest.raises(LinkDown):
        await bus.read(1, 3, 0, 2, 1.0)  # not there yet: the poller backs off on this

    # The adapter comes back under the same path.
    with pty_pair(tmp_path) as (again_tty, device_tty):
        assert again_tty == agent_tty
        device = Device(device_tty)
        try:
            assert await bus.read(1, 3, 0, 2, 1.0) == [VALUE, VALUE]
        finally:
            bus.close()
            device.close()


async def test_a_read_waiting_when_the_adapter_is_unplugged_fails_as_a_lost_connection(
    tmp_path: Path,
) -> None:
    with pty_pair(tmp_path) as (agent_tty, device_tty):
        device = Device(device_tty)
        device.mute = True  # the read waits for an answer...
        link = RtuLink(agent_tty, baudrate=115200)
        bus = Bus("line-1", "rtu", [link])
        waiting = asyncio.create_task(bus.read(1, 3, 0, 2, 10.0))
        assert await wait_until(lambda: device.requests == 1)
        device.close()
    # ...when the adapter goes: a lost connection, well before its 10 s timeout.
    try:
        async with asyncio.timeout(5.0):
            with pytest.raises(LinkDown):
                await waiting
    finally:
        bus.close()
