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
An answer later than that must not pass for a later read of the same block either: while
the device owes a late answer of the block's shape (up to LATE_MEMORY_S), a read of it is
preceded by a sync read, of a shape nothing owed has (one register of the other register
function, whose refusal cannot pass for a late answer either, else a part of the block or a
longer block). A slave serves one request at a time, in order (the Modbus serial line
specification's slave state machine): once the sync read's answer is in (a refusal or a
frame of another shape is an answer all the same), nothing older can follow, so the device
owes nothing and the block is read at once. So too when, in the sync read, the device sent
a frame that may be a late answer (an exception carries only its function code) and then
nothing until the deadline: a slave ignores requests while busy, so only the sync read's own
answer can still follow (owed, so dropped as late if it comes).
Other devices use the line meanwhile (the same hold-off); a frame from the device arriving
in the window is dropped and counted as late. A whole frame from the device we ask whose
function code or byte count is not our request's (the late answer to another block) is
dropped as late too, and the read goes on waiting for its own answer, while the device
owes a late answer of that shape (a failed read of it with that function code and byte
count not answered yet); a frame of another shape is its answer to us, wrong: the read
fails at once. And an answer cannot
begin before our request has been sent: bytes that arrived before the request's end (its
line time after the write) are dropped (an echoing adapter's copy of our request aside).

This module is the exchange (request out, answer judged); the serial port, its silences and
noise are drivers.modbus._rtu_port, what each device may still send (hold-offs, owed late
answers) drivers.modbus._rtu_devices, and finding frames in the bytes drivers.modbus._rtu_scan.
"""

from __future__ import annotations

import asyncio
import logging
import time

from drivers.modbus._frames import (
    ExceptionAnswer,
    FrameError,
    read_pdu,
    registers_of,
    rtu_answer_pdu,
    rtu_frame,
)
from drivers.modbus._link import LinkDown, LinkTimeout
from drivers.modbus._rtu_devices import DeviceTimes
from drivers.modbus._rtu_port import SerialLine
from drivers.modbus._rtu_scan import (
    InOrderAgain,
    WrongAnswer,
    complete_frame,
    echo_state,
    mismatch,
    not_ours,
    valid_frame_at_start,
)
from drivers.modbus._status import EpisodeLog

log = logging.getLogger("edge_agent.drivers.modbus")


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
        devices: what the devices on this port may still send (hold-offs, owed late
            answers), from the link this one replaces on the same port (a reload that
            rebuilds the bus): a device held off there is held off here. None: new.

    After a device's timeout, garbled answer or cancelled read it is not asked again for
    3 times the read's timeout (0.5 to 5 s) after the flush, or until its late answers
    have come; they are dropped and counted as late. Other devices use the line meanwhile.
    While it still owes a late answer to a block, a read of that block is preceded by a
    sync read (counted in ``sync_reads``) whose answer that late one cannot be mistaken for.
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
        devices: DeviceTimes | None = None,
    ) -> None:
        self.address = port
        self.line = SerialLine(
            port,
            baudrate=baudrate,
            parity=parity,
            stop_bits=stop_bits,
            bytesize=bytesize,
            inter_frame_s=inter_frame_s,
            late_flush_s=late_flush_s,
            on_idle_bytes=self._drop_idle_frames,
        )
        self.port, self.baudrate, self.parity = port, baudrate, parity
        self.stop_bits, self.bytesize = stop_bits, bytesize
        self.char_s, self.gap_s = self.line.char_s, self.line.gap_s
        self.late_flush_s = late_flush_s
        self.repeat_guard_s = repeat_guard_s
        self.noise_after_s = self.line.noise_after_s
        if devices is None:
            devices = DeviceTimes(repeat_guard_s)
        devices.repeat_guard_s = repeat_guard_s
        self.devices = devices
        self._buf = self.line.buf
        self.late_answers = 0
        self.duplicate_answers = 0  # a device's answer sent again (flaky slave, repeater)
        self.echoes = 0  # our own requests read back (RS-485 adapters that echo), dropped
        self.sync_reads = 0  # reads sent first to find a device's answers in order again
        self._logs = {"echo": EpisodeLog(), "duplicate": EpisodeLog(), "late": EpisodeLog()}

    @property
    def noisy(self) -> bool:
        """True while the line is noisy: the last flush never saw it fall quiet."""
        return self.line.noisy

    @property
    def noisy_reads(self) -> int:
        """Failed reads after which the line never fell quiet."""
        return self.line.noisy_reads

    @property
    def flushed_bytes(self) -> int:
        """Bytes discarded that were no whole frame (noise, fragments, overflow)."""
        return self.line.flushed_bytes

    @property
    def connected(self) -> bool:
        """True while the port is open."""
        return self.line.connected

    async def connect(self) -> None:
        """Open and configure the port.

        Raises:
            LinkDown: the port does not exist or cannot be opened or configured.
        """
        await self.line.connect()

    def close(self) -> None:
        """Close the port."""
        self.line.close()

    def _drop_idle_frames(self) -> None:
        """A late answer while nobody reads (the device held off, the line idle): its
        arrival ends its device's window now, not at the next read's start."""
        while (frame := valid_frame_at_start(self._buf)) is not None:
            self._drop_stray(frame)

    def _drop_stray(self, frame: bytes) -> None:
        """Drop ``frame`` from the buffer's start: a repeat of its device's last answer is
        a duplicate, anything else a late answer. Logged once per episode."""
        del self._buf[: len(frame)]
        kind = "duplicate" if self.devices.is_repeat(frame) else "late"
        if kind == "duplicate":
            self.duplicate_answers += 1
        else:
            self.late_answers += 1
            self.devices.late_came(frame[0])
        self._log_once(kind, frame[0])

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
        while (frame := valid_frame_at_start(self._buf)) is not None:
            self._drop_stray(frame)
        self.line.flushed_bytes += len(self._buf)
        self._buf.clear()

    def hold_off_s(self, device_id: int) -> float:
        """Seconds before ``device_id`` may be asked again: until ``repeat_guard_s`` after
        its last answer, so that a repeat of that answer cannot pass for the next one, and
        until its late-answer window after a failed read has passed."""
        return self.devices.hold_off_s(device_id)

    async def wait_hold_off(self, device_id: int) -> None:
        """See Link.wait_hold_off: woken early when a late-answer window is cut short."""
        await self.devices.wait_hold_off(device_id)

    def _answered_by(self, device_id: int, frame: bytes) -> None:
        """A whole, valid answer (registers or an exception) from ``device_id``."""
        self.devices.answered(device_id, frame)
        self.line.quiet_again()

    async def _drop_early(self, request: bytes, sent_end: float, device_id: int) -> bool:
        """Wait until our request is off the wire and drop what arrived before: an answer
        cannot begin earlier (a stale frame read late from the port, another device's).
        An echoing adapter's copy of the request is kept for _receive, or dropped here
        with what followed it. True when the echo was dropped here."""
        if (left := sent_end - time.monotonic()) > 0:
            await asyncio.sleep(left)
        early, self.line.early = min(self.line.early, len(self._buf)), 0
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
        while early > 0 and (frame := valid_frame_at_start(self._buf)) is not None:
            self._drop_stray(frame)
            early -= len(frame)
        if early > 0:
            self.line.flushed_bytes += early
            del self._buf[:early]
        return echo

    async def read(
        self, device_id: int, function_code: int, address: int, count: int, timeout_s: float
    ) -> list[int]:
        """See Link.read."""
        if not self.line.connected:
            raise LinkDown(f"{self.port} is not open")
        await self.wait_hold_off(device_id)  # the bus waits this out before taking the line
        self.line.reading = True
        try:
            return await self._read(device_id, function_code, address, count, timeout_s)
        finally:
            self.line.reading = False

    async def _read(
        self, device_id: int, function_code: int, address: int, count: int, timeout_s: float
    ) -> list[int]:
        if self.devices.owes(device_id, function_code, count):
            # A late answer to an earlier read of this block may still come, however late,
            # and would pass for this one's (no transaction id). So first ask something
            # whose answer nothing owed can look like: once it is in, the device (which
            # answers in order) has nothing older to send.
            sync_fc, sync_count = self.devices.sync_shape(device_id, function_code, count)
            self.sync_reads += 1
            # Nothing it owes is older than this block's request: whatever it sends during
            # the sync read answers that request or a later one, so a frame of another
            # shape, or one that may be a late answer followed by silence, leaves nothing
            # of the block's shape to come. (An older request's answer may precede the
            # block's, which a device that queues requests still sends after it.)
            first = self.devices.owes_first(device_id, function_code, count)
            try:
                await self._exchange(
                    device_id, sync_fc, address, sync_count, timeout_s, True, first
                )
            except (ExceptionAnswer, InOrderAgain):
                pass  # a refusal is an answer all the same; InOrderAgain: see _exchange
            except WrongAnswer:
                if not first:
                    raise
            except LinkTimeout:
                if sync_fc != function_code:
                    self.devices.other_unanswered(device_id)
                raise
            await self.devices.wait_hold_off(device_id)  # its repeat guard
        return await self._exchange(device_id, function_code, address, count, timeout_s)

    async def _exchange(
        self,
        device_id: int,
        function_code: int,
        address: int,
        count: int,
        timeout_s: float,
        sync: bool = False,
        block_first: bool = False,
    ) -> list[int]:
        """One request and its answer. ``sync``: a read only to find the device's answers
        in order again (see _read): an exception answer to a function it owes a late
        answer of may be that late answer, so it is dropped as late, not taken.
        ``block_first``: the block synced for is the oldest request the device owes an
        answer to; a frame from it and then silence until the deadline is InOrderAgain."""
        await self.line.quiet()
        self._drop_leftovers()
        request = rtu_frame(device_id, read_pdu(function_code, address, count))
        # The request cannot be off the wire before its line time after the write.
        sent_end = self.line.sent_end = time.monotonic() + len(request) * self.char_s
        self.line.early = 0
        self.line.write(request)
        self.line.last_activity = sent_end
        deadline = sent_end + timeout_s
        try:
            echo_seen = await self._drop_early(request, sent_end, device_id)
            frame = await self._receive(
                device_id, function_code, count, deadline, request, echo_seen, sync, block_first
            )
            registers = registers_of(rtu_answer_pdu(frame, device_id), function_code, count)
        except WrongAnswer as exc:
            self._answered_by(device_id, exc.frame)  # it answered: nothing late to come
            raise
        except InOrderAgain as exc:
            # It answered after our sync request and fell silent, owing nothing older than
            # the block's request: a slave answers in order, so that frame answered the
            # block's request (or one after it, the block's lost), or was the sync read's
            # own; only the sync read's answer can still follow. Failing the
            # read instead left the device owing a new shape each time: a device that
            # refuses the sync read (exception 02, which may be the late answer it owes)
            # failed poll after poll.
            self._answered_by(device_id, exc.frame)
            self.devices.owe(device_id, function_code, count)  # a slow answer to it
            raise
        except asyncio.CancelledError:
            # The request is on the wire and its answer may still come (a poller stopped
            # by a reload, the line kept open): held off as after a timeout.
            self.devices.read_failed(device_id, timeout_s, function_code, count)
            raise
        except (LinkTimeout, FrameError) as exc:
            quiet = await self.line.flush()
            self.devices.read_failed(device_id, timeout_s, function_code, count)
            # The answer completed meanwhile (it began just before the deadline) is its
            # late answer: counted, and it ends the device's hold-off.
            self._drop_leftovers()
            if quiet:
                self.line.quiet_again()
                raise
            self.line.noise_seen(device_id)
            raise FrameError("noise", f"noise on the line ({exc})") from exc
        except ExceptionAnswer:
            self._answered_by(device_id, frame)  # it may repeat too
            raise
        self._answered_by(device_id, frame)
        return registers

    def _stray(
        self, frame: bytes, device_id: int, function_code: int, count: int, sync: bool
    ) -> bool:
        """A whole, valid frame that is not the answer to our request (see not_ours); in a
        sync read also our device's exception answer that may be a late one."""
        if not_ours(frame, device_id, function_code, count):
            return True
        return sync and bool(frame[1] & 0x80) and not self.devices.owes_nothing(frame)

    async def _receive(
        self,
        device_id: int,
        function_code: int,
        count: int,
        deadline: float,
        request: bytes,
        echo_seen: bool,
        sync: bool = False,
        block_first: bool = False,
    ) -> bytes:
        wrong: FrameError | None = None  # our device's frame that answered another request
        heard: bytes | None = None  # our device's last frame dropped as a late answer
        while True:
            while (stray := valid_frame_at_start(self._buf)) is not None and self._stray(
                stray, device_id, function_code, count, sync
            ):
                if not echo_seen and stray == request:
                    # Our request read back: a request for registers 0x0300-0x03FF is a
                    # valid frame too (byte count 3, closed by its CRC). The echo, below.
                    break
                if stray[0] == device_id and not_ours(stray, device_id, function_code, count):
                    wrong = mismatch(stray, function_code, count)
                    if self.devices.owes_nothing(stray):
                        # No late answer of it can come: this is its answer, wrong (a
                        # block it cannot serve whole). Waiting on would hold the line
                        # for its whole timeout, and hold the device off after.
                        del self._buf[: len(stray)]
                        raise WrongAnswer(stray, wrong)
                if stray[0] == device_id:
                    heard = stray
                self._drop_stray(stray)
            frame = complete_frame(self._buf, count)
            # An adapter that echoes what it sends puts our request before the answer;
            # without this every read on such a line fails its CRC.
            echo = "no" if echo_seen else echo_state(self._buf, request, frame)
            if echo == "echo":
                self._drop_echo(request, device_id)
                echo_seen = True
                continue
            if frame is not None and echo == "no":
                del self._buf[: len(frame)]
                return frame
            if not await self.line.wait_data(deadline):
                if self._buf:
                    raise FrameError("short", f"incomplete answer ({len(self._buf)} bytes)")
                if sync and block_first and heard is not None:
                    raise InOrderAgain(heard)
                if wrong is not None:
                    # A device that always answers so (a block it cannot serve whole)
                    # fails as what it is, not as a silent one.
                    raise wrong
                raise LinkTimeout("no answer in time")
