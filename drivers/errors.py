"""The drivers' error family: what a driver may raise to its caller.

No third-party exception type (pymodbus, serial, OSError) leaves ``drivers/``: the edge
translates it into one of these, chained with ``raise ... from``.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base of every error raised by ``drivers``."""


class DataFileError(DriverError, ValueError):
    """A data file (register profile, payload decoder) is missing or invalid.

    Attributes:
        source: the file (or resource name) it came from.
        line: 1-based line in the file, when known.
        column: 1-based column, when known.
        path: key path inside the document (``("registers", 3, "type")``), may be empty.
        message: what is wrong and what to write instead.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str,
        line: int | None = None,
        column: int | None = None,
        path: tuple[str | int, ...] = (),
    ) -> None:
        self.source, self.line, self.column, self.path = source, line, column, path
        self.message = message
        where = source
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        key = format_key_path(path)
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class ProfileError(DataFileError):
    """A register profile is missing or invalid (see DataFileError)."""


class DecoderError(DataFileError):
    """A payload decoder file is missing or invalid (see DataFileError)."""


class PayloadError(DriverError):
    """A message payload that cannot be used; it is dropped and counted.

    Attributes:
        reason: a short fixed label for metrics (``malformed_json``, ``missing_field``,
            ``wrong_type``, ``future_timestamp``...).
        detail: what exactly was wrong, for one log line (never the whole payload).
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


def format_key_path(path: tuple[str | int, ...]) -> str:
    """``registers[3].type`` from ``("registers", 3, "type")``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class DeviceError(DriverError):
    """A device could not be read.

    Attributes:
        sensor_id: the sensor's configured id.
        address: "host:port" (TCP) or the serial port path.
        device_id: the Modbus device (unit) id.
    """

    def __init__(self, message: str, *, sensor_id: str, address: str, device_id: int) -> None:
        self.sensor_id = sensor_id
        self.address = address
        self.device_id = device_id
        self.message = message
        super().__init__(f"{sensor_id} ({address} device {device_id}): {message}")


class DeviceTimeout(DeviceError):
    """The device did not answer within its time budget."""


class DeviceConnectionError(DeviceError):
    """The connection to the device (or its gateway) could not be made or was lost."""


class DeviceProtocolError(DeviceError):
    """An answer arrived but does not belong to the request (device id, function, count)."""


# Modbus exception codes (Modbus Application Protocol v1.1b3, section 7).
EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class DeviceExceptionResponse(DeviceError):
    """The device answered with a Modbus exception response.

    Attributes:
        code: the Modbus exception code (1 illegal function, 2 illegal address, ...).
        function_code: the request's function code.
    """

    def __init__(
        self, *, code: int, function_code: int, sensor_id: str, address: str, device_id: int
    ) -> None:
        self.code = code
        self.function_code = function_code
        name = EXCEPTION_NAMES.get(code, "unknown")
        super().__init__(
            f"Modbus exception {code} ({name}) to function {function_code}",
            sensor_id=sensor_id,
            address=address,
            device_id=device_id,
        )


__all__ = [
    "EXCEPTION_NAMES",
    "DataFileError",
    "DeviceConnectionError",
    "DeviceError",
    "DeviceExceptionResponse",
    "DeviceProtocolError",
    "DeviceTimeout",
    "DriverError",
    "ProfileError",
    "format_key_path",
]
