"""Modbus RTU devices on a serial port or pseudo-terminal: one RS-485 line.

The line is modelled, not only the devices: a request reaches the devices after its
characters' time at the configured baud rate; each device answers after its turnaround
(and its fault's delay), and answers take the line one at a time for their own
characters' time, so a 9600-baud line is as slow here as in a plant. A slow device thinks
without holding the line, so its late answer can arrive in the middle of a later
exchange, as on a real bus. A device id nobody has stays silent. Faults are those of
``simulators.modbus`` (dead, slow, exception, ffff, zero, nan, short, garbled, wrong_id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import time
import tty
from collections import Counter
from collections.abc import Iterable

from drivers.profiles import Profile, load_profile
from simulators._modbus_protocol import rtu_crc, rtu_frame
from simulators.modbus import SimDevice, respond

log = logging.getLogger("edge_sim.modbus_rtu")

REQUEST_SIZE = 8  # id, function, address (2), count (2), CRC (2)
TURNAROUND_S = 0.005
BAUDS = {
    b: getattr(termios, f"B{b}")
    for b in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
}


class RtuSimServer:
    """Serves Modbus RTU on ``path``; ``async with RtuSimServer(...)``.

    Args:
        devices: the simulated devices on the line.
        path: serial device or pty to serve on.
        profile: the register profile to serve.
        baudrate: line speed (answers are paced to it); parity, stop_bits: character frame.
    """

    def __init__(
        self,
        devices: Iterable[SimDevice],
        path: str,
        *,
        profile: str | Profile = "banner-qm30vt2",
        baudrate: int = 19200,
        parity: str = "N",
        stop_bits: int = 1,
    ) -> None:
        self.devices = {d.device_id: d for d in devices}
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        self.path = path
        self.baudrate = baudrate
        self.char_s = (1 + 8 + (parity != "N") + stop_bits) / baudrate
        self.requests: Counter[int] = Counter()
        self.answers: Counter[int] = Counter()
        self.garbled_requests = 0
        self._fd: int | None = None
        self._buf = bytearray()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._line = asyncio.Lock()
        self._t0 = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the server started: the scenarios' time axis."""
        return time.monotonic() - self._t0

    async def __aenter__(self) -> RtuSimServer:
        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        with contextlib.suppress(termios.error):
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            speed = BAUDS.get(self.baudrate, termios.B19200)
            attrs[4] = attrs[5] = speed
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._readable)
        self._t0 = time.monotonic()
        self._task = asyncio.create_task(self._serve(), name="rtu-sim")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, OSError):
            return
        self._buf += data
        self._arrived.set()

    async def _next_request(self) -> bytes:
        while True:
            while len(self._buf) >= REQUEST_SIZE:
                frame = bytes(self._buf[:REQUEST_SIZE])
                if rtu_crc(frame[:-2]) == int.from_bytes(frame[-2:], "little"):
                    del self._buf[:REQUEST_SIZE]
                    return frame
                # Noise or a partial frame: resynchronise on the next byte.
                self.garbled_requests += 1
                del self._buf[:1]
            self._arrived.clear()
            await self._arrived.wait()

    async def _serve(self) -> None:
        answering: set[asyncio.Task[None]] = set()
        try:
            while True:
                request = await self._next_request()
                await asyncio.sleep(len(request) * self.char_s)  # the request on the line
                device_id, pdu = request[0], request[1:-2]
                self.requests[device_id] += 1
                if device_id not in self.devices:
                    continue  # nobody on the line has this id: silence
                task = asyncio.create_task(self._answer(device_id, pdu))
                answering.add(task)
                task.add_done_callback(answering.discard)
        finally:
            for task in answering:
                task.cancel()

    async def _answer(self, device_id: int, pdu: bytes) -> None:
        r = respond(self.devices, self.profile, device_id, pdu, self.elapsed())
        if r.pdu is None:
            return
        answer = rtu_frame(r.device_id, r.pdu)
        if r.mangle == "short":
            answer = answer[: len(answer) // 2]
        elif r.mangle == "garbled":
            answer = answer[:-1] + bytes(((answer[-1] + 1) & 0xFF,))  # bad CRC
        await asyncio.sleep(TURNAROUND_S + r.delay_s)
        async with self._line:  # one answer on the wire at a time
            await asyncio.sleep(len(answer) * self.char_s)
            self._write(answer)
        self.answers[device_id] += 1

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._fd, data)
