"""Modbus RTU on a serial port (RS-485): framing by silence, CRC, late-byte flush.

RTU frames carry no transaction id, so a late answer from a slow device could pass for
the next request's. Defences, in order: wait the inter-frame gap (3.5 characters, 1.75 ms
above 19200 baud) before every request; discard whatever arrived before it; check device
id, function code, byte count and CRC of the answer; a complete, valid frame from another
device that precedes ours is dropped and counted as late; after a timeout or a garbled
answer, flush: read and discard until the line has been quiet for ``late_flush_s``.

A line that never falls quiet (a broken transceiver, a babbling device) is noise, not a late
answer: a flush gives up once bytes have kept coming for longer than the longest answer
frame (with the gaps the spec allows between characters) plus ``late_flush_s``, so one
failed read cannot hold the line for long and stall the other devices. That read fails as
``noise``; the line is reported noisy (its status, /metrics, one warning per episode with
the port) until a flush finds it quiet or an answer gets through. Answers are still taken
only whole and checked (CRC, device id, function code, byte count), so noise can fail a read
but not pass for an answer.

A device that answers twice (a flaky slave, an RS-485 repeater) sends a valid frame with
our device id, function code and byte count: nothing in it tells it from the answer to
the next request. So a device is not asked again until ``repeat_guard_s`` after its
last answer; a repeat arriving before that is dropped and counted as a duplicate. The bus
waits out this hold-off before taking the line, so other devices use it meanwhile.

A device that timed out (or answered garbled, or whose read was cancelled) may still
answer, after the flush found the line quiet: that late answer has the device id, function
code and byte count of the answer to the next request. So the device is not asked again for
a late-answer window (LATE_WINDOW_FACTOR times the failed read's timeout, within
LATE_WINDOW_MIN_S..LATE_WINDOW_MAX_S, counted from the end of the flush): its answer must
then be more than (1 + LATE_WINDOW_FACTOR) timeouts late before it could pass for the next
one's. The window ends early once the device has sent as many late frames as it has
unanswered requests: it has nothing more to say, so waiting on would only cost its polls.
Other devices use the line meanwhile (the same hold-off); a frame from the device arriving
in the window is dropped and counted as late. A whole frame from the device we ask whose
function code or byte count is not our request's (the late answer to another block) is
dropped as late too, and the read goes on waiting for its own answer, while the device
owes a late answer of that shape (a failed read of it with that function code and byte
count not answered yet); a frame of another shape is its answer to us, wrong: the read
fails at once. And an answer cannot
begin before our request has been sent: bytes that arrived before the request's end (its
line time after the write) are dropped (an echoing adapter's copy of our request aside).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import serial

from drivers.modbus._frames import (
    ExceptionAnswer,
    FrameError,
    char_time_s,
    crc16,
    inter_frame_gap_s,
    read_pdu,
    registers_of,
    rtu_answer_pdu,
    rtu_expected_size,
    rtu_frame,
)
from drivers.modbus._link import LinkDown, LinkTimeout
from drivers.modbus._status import EpisodeLog

log = logging.getLogger("edge_agent.drivers.modbus")

MAX_FLUSH_S = 2.0  # the flush bound's ceiling, whatever the baud rate
LONGEST_FRAME_CHARS = 256  # an RTU frame is at most 256 characters
FRAME_STRETCH = 2.5  # each character plus a gap of up to 1.5 characters after it
MAX_BUFFER = 4096
# The late-answer window: LATE_WINDOW_FACTOR times the failed read's timeout, within these
# bounds. One timeout again let an answer 2.5 timeouts late pass for the next request's
# (a 0.5 s timeout, an answer 1.2 s late); the window ends as soon as the late answer has
# come, so only a device that never answers pays it in full. The floor covers a short
# timeout (0.15 s at 115200 baud) on a device that answers a few hundred ms late; the
# ceiling keeps a 30 s timeout from silencing a device for long.
LATE_WINDOW_FACTOR = 3.0
LATE_WINDOW_MIN_S = 0.5
LATE_WINDOW_MAX_S = 5.0
MAX_OWED_SHAPES = 32  # a device's distinct unanswered blocks remembered (bounded)

PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class RtuLink:
    """One serial port (an RS-485 line with any number of devices).

    Args:
        port: the serial device, e.g. ``/dev/ttyUSB0``.
        baudrate: line speed.
        parity: ``N``, ``E`` or ``O``.
        stop_bits: 1 or 2.
        bytesize: data bits, 7 or 8.
        inter_frame_s: silence before each request; None: 3.5 characters (1.75 ms above
            19200 baud), as the Modbus serial line specification requires.
        late_flush_s: after a timeout or a garbled answer, discard bytes until the line
            has been quiet this long; a line still busy after the longest frame (256
            characters with 1.5-character gaps, at most MAX_FLUSH_S) plus this is noise:
            the read fails as ``noise`` and the line is reported noisy.
        repeat_guard_s: the least time between a device's answer and the next request
            to the same device; a repeat of the answer arriving before then is dropped.
            Other devices use the line meanwhile. 0: no guard.

    After a device's timeout, garbled answer or cancelled read it is not asked again for
    3 times the read's timeout (0.5 to 5 s) after the flush, or until its late answers
    have come; they are dropped and counted as late. Other devices use the line meanwhile.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int,
        parity: str = "N",
        stop_bits: int = 1,
        bytesize: int = 8,
        inter_frame_s: float | None = None,
        late_flush_s: float = 0.05,
        repeat_guard_s: float = 0.02,
    ) -> None:
        self.address = port
        self.port, self.baudrate, self.parity = port, baudrate, parity
        self.stop_bits, self.bytesize = stop_bits, bytesize
        self.char_s = char_time_s(baudrate, parity, stop_bits, bytesize)
        self.gap_s = inter_frame_gap_s(baudrate, self.char_s) if inter_frame_s is None else (
            inter_frame_s)  # fmt: skip
        self.late_flush_s = late_flush_s
        self.repeat_guard_s = repeat_guard_s
        self._serial: serial.Serial | None = None
        self._buf = bytearray()
        self._arrived = asyncio.Event()
        self._hold_cut = asyncio.Event()  # a late-answer window was cut short
        self._last_activity = 0.0
        self.late_answers = 0
        self.duplicate_answers = 0  # a device's answer sent again (flaky slave, repeater)
        self.flushed_bytes = 0
        self.echoes = 0  # our own requests read back (RS-485 adapters that echo), dropped
        # A flush that sees bytes for longer than a whole frame plus late_flush_s is noise.
        # A frame may leave gaps of up to 1.5 characters between its characters (the
        # spec's t1.5; slow devices do): the longest answer still arriving is not noise.
        self.noise_after_s = (
            min(MAX_FLUSH_S, LONGEST_FRAME_CHARS * FRAME_STRETCH * self.char_s) + late_flush_s
        )
        self.noisy_reads = 0  # failed reads after which the line never fell quiet
        self._noisy_since: float | None = None  # monotonic start of the noise episode
        self._noisy_in_a_row = 0
        # device id -> (monotonic end, frame) of its last good answer: at most 256 entries
        self._answered: dict[int, tuple[float, bytes]] = {}
        # device id -> monotonic end of its late-answer window, from its last failed read
        # until its next answer: at most 256 entries
        self._failed: dict[int, float] = {}
        # device id -> its failed requests since its last answer whose late answer has not
        # come (the window ends early at 0): at most 256 entries
        self._unanswered: dict[int, int] = {}
        # device id -> (function code, byte count) of those requests' answers: a frame of
        # another shape from it is no late answer. At most MAX_OWED_SHAPES per device.
        self._owed: dict[int, set[tuple[int, int]]] = {}
        self._sent_end = 0.0  # when the request being sent is off the wire (monotonic)
        self._early = 0  # bytes at the buffer's start that arrived before that
        self._reading = False  # a read is using the buffer
        self._logs = {"echo": EpisodeLog(), "duplicate": EpisodeLog(), "late": EpisodeLog()}
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
        self._buf.clear()
        asyncio.get_running_loop().add_reader(ser.fileno(), self._readable)
        self._last_activity = time.monotonic()

    def close(self) -> None:
        """Close the port."""
        ser, self._serial = self._serial, None
        if ser is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(ser.fileno())
            with contextlib.suppress(Exception):
                ser.close()
        self._arrived.set()

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
        now = self._last_activity = time.monotonic()
        if len(self._buf) + len(data) > MAX_BUFFER:
            self.flushed_bytes += len(self._buf)
            self._buf.clear()
        self._buf += data
        if now < self._sent_end:  # read before our request was off the wire: not its answer
            self._early = len(self._buf)
        if not self._reading:
            # A late answer while nobody reads (the device held off, the line idle): its
            # arrival ends its device's window now, not at the next read's start.
            while (frame := self._valid_frame_at_start()) is not None:
                self._drop_stray(frame)
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

    async def _wait_data(self, deadline: float) -> bool:
        """Wait for more bytes until ``deadline`` (monotonic); False when it passed."""
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

    async def _quiet(self) -> None:
        """The inter-frame gap since the last byte either way. A frame still arriving (a
        repeated answer) is waited out, up to ``late_flush_s``: noise never falls quiet."""
        stop = time.monotonic() + self.late_flush_s
        while (wait := self._last_activity + self.gap_s - time.monotonic()) > 0:
            await asyncio.sleep(wait)
            if time.monotonic() >= stop:
                return

    async def _flush(self) -> bool:
        """Wait until the line has been quiet for late_flush_s; give up after
        ``noise_after_s`` (noise). True when the line fell quiet (or the port closed).
        What came is left for _drop_leftovers, once the failed read is recorded."""
        stop = time.monotonic() + self.noise_after_s
        while self._serial is not None and time.monotonic() < stop:
            quiet_until = self._last_activity + self.late_flush_s
            if time.monotonic() >= quiet_until:
                break
            await self._wait_data(min(quiet_until, stop))
        return self._serial is None or time.monotonic() >= (self._last_activity + self.late_flush_s)

    def _noise_seen(self, device_id: int) -> None:
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

    def _quiet_again(self) -> None:
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

    def _valid_frame_at_start(self) -> bytes | None:
        """The complete answer frame (any device, valid CRC) at the buffer's start."""
        buf = self._buf
        if len(buf) < 3:
            return None
        size = 5 if buf[1] & 0x80 else 3 + buf[2] + 2
        if len(buf) < size or crc16(bytes(buf[: size - 2])) != int.from_bytes(
            buf[size - 2 : size], "little"
        ):
            return None
        return bytes(buf[:size])

    def _drop_stray(self, frame: bytes) -> None:
        """Drop ``frame`` from the buffer's start: a repeat of its device's last answer is
        a duplicate, anything else a late answer. Logged once per episode."""
        del self._buf[: len(frame)]
        last = self._answered.get(frame[0])
        # A device that failed since its last answer sends late answers, not repeats.
        repeat = frame[0] not in self._failed and last is not None and last[1] == frame
        kind = "duplicate" if repeat else "late"
        if kind == "duplicate":
            self.duplicate_answers += 1
        else:
            self.late_answers += 1
            self._late_came(frame[0])
        self._log_once(kind, frame[0])

    def _owes_nothing(self, frame: bytes) -> bool:
        """True when ``frame``, arriving after our request, cannot be a late answer of its
        device: no failed request of it whose answer has this function code and byte count
        is unanswered. (Nor a repeat of its last answer: the device was asked only
        ``repeat_guard_s`` after it.)"""
        shapes = self._owed.get(frame[0])
        if not shapes or frame[0] not in self._unanswered:
            return True
        if frame[1] & 0x80:
            return all(fc != frame[1] & 0x7F for fc, _ in shapes)
        return (frame[1], frame[2]) not in shapes

    def _late_came(self, device_id: int) -> None:
        """A late frame from ``device_id``: once all its failed requests have had theirs,
        its window ends (after ``repeat_guard_s``, should the device repeat it)."""
        left = self._unanswered.get(device_id, 0) - 1
        if left > 0:
            self._unanswered[device_id] = left
            return
        self._unanswered.pop(device_id, None)
        self._owed.pop(device_id, None)
        if (end := self._failed.get(device_id)) is not None:
            self._failed[device_id] = min(end, time.monotonic() + self.repeat_guard_s)
            self._hold_cut.set()

    def _read_failed(
        self, device_id: int, timeout_s: float, function_code: int, count: int
    ) -> None:
        """Its answer (to ``count`` registers with ``function_code``) may still come: not
        asked again (other devices are) until the late-answer window has passed or its late
        answers have come."""
        window = min(max(LATE_WINDOW_FACTOR * timeout_s, LATE_WINDOW_MIN_S), LATE_WINDOW_MAX_S)
        self._failed[device_id] = time.monotonic() + window
        if len(self._unanswered) < 256 or device_id in self._unanswered:
            self._unanswered[device_id] = self._unanswered.get(device_id, 0) + 1
            shapes = self._owed.setdefault(device_id, set())
            if len(shapes) < MAX_OWED_SHAPES:
                shapes.add((function_code, 2 * count))

    def _log_once(self, kind: str, device_id: int) -> None:
        """One warning per episode and kind (see EpisodeLog); later ones are counted."""
        episode = self._logs[kind]
        if not episode.report(1, 1):
            return
        what = {
            "echo": "reads back our requests (an echoing RS-485 adapter); echoes are dropped",
            "duplicate": "device %d answered a request twice; the repeat was dropped, "
            "not taken as the next answer",
            "late": "a late answer from device %d was dropped",
        }[kind]
        args = (self.port,) + ((device_id,) if kind != "echo" else ()) + (episode.hushed_note(),)
        log.warning(
            "modbus line %s: " + what + "%s",
            *args,
            extra={"address": self.port, "device_id": device_id},
        )

    def _drop_echo(self, request: bytes, device_id: int) -> None:
        """Our request read back at the buffer's start (an echoing adapter): dropped."""
        del self._buf[: len(request)]
        self.echoes += 1
        self._log_once("echo", device_id)

    def _drop_leftovers(self) -> None:
        """Before a request: drop what arrived since the last exchange, counting whole
        answers among it as duplicates or late answers, the rest as flushed bytes."""
        while (frame := self._valid_frame_at_start()) is not None:
            self._drop_stray(frame)
        self.flushed_bytes += len(self._buf)
        self._buf.clear()

    def hold_off_s(self, device_id: int) -> float:
        """Seconds before ``device_id`` may be asked again: until ``repeat_guard_s`` after
        its last answer, so that a repeat of that answer cannot pass for the next one, and
        until its late-answer window after a failed read has passed."""
        last = self._answered.get(device_id)
        until = self._failed.get(device_id, 0.0)
        if last is not None:
            until = max(until, last[0] + self.repeat_guard_s)
        return max(0.0, until - time.monotonic())

    async def wait_hold_off(self, device_id: int) -> None:
        """See Link.wait_hold_off: woken early when a late-answer window is cut short."""
        while (hold := self.hold_off_s(device_id)) > 0:
            self._hold_cut.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hold):
                    await self._hold_cut.wait()

    def _answered_by(self, device_id: int, frame: bytes) -> None:
        """A whole, valid answer (registers or an exception) from ``device_id``."""
        self._answered[device_id] = (time.monotonic(), frame)
        self._failed.pop(device_id, None)
        self._unanswered.pop(device_id, None)
        self._owed.pop(device_id, None)
        self._quiet_again()

    async def _drop_early(self, request: bytes, sent_end: float, device_id: int) -> bool:
        """Wait until our request is off the wire and drop what arrived before: an answer
        cannot begin earlier (a stale frame read late from the port, another device's).
        An echoing adapter's copy of the request is kept for _receive, or dropped here
        with what followed it. True when the echo was dropped here."""
        if (left := sent_end - time.monotonic()) > 0:
            await asyncio.sleep(left)
        early, self._early = min(self._early, len(self._buf)), 0
        if early == 0:
            return False
        echo = False
        n = min(early, len(request))
        if self._buf[:n] == request[:n]:
            if early <= len(request):
                return False  # our echo, perhaps still arriving
            self._drop_echo(request, device_id)
            early -= len(request)
            echo = True
        while early > 0 and (frame := self._valid_frame_at_start()) is not None:
            self._drop_stray(frame)
            early -= len(frame)
        if early > 0:
            self.flushed_bytes += early
            del self._buf[:early]
        return echo

    async def read(
        self, device_id: int, function_code: int, address: int, count: int, timeout_s: float
    ) -> list[int]:
        """See Link.read."""
        ser = self._serial
        if ser is None:
            raise LinkDown(f"{self.port} is not open")
        await self.wait_hold_off(device_id)  # the bus waits this out before taking the line
        self._reading = True
        try:
            return await self._read(ser, device_id, function_code, address, count, timeout_s)
        finally:
            self._reading = False

    async def _read(
        self,
        ser: serial.Serial,
        device_id: int,
        function_code: int,
        address: int,
        count: int,
        timeout_s: float,
    ) -> list[int]:
        await self._quiet()
        self._drop_leftovers()
        request = rtu_frame(device_id, read_pdu(function_code, address, count))
        # The request cannot be off the wire before its line time after the write.
        sent_end = self._sent_end = time.monotonic() + len(request) * self.char_s
        self._early = 0
        try:
            os.write(ser.fileno(), request)
        except OSError as exc:
            self.close()
            raise LinkDown(f"write to {self.port} failed: {exc.strerror}") from exc
        self._last_activity = sent_end
        deadline = sent_end + timeout_s
        try:
            echo_seen = await self._drop_early(request, sent_end, device_id)
            frame = await self._receive(
                device_id, function_code, count, deadline, request, echo_seen
            )
            registers = registers_of(rtu_answer_pdu(frame, device_id), function_code, count)
        except WrongAnswer as exc:
            self._answered_by(device_id, exc.frame)  # it answered: nothing late to come
            raise
        except asyncio.CancelledError:
            # The request is on the wire and its answer may still come (a poller stopped
            # by a reload, the line kept open): held off as after a timeout.
            self._read_failed(device_id, timeout_s, function_code, count)
            raise
        except (LinkTimeout, FrameError) as exc:
            quiet = await self._flush()
            self._read_failed(device_id, timeout_s, function_code, count)
            # The answer completed meanwhile (it began just before the deadline) is its
            # late answer: counted, and it ends the device's hold-off.
            self._drop_leftovers()
            if quiet:
                self._quiet_again()
                raise
            self._noise_seen(device_id)
            raise FrameError("noise", f"noise on the line ({exc})") from exc
        except ExceptionAnswer:
            self._answered_by(device_id, frame)  # it may repeat too
            raise
        self._answered_by(device_id, frame)
        return registers

    def _complete_frame(self, count: int) -> bytes | None:
        """The answer-sized frame at the buffer's start, if it has all arrived."""
        size = rtu_expected_size(bytes(self._buf[:2]), count)
        if size is None or len(self._buf) < size:
            return None
        return bytes(self._buf[:size])

    def _echo_state(self, request: bytes, frame: bytes | None) -> str:
        """``echo`` when the buffer starts with our request read back (not a valid
        answer), ``partial`` while it may still become one, else ``no``."""
        if frame is not None and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little"):
            return "no"  # a valid answer wins over a byte-for-byte coincidence
        n = min(len(self._buf), len(request))
        if n == 0 or self._buf[:n] != request[:n]:
            return "no"
        return "echo" if n == len(request) else "partial"

    @staticmethod
    def _not_ours(frame: bytes, device_id: int, function_code: int, count: int) -> bool:
        """A whole, valid frame that cannot answer our request: another device's, or our
        device's answer to another request (another function or byte count)."""
        if frame[0] != device_id:
            return True
        if frame[1] == function_code | 0x80:
            return False  # an exception answer to our function: ours
        return frame[1] != function_code or frame[2] != 2 * count

    async def _receive(
        self,
        device_id: int,
        function_code: int,
        count: int,
        deadline: float,
        request: bytes,
        echo_seen: bool,
    ) -> bytes:
        mismatch: FrameError | None = None  # our device's frame that answered another request
        while True:
            while (stray := self._valid_frame_at_start()) is not None and self._not_ours(
                stray, device_id, function_code, count
            ):
                if not echo_seen and stray == request:
                    # Our request read back: a request for registers 0x0300-0x03FF is a
                    # valid frame too (byte count 3, closed by its CRC). The echo, below.
                    break
                if stray[0] == device_id:
                    mismatch = _mismatch(stray, function_code, count)
                    if self._owes_nothing(stray):
                        # No late answer of it can come: this is its answer, wrong (a
                        # block it cannot serve whole). Waiting on would hold the line
                        # for its whole timeout, and hold the device off after.
                        del self._buf[: len(stray)]
                        raise WrongAnswer(stray, mismatch)
                self._drop_stray(stray)
            frame = self._complete_frame(count)
            # An adapter that echoes what it sends puts our request before the answer;
            # without this every read on such a line fails its CRC.
            echo = "no" if echo_seen else self._echo_state(request, frame)
            if echo == "echo":
                self._drop_echo(request, device_id)
                echo_seen = True
                continue
            if frame is not None and echo == "no":
                del self._buf[: len(frame)]
                return frame
            if not await self._wait_data(deadline):
                if self._buf:
                    raise FrameError("short", f"incomplete answer ({len(self._buf)} bytes)")
                if mismatch is not None:
                    # A device that always answers so (a block it cannot serve whole)
                    # fails as what it is, not as a silent one.
                    raise mismatch
                raise LinkTimeout("no answer in time")


class WrongAnswer(FrameError):
    """Our device's whole, valid answer to our request, with another function code or
    byte count (``frame``: that answer)."""

    def __init__(self, frame: bytes, why: FrameError) -> None:
        super().__init__(why.reason, str(why))
        self.frame = frame


def _mismatch(frame: bytes, function_code: int, count: int) -> FrameError:
    """Why our device's whole, valid ``frame`` does not answer our request."""
    if frame[1] & 0x7F != function_code:
        return FrameError(
            "wrong_function", f"answer with function {frame[1]}, asked {function_code}"
        )
    return FrameError("byte_count", f"answer with byte count {frame[2]}, asked {count} registers")
