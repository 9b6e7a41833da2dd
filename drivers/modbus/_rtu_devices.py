"""When each device on an RTU line may be asked again, and which late frames it owes.

RTU frames carry no transaction id, so what a device may still send decides whether a
frame from it can be taken as an answer. Per device this keeps its last good answer (a
repeat of it is a duplicate, not the next answer), the late-answer window after a failed
read, and the shapes (function code, byte count) of the answers its failed reads still
owe. Bounded: at most 256 device ids, MAX_OWED_SHAPES shapes each.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from drivers.decoders import MAX_READ_REGISTERS

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
# A failed read's answer is looked out for this long (a frame of its shape is then taken
# as late, and the same block is asked only after a sync read); an answer later than this,
# or than MAX_OWED_SHAPES other failed blocks of the device, is not a device's behaviour.
LATE_MEMORY_S = 600.0
MAX_DEVICES = 256


class DeviceTimes:
    """The answer history of the devices on one line.

    Args:
        repeat_guard_s: the least time between a device's answer and the next request to
            it, so that a repeat of that answer cannot pass for the next one.
    """

    def __init__(self, repeat_guard_s: float) -> None:
        self.repeat_guard_s = repeat_guard_s
        self.hold_cut = asyncio.Event()  # a late-answer window was cut short
        # device id -> (monotonic end, frame) of its last good answer: at most 256 entries
        self._answered: dict[int, tuple[float, bytes]] = {}
        # device id -> monotonic end of its late-answer window, from its last failed read
        # until its next answer: at most 256 entries
        self._failed: dict[int, float] = {}
        # device id -> its failed requests since its last answer whose late answer has not
        # come (the window ends early at 0): at most 256 entries
        self._unanswered: dict[int, int] = {}
        # device id -> (function code, byte count) of those requests' answers: a frame of
        # another shape from it is no late answer. Each with its last failure (monotonic),
        # forgotten after LATE_MEMORY_S; at most MAX_OWED_SHAPES per device.
        self._owed: dict[int, dict[tuple[int, int], float]] = {}
        # device ids whose sync read of the other register function went unanswered (a
        # device that ignores a function it lacks, against the spec): synced with a part
        # of the block from then on. At most 256 entries.
        self._other_silent: set[int] = set()

    def hold_off_s(self, device_id: int) -> float:
        """Seconds before ``device_id`` may be asked again: until ``repeat_guard_s`` after
        its last answer, and until its late-answer window after a failed read has passed."""
        last = self._answered.get(device_id)
        until = self._failed.get(device_id, 0.0)
        if last is not None:
            until = max(until, last[0] + self.repeat_guard_s)
        return max(0.0, until - time.monotonic())

    async def wait_hold_off(self, device_id: int) -> None:
        """Return once ``device_id`` may be asked again; woken early when a late-answer
        window is cut short."""
        while (hold := self.hold_off_s(device_id)) > 0:
            self.hold_cut.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hold):
                    await self.hold_cut.wait()

    def is_repeat(self, frame: bytes) -> bool:
        """Whether ``frame`` repeats its device's last answer (a flaky slave, a repeater).
        A device that failed since its last answer sends late answers, not repeats."""
        last = self._answered.get(frame[0])
        return frame[0] not in self._failed and last is not None and last[1] == frame

    def owes_nothing(self, frame: bytes) -> bool:
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

    def late_came(self, device_id: int) -> None:
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
            self.hold_cut.set()

    def read_failed(self, device_id: int, timeout_s: float, function_code: int, count: int) -> None:
        """Its answer (to ``count`` registers with ``function_code``) may still come: not
        asked again (other devices are) until the late-answer window has passed or its late
        answers have come."""
        window = min(max(LATE_WINDOW_FACTOR * timeout_s, LATE_WINDOW_MIN_S), LATE_WINDOW_MAX_S)
        self._failed[device_id] = time.monotonic() + window
        self.owe(device_id, function_code, count)

    def owe(self, device_id: int, function_code: int, count: int) -> None:
        """An answer (to ``count`` registers with ``function_code``) may still come from
        ``device_id``: a frame of its shape is dropped as late, a read of it synced first."""
        if len(self._unanswered) < MAX_DEVICES or device_id in self._unanswered:
            self._unanswered[device_id] = self._unanswered.get(device_id, 0) + 1
            shapes = self._owed.setdefault(device_id, {})
            now = time.monotonic()
            for shape, at in list(shapes.items()):
                if now - at > LATE_MEMORY_S:
                    del shapes[shape]
            shapes.pop((function_code, 2 * count), None)  # re-added as the newest
            if len(shapes) >= MAX_OWED_SHAPES:
                del shapes[next(iter(shapes))]  # the oldest failure
            shapes[(function_code, 2 * count)] = now

    def owes(self, device_id: int, function_code: int, count: int) -> bool:
        """Whether a late answer to an earlier read of this shape (``count`` registers
        with ``function_code``) may still come from ``device_id``: it would pass for the
        answer to this one, whenever it comes."""
        shapes = self._owed.get(device_id)
        if not shapes or device_id not in self._unanswered:
            return False
        failed_at = shapes.get((function_code, 2 * count))
        return failed_at is not None and time.monotonic() - failed_at <= LATE_MEMORY_S

    def owes_first(self, device_id: int, function_code: int, count: int) -> bool:
        """Whether the device's oldest failed request whose answer may still come is one of
        this shape (``count`` registers with ``function_code``): a device answering in
        order then sends that answer before anything asked after it. Known only while each
        owed shape stands for one request and no late frame has come since (a late frame
        is not matched to its request: the oldest shape may have been answered)."""
        shapes = self._owed.get(device_id)
        return (
            bool(shapes)
            and next(iter(shapes)) == (function_code, 2 * count)
            and self._unanswered.get(device_id) == len(shapes)
        )

    def sync_shape(self, device_id: int, function_code: int, count: int) -> tuple[int, int]:
        """A read (function code, register count) whose normal answer no failed read of
        ``device_id`` owes: one register of the other register function first when no
        failed read of it is owed, then a part of the block, then a longer block.

        An exception answer carries only the function code, so an exception to a sync read
        of a function the device owes a late answer of may be that late answer: it is
        dropped and the read waits out its timeout. The other function first, then: its
        answer, registers or an exception (a device that implements holding registers
        only answers 01, one whose map has no such address 02), is the sync read's for
        certain. A part of the block came first, and a device that refuses a read cutting
        a 32-bit value in half (exception 02) failed every poll after a lost request. A
        device that left the other function unanswered (see other_unanswered) is asked a
        part of the block first."""
        owed = self._owed.get(device_id, {})
        other = 4 if function_code == 3 else 3
        candidates = []
        if device_id not in self._other_silent and all(fc != other for fc, _ in owed):
            candidates.append((other, 1))
        candidates += [(function_code, c) for c in range(count - 1, 0, -1)]
        candidates.append((other, 1))
        candidates += [(function_code, c) for c in range(count + 1, MAX_READ_REGISTERS + 1)]
        # At most MAX_OWED_SHAPES are owed: one of the 125 candidates is free.
        return next((fc, c) for fc, c in candidates if (fc, 2 * c) not in owed)

    def other_unanswered(self, device_id: int) -> None:
        """Its sync read of the other register function timed out: the next sync reads
        ask a part of the block (one unanswered per lost request cost a failed poll)."""
        self._other_silent.add(device_id)

    def answered(self, device_id: int, frame: bytes) -> None:
        """A whole, valid answer (registers or an exception) from ``device_id`` to our
        request. A slave serves one request at a time and answers in order (Modbus over
        serial line v1.02, 2.4: it ignores requests while busy): nothing older can follow,
        so it owes nothing any more."""
        self._answered[device_id] = (time.monotonic(), frame)
        self._failed.pop(device_id, None)
        self._unanswered.pop(device_id, None)
        self._owed.pop(device_id, None)
