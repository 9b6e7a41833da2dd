"""The device end of a pseudo-terminal RTU line, scripted by the tests.

Reads the agent's 8-byte read requests off the line and hands each to ``on_request``,
which answers (or not) with ``later``. The RTU tests' devices (answering twice, late, amid
noise) differ only there.
"""

from __future__ import annotations

import asyncio
import os
import struct
import tty
from abc import ABC, abstractmethod

from drivers.modbus._frames import rtu_frame


def read_answer(request: bytes, value: int) -> bytes:
    """The answer frame to a read request, every register holding ``value``."""
    count = int.from_bytes(request[4:6], "big")
    regs = struct.pack(f">{count}H", *[value] * count)
    return rtu_frame(request[0], bytes((3, 2 * count)) + regs)


class ScriptedLine(ABC):
    """Devices at the far end of the pty ``path``; ``requests`` counts every request seen."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.requests = 0
        self._pending = bytearray()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        self._pending += os.read(self.fd, 256)
        while len(self._pending) >= 8:
            request = bytes(self._pending[:8])
            del self._pending[:8]
            self.requests += 1
            self.on_request(request)

    @abstractmethod
    def on_request(self, request: bytes) -> None:
        """Answer (or not) one request; the request's number on the line is ``requests``."""

    def later(self, delay_s: float, data: bytes) -> None:
        """Write ``data`` on the line ``delay_s`` from now."""
        self._loop.call_later(delay_s, self.write, data)

    def write(self, data: bytes) -> None:
        if self.fd >= 0:
            os.write(self.fd, data)

    def close(self) -> None:
        self._loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1
