"""An RTU line's serial port: the receive buffer, writes, and the line's silences.

Bytes are read on the event loop (add_reader on a non-blocking port) into a bounded
buffer; the exchange on top (drivers.modbus._rtu) takes frames from its start. This module
knows when the line was last busy: the inter-frame gap before a request, the flush after a
failed read, and a line that never falls quiet (noise, reported once per episode). A port
that fails under us (an unplugged adapter) is closed, so a waiting read fails as a lost
connection and the next poll reopens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable

import serial

from drivers.modbus._frames import char_time_s, inter_frame_gap_s
from drivers.modbus._link import LinkDown
from drivers.modbus._status import EpisodeLog

log = logging.getLogger("edge_agent.drivers.modbus")

MAX_FLUSH_S = 2.0  # the flush bound's ceiling, whatever the baud rate
LONGEST_FRAME_CHARS = 256  # an RTU frame is at most 256 characters
FRAME_STRETCH = 2.5  # each character plus a gap of up to 1.5 characters after it
MAX_BUFFER = 4096

PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class SerialLine:
    """One serial port and what has arrived on it.

    Args:
        port: the serial device, e.g. ``/dev/ttyUSB0``.
        baudrate, parity, stop_bits, bytesize: the line's settings.
        inter_frame_s: silence before each request; None: 3.5 characters (1.75 ms above
            19200 baud).
        late_flush_s: a flush waits until the line has been quiet this long.
        on_idle_bytes: called when bytes arrive while no read uses the buffer.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int,
        parity: str,
        stop_bits: int,
        bytesize: int,
        inter_frame_s: float | None,
        late_flush_s: float,
        on_idle_bytes: Callable[[], None],
    ) -> None:
        self.port, self.baudrate, self.parity = port, baudrate, parity
        self.stop_bits, self.bytesize = stop_bits, bytesize
        self.char_s = char_time_s(baudrate, parity, stop_bits, bytesize)
        self.gap_s = inter_frame_gap_s(baudrate, self.char_s) if inter_frame_s is None else (
            inter_frame_s)  # fmt: skip
        self.late_flush_s = late_flush_s
        self._on_idle_bytes = on_idle_bytes
        self._serial: serial.Serial | None = None
        self.buf = bytearray()
        self._arrived = asyncio.Event()
        self.last_activity = 0.0
        self.flushed_bytes = 0
        self.sent_end = 0.0  # when the request being sent is off the wire (monotonic)
        self.early = 0  # bytes at the buffer's start that arrived before that
        self.reading = False  # a read is using the buffer
        # A flush that sees bytes for longer than a whole frame plus late_flush_s is noise.
        # A frame may leave gaps of up to 1.5 characters between its characters (the
        # spec's t1.5; slow devices do): the longest answer still arriving is not noise.
        self.noise_after_s = (
            min(MAX_FLUSH_S, LONGEST_FRAME_CHARS * FRAME_STRETCH * self.char_s) + late_flush_s
        )
        self.noisy_reads = 0  # failed reads after which the line never fell quiet
        self._noisy_since: float | None = None  # monotonic start of the noise episode
        self._noisy_in_a_row = 0
        self._noise_log = EpisodeLog()
        self._gone_log = EpisodeLog()  # the port failing under us (an unplugged adapter)

    @property
    def noisy(self) -> bool:
        """True while the line is noisy: the last flush never saw it fall quiet."""
        return self._noisy_since is not None

    @property
    def connected(self) -> bool:
        """True while the port is open."""
        return self._serial is not None

    async def connect(self) -> None:
        """Open and configure the port.

        Raises:
            LinkDown: the port does not exist or cannot be opened or configured.
        """
        self.close()
        try:
            ser = serial.Serial(
                self.port,
                baudrate=self.baudrate,
                bytesize=self.bytesize,
                parity=PARITIES[self.parity],
                stopbits=self.stop_bits,
                timeout=0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkDown(f"cannot open {self.port}: {exc}") from exc
        self._serial = ser
        self.buf.clear()
        asyncio.get_running_loop().add_reader(ser.fileno(), self._readable)
        self.last_activity = time.monotonic()

    def close(self) -> None:
        """Close the port."""
        ser, self._serial = self._serial, None
        if ser is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(ser.fileno())
            with contextlib.suppress(Exception):
                ser.close()
        self._arrived.set()

    def write(self, data: bytes) -> None:
        """Send ``data``; the port is closed when that fails.

        Raises:
            LinkDown: the port is closed or the write failed.
        """
        ser = self._serial
        if ser is None:
            raise LinkDown(f"{self.port} is not open")
        try:
            os.write(ser.fileno(), data)
        except OSError as exc:
            self.close()
            raise LinkDown(f"write to {self.port} failed: {exc.strerror}") from exc

    def _readable(self) -> None:
        ser = self._serial
        if ser is None:
            return
        try:
            data = os.read(ser.fileno(), MAX_BUFFER)
        except BlockingIOError:
            return
        except OSError as exc:
            self._gone(exc.strerror or str(exc))
            return
        if not data:
            # Readable yet nothing to read: a hung-up tty (an unplugged USB adapter), which
            # stays readable forever; left open, this callback would spin the event loop.
            self._gone("end of file")
            return
        now = self.last_activity = time.monotonic()
        if len(self.buf) + len(data) > MAX_BUFFER:
            self.flushed_bytes += len(self.buf)
            self.buf.clear()
        self.buf += data
        if now < self.sent_end:  # read before our request was off the wire: not its answer
            self.early = len(self.buf)
        if not self.reading:
            self._on_idle_bytes()
        self._arrived.set()

    def _gone(self, why: str) -> None:
        """The port failed under us (an unplugged adapter): close it, so a read waiting
        fails as a lost connection and the next poll reopens the port (the poller backs
        off while it cannot). Logged once per episode."""
        self.close()
        if self._gone_log.report(1, 1):
            log.warning(
                "modbus line %s: the serial port failed (%s; adapter unplugged?); closed, "
                "reopened at the next poll%s",
                self.port,
                why,
                self._gone_log.hushed_note(),
                extra={"address": self.port},
            )

    async def wait_data(self, deadline: float) -> bool:
        """Wait for more bytes until ``deadline`` (monotonic); False when it passed.

        Raises:
            LinkDown: the port was closed meanwhile.
        """
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self._arrived.clear()
        try:
            async with asyncio.timeout(left):
                await self._arrived.wait()
        except TimeoutError:
            return False
        if self._serial is None:
            raise LinkDown(f"{self.port} closed")
        return True

    async def quiet(self) -> None:
        """The inter-frame gap since the last byte either way. A frame still arriving (a
        repeated answer) is waited out, up to ``late_flush_s``: noise never falls quiet."""
        stop = time.monotonic() + self.late_flush_s
        while (wait := self.last_activity + self.gap_s - time.monotonic()) > 0:
            await asyncio.sleep(wait)
            if time.monotonic() >= stop:
                return

    async def flush(self) -> bool:
        """Wait until the line has been quiet for late_flush_s; give up after
        ``noise_after_s`` (noise). True when the line fell quiet (or the port closed).
        What came is left in the buffer for the caller."""
        stop = time.monotonic() + self.noise_after_s
        while self._serial is not None and time.monotonic() < stop:
            quiet_until = self.last_activity + self.late_flush_s
            if time.monotonic() >= quiet_until:
                break
            await self.wait_data(min(quiet_until, stop))
        return self._serial is None or time.monotonic() >= (self.last_activity + self.late_flush_s)

    def noise_seen(self, device_id: int) -> None:
        """A flush found the line never quiet: count it, log the episode's start once."""
        self.noisy_reads += 1
        self._noisy_in_a_row += 1
        if self._noisy_since is None:
            self._noisy_since = time.monotonic()
        if self._noise_log.report(self._noisy_in_a_row, 1):
            log.warning(
                "modbus line %s is noisy: it never fell quiet for %.0f ms within %.2f s "
                "after a failed read (a broken transceiver or a babbling device?); reads "
                "fail fast until it is quiet%s",
                self.port,
                self.late_flush_s * 1000,
                self.noise_after_s,
                self._noise_log.hushed_note(),
                extra={"address": self.port, "device_id": device_id},
            )

    def quiet_again(self) -> None:
        """The line fell quiet (or an answer got through): the noise episode ends."""
        if self._noisy_since is None:
            return
        if self._noise_log.logged:
            log.info(
                "modbus line %s quiet again after %d noisy reads (%.1f s)",
                self.port,
                self._noisy_in_a_row,
                time.monotonic() - self._noisy_since,
                extra={"address": self.port},
            )
        self._noisy_since, self._noisy_in_a_row = None, 0
