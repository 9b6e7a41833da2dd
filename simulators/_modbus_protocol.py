"""Modbus TCP framing for the simulator: MBAP header + PDU, in plain struct. No I/O.

One request frame in gives one answer frame out, carrying that request's transaction
and device ids (the stock pymodbus server does not guarantee that; see DESIGN.md).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit (device) id
MBAP_SIZE = MBAP.size  # 7
MAX_PDU = 253  # Modbus spec: 256-byte RTU ADU minus address and CRC
MAX_READ = 125

ILLEGAL_FUNCTION = 1
ILLEGAL_DATA_ADDRESS = 2
ILLEGAL_DATA_VALUE = 3
SERVER_DEVICE_FAILURE = 4
GATEWAY_TARGET_FAILED = 11


class FrameError(ValueError):
    """The byte stream is not Modbus TCP; the connection should be closed."""


@dataclass(frozen=True, slots=True)
class Request:
    """One decoded request frame."""

    transaction_id: int
    device_id: int
    pdu: bytes

    @property
    def function_code(self) -> int:
        """The PDU's function code (0 for an empty PDU)."""
        return self.pdu[0] if self.pdu else 0


def parse_header(header: bytes) -> tuple[int, int, int]:
    """(transaction id, device id, remaining PDU length) from a 7-byte MBAP header.

    Raises:
        FrameError: not Modbus (protocol id) or an impossible length.
    """
    tid, pid, length, unit = MBAP.unpack(header)
    if pid != 0:
        raise FrameError(f"protocol id {pid} is not Modbus")
    if not 2 <= length <= MAX_PDU + 1:
        raise FrameError(f"MBAP length {length} out of range")
    return tid, unit, length - 1


def frame(transaction_id: int, device_id: int, pdu: bytes) -> bytes:
    """An MBAP frame around ``pdu``."""
    return MBAP.pack(transaction_id, 0, len(pdu) + 1, device_id) + pdu


def exception_pdu(function_code: int, code: int) -> bytes:
    """A Modbus exception response PDU."""
    return bytes((function_code | 0x80, code))


def read_request_pdu(function_code: int, address: int, count: int) -> bytes:
    """A read-registers request PDU (for tests and clients)."""
    return struct.pack(">BHH", function_code, address, count)


RegisterSource = Callable[[int, int], list[int] | None]


def answer_read(pdu: bytes, function_code: int, read: RegisterSource) -> bytes:
    """The answer PDU to a read-registers request.

    Args:
        pdu: the request PDU.
        function_code: the read function this device serves (3 holding, 4 input).
        read: ``read(address, count)`` -> registers, or None when out of the map.
    """
    fc = pdu[0]
    if fc != function_code:
        return exception_pdu(fc, ILLEGAL_FUNCTION)
    if len(pdu) != 5:
        return exception_pdu(fc, ILLEGAL_DATA_VALUE)
    address, count = struct.unpack(">HH", pdu[1:5])
    if not 1 <= count <= MAX_READ:
        return exception_pdu(fc, ILLEGAL_DATA_VALUE)
    words = read(address, count)
    if words is None:
        return exception_pdu(fc, ILLEGAL_DATA_ADDRESS)
    return struct.pack(f">BB{count}H", fc, 2 * count, *words)


def rtu_crc(data: bytes) -> int:
    """Modbus RTU CRC-16, computed bit by bit (independent of the agent's table version)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            lsb = crc & 1
            crc >>= 1
            if lsb:
                crc ^= 0xA001
    return crc


def rtu_frame(device_id: int, pdu: bytes) -> bytes:
    """An RTU frame: device id, PDU, CRC low byte first."""
    body = bytes((device_id,)) + pdu
    return body + struct.pack("<H", rtu_crc(body))
