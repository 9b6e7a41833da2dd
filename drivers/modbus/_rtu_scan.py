"""Finding RTU frames in the bytes read off a line (pure).

RTU frames are delimited by silence, which a pseudo-terminal or a USB adapter's buffering
does not keep: frames are found at the start of the receive buffer by their length (from
the function code and byte count) and CRC, and judged against the request being read.
"""

from __future__ import annotations

from drivers.modbus._frames import FrameError, crc16, rtu_expected_size


class WrongAnswer(FrameError):
    """Our device's whole, valid answer to our request, with another function code or
    byte count (``frame``: that answer)."""

    def __init__(self, frame: bytes, why: FrameError) -> None:
        super().__init__(why.reason, str(why))
        self.frame = frame


class InOrderAgain(Exception):
    """A sync read's deadline passed after its device sent a frame that may have been a
    late answer (``frame``: the last one) and nothing after it: the device answers in
    order again (see drivers.modbus._rtu)."""

    def __init__(self, frame: bytes) -> None:
        super().__init__("the device answered before the sync read's deadline")
        self.frame = frame


def valid_frame_at_start(buf: bytes | bytearray) -> bytes | None:
    """The complete answer frame (any device, valid CRC) at the buffer's start."""
    if len(buf) < 3:
        return None
    size = 5 if buf[1] & 0x80 else 3 + buf[2] + 2
    if len(buf) < size or crc16(bytes(buf[: size - 2])) != int.from_bytes(
        buf[size - 2 : size], "little"
    ):
        return None
    return bytes(buf[:size])


def complete_frame(buf: bytes | bytearray, count: int) -> bytes | None:
    """The answer-sized frame (to a read of ``count`` registers) at the buffer's start,
    if it has all arrived."""
    size = rtu_expected_size(bytes(buf[:2]), count)
    if size is None or len(buf) < size:
        return None
    return bytes(buf[:size])


def echo_state(buf: bytes | bytearray, request: bytes, frame: bytes | None) -> str:
    """``echo`` when the buffer starts with our request read back (not a valid answer
    ``frame``), ``partial`` while it may still become one, else ``no``."""
    if frame is not None and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little"):
        return "no"  # a valid answer wins over a byte-for-byte coincidence
    n = min(len(buf), len(request))
    if n == 0 or buf[:n] != request[:n]:
        return "no"
    return "echo" if n == len(request) else "partial"


def not_ours(frame: bytes, device_id: int, function_code: int, count: int) -> bool:
    """A whole, valid frame that cannot answer our request: another device's, or our
    device's answer to another request (another function or byte count)."""
    if frame[0] != device_id:
        return True
    if frame[1] == function_code | 0x80:
        return False  # an exception answer to our function: ours
    return frame[1] != function_code or frame[2] != 2 * count


def mismatch(frame: bytes, function_code: int, count: int) -> FrameError:
    """Why our device's whole, valid ``frame`` does not answer our request."""
    if frame[1] & 0x7F != function_code:
        return FrameError(
            "wrong_function", f"answer with function {frame[1]}, asked {function_code}"
        )
    return FrameError("byte_count", f"answer with byte count {frame[2]}, asked {count} registers")
