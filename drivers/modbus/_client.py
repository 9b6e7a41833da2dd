"""One Modbus TCP connection to one device, pymodbus inside, our errors outside.

This is the only module that imports pymodbus. Every answer is checked against its
request (transaction id, device id, function code, register count) here, so a dependency
upgrade that loosens pymodbus's own checks cannot credit an answer to the wrong request.
"""

from __future__ import annotations

import logging

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

from drivers.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceTimeout,
)

_REQUESTS: dict[int, type[ModbusPDU]] = {
    3: ReadHoldingRegistersRequest,
    4: ReadInputRegistersRequest,
}


def silence_pymodbus_logging(level: int = logging.CRITICAL) -> None:
    """Keep pymodbus from logging every failed request (we log once per failure streak).

    Call once at start-up; it changes the process-wide ``pymodbus`` logger.
    """
    logging.getLogger("pymodbus").setLevel(level)


class ModbusTcpLink:
    """A TCP connection to one device (own socket; never shared with another device).

    Args:
        sensor_id: for error messages.
        host: device or gateway host.
        port: TCP port.
        device_id: Modbus unit id.
        timeout_s: connect timeout and answer timeout, per request.
    """

    def __init__(
        self, sensor_id: str, *, host: str, port: int, device_id: int, timeout_s: float
    ) -> None:
        self.sensor_id = sensor_id
        self.device_id = device_id
        self.address = f"{host}:{port}"
        self._host = host
        self._port = port
        self._timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | None = None

    def _new_client(self) -> AsyncModbusTcpClient:
        # Defaults replaced: 3 s x 3 retries per read and a reconnect delay growing to 300 s
        # are far too slow for a 1 s poll. reconnect_delay=0 turns pymodbus's background
        # reconnect task off: the poller reconnects on its own schedule (next tick, or
        # after its back-off), so exactly one owner decides when to dial. A fresh client per
        # connection: nothing (transaction counter, pending future, a late connection_lost
        # callback) carries over from a connection we dropped.
        return AsyncModbusTcpClient(
            self._host,
            port=self._port,
            name=f"modbus[{self.sensor_id}]",
            timeout=self._timeout_s,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
        )

    def _err(self, cls: type[DeviceError], message: str) -> DeviceError:
        return cls(
            message, sensor_id=self.sensor_id, address=self.address, device_id=self.device_id
        )

    @property
    def connected(self) -> bool:
        """True while the TCP connection is up."""
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open the connection (dropping any previous one).

        Raises:
            DeviceConnectionError: refused, unreachable or timed out.
        """
        self.close()
        client = self._new_client()
        try:
            ok = await client.connect()
        except (ModbusException, OSError) as exc:
            client.close()
            raise self._err(DeviceConnectionError, f"connect failed: {exc}") from exc
        if not ok:
            client.close()
            raise self._err(DeviceConnectionError, "connect failed (refused or timed out)")
        self._client = client

    def close(self) -> None:
        """Drop the connection; late answers to earlier requests die with it."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(self, function_code: int, address: int, count: int) -> list[int]:
        """Read ``count`` registers from ``address`` and check the answer belongs to us.

        Raises:
            DeviceTimeout: no answer in time.
            DeviceExceptionResponse: the device answered with a Modbus exception.
            DeviceProtocolError: an answer for another device, function or size.
            DeviceConnectionError: the connection is down.
        """
        client = self._client
        if client is None or not client.connected:
            raise self._err(DeviceConnectionError, "not connected")
        request = _REQUESTS[function_code](address=address, count=count, dev_id=self.device_id)
        try:
            response = await client.execute(False, request)
        except ModbusIOException as exc:
            text = str(exc)
            if "No response" in text:
                raise self._err(DeviceTimeout, "no answer in time") from exc
            raise self._err(DeviceProtocolError, text) from exc
        except ConnectionException as exc:
            raise self._err(DeviceConnectionError, f"connection lost: {exc}") from exc
        except (ModbusException, OSError) as exc:
            raise self._err(DeviceProtocolError, f"{type(exc).__name__}: {exc}") from exc
        return self._check(request, response, function_code, count)

    def _check(
        self, request: ModbusPDU, response: ModbusPDU | None, function_code: int, count: int
    ) -> list[int]:
        if response is None:
            raise self._err(DeviceProtocolError, "empty answer")
        if self.device_id and response.dev_id != self.device_id:
            raise self._err(
                DeviceProtocolError, f"answer from device {response.dev_id}, asked {self.device_id}"
            )
        if response.transaction_id != request.transaction_id:
            raise self._err(
                DeviceProtocolError,
                f"answer to transaction {response.transaction_id}, asked {request.transaction_id}",
            )
        if isinstance(response, ExceptionResponse) or response.function_code & 0x80:
            raise DeviceExceptionResponse(
                code=response.exception_code,
                function_code=function_code,
                sensor_id=self.sensor_id,
                address=self.address,
                device_id=self.device_id,
            )
        if response.function_code != function_code:
            raise self._err(
                DeviceProtocolError,
                f"answer with function {response.function_code}, asked {function_code}",
            )
        registers = list(response.registers)
        if len(registers) != count:
            raise self._err(
                DeviceProtocolError, f"answer with {len(registers)} registers, asked {count}"
            )
        return registers
