"""What a bus needs from a connection (TCP socket or serial port), and its failures.

A link carries one request at a time (the bus guarantees it) and checks every answer
against its request before returning registers. Links raise these plain errors; the
poller turns them into the drivers' DeviceError family with the sensor's context.
"""

from __future__ import annotations

from typing import Protocol


class LinkDown(Exception):
    """The connection could not be made or was lost."""


class LinkTimeout(Exception):
    """No (complete) answer within the device's timeout."""


class Link(Protocol):
    """One connection a bus schedules requests on."""

    address: str
    late_answers: int  # answers that arrived after their request had timed out (dropped)
    duplicate_answers: int  # answers a device sent twice, the repeat dropped (RTU)
    echoes: int  # our own requests read back by an echoing RS-485 adapter (RTU)
    noisy_reads: int  # failed reads after which the line never fell quiet (RTU noise)
    noisy: bool  # the line is noisy now (RTU)
    sync_reads: int  # reads sent first as a device still owed a late answer (RTU)

    @property
    def connected(self) -> bool:
        """True while the connection is up."""
        ...

    async def connect(self) -> None:
        """Open the connection. Raises LinkDown."""
        ...

    async def read(
        self, device_id: int, function_code: int, address: int, count: int, timeout_s: float
    ) -> list[int]:
        """Read registers, checked against the request.

        Raises:
            LinkTimeout: no complete answer in time (the line was settled afterwards).
            LinkDown: the connection is down or was lost.
            FrameError: an answer that does not belong to this request.
            ExceptionAnswer: a Modbus exception response.
        """
        ...

    def hold_off_s(self, device_id: int) -> float:
        """Seconds before ``device_id`` may be asked again on this link (0: now)."""
        ...

    async def wait_hold_off(self, device_id: int) -> None:
        """Return once ``device_id`` may be asked again (see hold_off_s), which may come
        before hold_off_s said (an RTU device's late answer has arrived)."""
        ...

    def close(self) -> None:
        """Drop the connection; late answers die with it."""
        ...
