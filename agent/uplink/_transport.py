"""What a transport does for the shared delivery loop: send items, and probe the far end."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from agent.store import StoredItem
from agent.uplink.errors import UplinkError


@dataclass(slots=True)
class SendResult:
    """The outcome of one send.

    Attributes:
        delivered: items the far end acknowledged (a 2xx, a successful PUBACK).
        error: why the rest failed, None when nothing failed.
        failed: the items the error applies to.
        skipped: items this uplink does not carry, each with why (a clear opens no work
            order): settled for this uplink without being sent, so they neither wait
            forever nor hold back the disk budget.
    """

    delivered: list[StoredItem]
    error: UplinkError | None = None
    failed: list[StoredItem] = field(default_factory=list)
    skipped: list[tuple[StoredItem, str]] = field(default_factory=list)


class Transport(Protocol):
    """One way to reach a backend (HTTP POST, MQTT publish).

    A transport never raises from `send` or `probe` for a delivery problem: it returns or
    answers False. Entering it opens what it needs (a session), never the network.
    """

    kind: str  # "http", "mqtt", "cmms"
    target: str  # where it delivers, without secrets (for status and logs)

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def send(self, items: list[StoredItem]) -> SendResult:
        """Deliver one batch of one class; what was acknowledged and what failed."""
        ...

    async def probe(self) -> bool:
        """True when the far end answers again (cheap: no alert is sent)."""
        ...


async def tcp_probe(host: str, port: int, timeout_s: float) -> bool:
    """True when a TCP connection to host:port opens within timeout_s (then closed)."""
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(timeout_s):
            await writer.wait_closed()
    return True
