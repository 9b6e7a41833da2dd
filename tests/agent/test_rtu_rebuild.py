"""A serial line rebuilt (a reload that changed its settings) keeps what its devices owe.

A device whose read timed out may still answer; the line holds it off and drops that late
answer. A reload that rebuilt the line started the new one knowing nothing: the device was
asked at once, and its late answer to the old line's request (value 1 here: the request's
number on the line) was taken as the new read's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config
from agent.sources import build_sources
from drivers.modbus import DeviceTimes, LinkTimeout
from drivers.profiles import ProfileLibrary
from simulators.serial_pair import pty_pair
from tests.agent._configs import press_config
from tests.drivers.test_modbus_rtu_very_late import InOrderDevice

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed"),
]

TIMEOUT_S = 0.3


def line_config(tmp_path: Path, port: str, late_flush_s: float) -> Config:
    """press_config with sensor m1 as device 1 on a serial line at ``port``."""
    data: dict[str, Any] = press_config(tmp_path).model_dump(mode="json", by_alias=True)
    data["buses"] = [
        {"id": "rs485-1", "rtu": {"port": port, "baudrate": 115200, "late_flush_s": late_flush_s}}
    ]
    data["sensors"][0]["modbus"] = {"bus": "rs485-1", "device_id": 1, "timeout_s": TIMEOUT_S}
    return Config.model_validate(data)


async def test_a_rebuilt_serial_line_holds_a_late_device_off_as_the_old_one_did(
    tmp_path: Path,
) -> None:
    library = ProfileLibrary.load(None)
    lines: dict[str, DeviceTimes] = {}
    with pty_pair(tmp_path) as (agent_tty, device_tty):
        device = InOrderDevice(device_tty, 0.8, 0.05)  # its first answer 0.8 s late
        old = build_sources(line_config(tmp_path, agent_tty, 0.05), library, print, lines=lines)
        (old_bus,) = old.buses
        try:
            with pytest.raises(LinkTimeout):
                await old_bus.read(1, 3, 0, 2, TIMEOUT_S)
            old_bus.close()  # the reload retires it; its settings changed:
            new = build_sources(line_config(tmp_path, agent_tty, 0.06), library, print, lines=lines)
            (new_bus,) = new.buses
            assert new_bus is not old_bus
            got = await new_bus.read(1, 3, 0, 2, 2.0)
            new_bus.close()
        finally:
            old_bus.close()
            device.close()
    assert got != [1, 1], "the rebuilt line took the old line's late answer"
    assert got == [device.numbers[(3, 0, 2)][-1]] * 2
