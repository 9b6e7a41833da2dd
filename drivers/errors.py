"""The drivers' error family: what a driver may raise to its caller.

No third-party exception type (pymodbus, serial, OSError) leaves ``drivers/``: the edge
translates it into one of these, chained with ``raise ... from``.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base of every error raised by ``drivers``."""


class ProfileError(DriverError, ValueError):
    """A register profile file is missing or invalid.

    Attributes:
        source: the file (or resource name) the profile came from.
        row: index of the offending register row, or None for file-level errors.
        line: 1-based line in the file, when known.
    """

    def __init__(
        self, message: str, *, source: str, row: int | None = None, line: int | None = None
    ) -> None:
        self.source = source
        self.row = row
        self.line = line
        where = source if line is None else f"{source}:{line}"
        if row is not None:
            where += f": registers[{row}]"
        super().__init__(f"{where}: {message}")


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
    "DeviceConnectionError",
    "DeviceError",
    "DeviceExceptionResponse",
    "DeviceProtocolError",
    "DeviceTimeout",
    "DriverError",
    "ProfileError",
]
