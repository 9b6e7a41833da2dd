"""Timers shared by thousands of pollers: one event-loop timer per time slot, not per poll.

With 2000 devices at 1 Hz, one asyncio timer per wake-up and another per request timeout
cost the agent a heap push, a heap pop (a dozen Python-level comparisons each) and a
handle for every poll. A wheel rounds each due time *up* to its grain and keeps one
timer per slot: every future due in that slot is resolved by it, in one event-loop turn,
so the pollers of a slot also send their requests together. Nothing is ever early; a
wake-up or a timeout is at most one grain late.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

Due = Callable[[asyncio.Future[Any]], None]


def _wake(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


class Wheel:
    """Resolve futures at their due time, rounded up to ``grain_s``.

    Args:
        grain_s: slot width, seconds.
        on_due: what happens to a future that is still pending when its slot fires
            (default: its result is set to None).
    """

    def __init__(self, grain_s: float, on_due: Due = _wake) -> None:
        if grain_s <= 0:
            raise ValueError("grain_s must be positive")
        self.grain_s = grain_s
        self._on_due = on_due
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: dict[int, list[asyncio.Future[Any]]] = {}

    def add(self, fut: asyncio.Future[Any], when: float) -> None:
        """Resolve ``fut`` at loop time ``when`` (rounded up), unless it is done by then."""
        loop = fut.get_loop()
        if loop is not self._loop:  # a new event loop: the old one's timers are gone
            self._loop, self._slots = loop, {}
        slot = math.ceil(when / self.grain_s)
        futs = self._slots.get(slot)
        if futs is None:
            futs = self._slots[slot] = []
            loop.call_at(slot * self.grain_s, self._fire, slot)
        futs.append(fut)

    def _fire(self, slot: int) -> None:
        on_due = self._on_due
        for fut in self._slots.pop(slot, ()):
            if not fut.done():
                on_due(fut)

    async def sleep_until(self, when: float) -> None:
        """Sleep until loop time ``when`` (at most one grain later)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.add(fut, when)
        await fut

    def __len__(self) -> int:
        """Futures waiting (done ones included until their slot fires)."""
        return sum(len(f) for f in self._slots.values())
