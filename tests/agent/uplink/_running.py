"""Helpers for the uplink tests: a delivery loop as a task, and bounded polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from agent.uplink import Delivery


class Running:
    """Runs a delivery loop as a task for the duration of a with-block."""

    def __init__(self, uplink: Delivery) -> None:
        self.uplink = uplink
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Delivery:
        self.task = asyncio.create_task(self.uplink.run(), name="uplink[test]")
        return self.uplink

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def until(cond: Callable[[], Awaitable[bool]], timeout_s: float = 8.0) -> None:
    """Poll `cond` until it holds; fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def true(value: bool) -> bool:
    return value
