"""Helpers for the uplink tests: a delivery loop as a task, and bounded polling."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import pytest

from agent.store import Outbox
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


class Longest(random.Random):
    """Always the longest backoff (full jitter could make every wait near 0)."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def assert_held_back(
    up: Delivery, outbox: Outbox, pending: int, *, failures: int = 1, settle_s: float = 0.0
) -> None:
    """Once `up` has failed `failures` times (and `settle_s` later): nothing dead-lettered,
    all `pending` items still pending, and the error says the refusals came in a row."""
    await until(lambda: true(up.status.failures_total >= failures))
    if settle_s:
        await asyncio.sleep(settle_s)
    stats = await outbox.stats()
    assert stats.dead_lettered == 0 and stats.pending == pending, stats
    assert "refusal(s) in a row" in (up.status.last_error or ""), up.status.last_error
