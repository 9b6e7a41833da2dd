"""Modbus read requests and answers as bytes: TCP (MBAP) and RTU (CRC) framing. Pure.

Only function codes 3 and 4 (read holding / input registers) are needed. Every answer is
checked against its request here (device id, function code, byte count, CRC, transaction
id), so no answer can be credited to another request whatever the transport does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from drivers.decoders import MAX_READ_REGISTERS

MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit (device) id
MBAP_SIZE = MBAP.size  # 7
READ_FUNCTIONS = (3, 4)


class FrameError(ValueError):
    """An answer that is not a valid answer to the request (wrong id, size, CRC...).

    Attributes:
        reason: a short machine-readable kind: ``wrong_device``, ``wrong_function``,
            ``byte_count``, ``crc``, ``short``, ``transaction``, ``protocol``, ``noise``
            (RTU: the line never fell quiet after the failed read).
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class ExceptionAnswer(Exception):
    """The device answered with a Modbus exception code."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"exception {code}")


def read_pdu(function_code: int, address: int, count: int) -> bytes:
    """A read-registers request PDU."""
    if function_code not in READ_FUNCTIONS:
        raise ValueError(f"function {function_code} is not a register read (3 or 4)")
    if not 1 <= count <= MAX_READ_REGISTERS:
        raise ValueError(f"count {count} outside 1..{MAX_READ_REGISTERS}")
    return struct.pack(">BHH", function_code, address, count)


def answer_pdu_size(count: int) -> int:
    """Bytes in a normal answer PDU to a read of ``count`` registers."""
    return 2 + 2 * count


def registers_of(pdu: bytes, function_code: int, count: int) -> list[int]:
    """The registers in an answer PDU, checked against the request.

    Raises:
        ExceptionAnswer: the device answered with an exception code.
        FrameError: wrong function code or byte count.
    """
    if not pdu:
        raise FrameError("short", "empty answer")
    fc = pdu[0]
    if fc == function_code | 0x80:
        if len(pdu) != 2:
            raise FrameError("short", f"exception answer of {len(pdu)} bytes")
        raise ExceptionAnswer(pdu[1])
    if fc != function_code:
        raise FrameError("wrong_function", f"answer with function {fc}, asked {function_code}")
    if len(pdu) < 2 or pdu[1] != 2 * count or len(pdu) != 2 + 2 * count:
        got = pdu[1] if len(pdu) > 1 else None
        raise FrameError(
            "byte_count",
            f"answer with byte count {got} in {len(pdu)} bytes, asked {count} registers",
        )
    return list(struct.unpack(f">{count}H", pdu[2:]))


# --- TCP (MBAP) ----------------------------------------------------------------------


def tcp_frame(transaction_id: int, device_id: int, pdu: bytes) -> bytes:
    """An MBAP frame around ``pdu``."""
    return MBAP.pack(transaction_id, 0, len(pdu) + 1, device_id) + pdu


@dataclass(frozen=True, slots=True)
class TcpHeader:
    """A decoded MBAP header."""

    transaction_id: int
    device_id: int
    pdu_size: int


def parse_tcp_header(header: bytes) -> TcpHeader:
    """The MBAP header's fields.

    Raises:
        FrameError: not Modbus (protocol id) or an impossible length.
    """
    tid, pid, length, unit = MBAP.unpack(header)
    if pid != 0:
        raise FrameError("protocol", f"protocol id {pid} is not Modbus")
    if not 2 <= length <= 254:
        raise FrameError("protocol", f"MBAP length {length} out of range")
    return TcpHeader(tid, unit, length - 1)


# --- RTU -----------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus RTU CRC-16 (polynomial 0xA001, initial 0xFFFF)."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def rtu_frame(device_id: int, pdu: bytes) -> bytes:
    """An RTU frame: device id, PDU, CRC (low byte first)."""
    body = bytes((device_id,)) + pdu
    return body + crc16(body).to_bytes(2, "little")


def rtu_expected_size(head: bytes, count: int) -> int | None:
    """Total size of the RTU answer whose first bytes are ``head`` (None: need 2 bytes).

    A normal read answer is id, fc, byte count, data, CRC; an exception is id, fc|0x80,
    code, CRC.
    """
    if len(head) < 2:
        return None
    if head[1] & 0x80:
        return 5
    return 3 + 2 * count + 2


def rtu_answer_pdu(frame: bytes, device_id: int) -> bytes:
    """The PDU of an RTU answer frame, after checking its CRC and device id.

    Raises:
        FrameError: bad CRC, too short, or another device's answer.
    """
    if len(frame) < 5:
        raise FrameError("short", f"frame of {len(frame)} bytes")
    body, crc = frame[:-2], int.from_bytes(frame[-2:], "little")
    if crc16(body) != crc:
        raise FrameError("crc", "CRC mismatch (garbled frame)")
    if body[0] != device_id:
        raise FrameError("wrong_device", f"answer from device {body[0]}, asked {device_id}")
    return body[1:]


def char_time_s(baudrate: int, parity: str, stop_bits: int, bytesize: int = 8) -> float:
    """Seconds one character takes on the line (start + data + parity + stop bits)."""
    bits = 1 + bytesize + (0 if parity == "N" else 1) + stop_bits
    return bits / baudrate


def inter_frame_gap_s(baudrate: int, char_s: float) -> float:
    """The RTU silent interval between frames: 3.5 characters, 1.75 ms above 19200 baud
    (Modbus over serial line v1.02, section 2.5.1.1)."""
    return 0.00175 if baudrate > 19200 else 3.5 * char_s


def rtu_exchange_chars(count: int) -> int:
    """Characters on the line for one read of ``count`` registers: request + answer."""
    return 8 + 5 + 2 * count
