"""Summaries that give way to an alert: a summaries send under way is cancelled for it.

Over HTTP a summaries batch under way gives way to an alert stored meanwhile (cancelled,
sent again after it), MAX_GIVE_WAYS times in a row at most: the next one is sent to its
end, so a steady stream of alerts cannot starve a slow summaries endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib

from agent.store import Outbox, StoredItem, StoreError
from agent.uplink._transport import SendResult, Transport

# Summaries batches cut short for an alert in a row; the next one is sent to its end.
MAX_GIVE_WAYS = 3


class GiveWay:
    """Sends one uplink's summaries batches, giving way to its alerts.

    Attributes:
        count: summaries sends cancelled for an alert since one ended.
    """

    def __init__(self, name: str, transport: Transport, outbox: Outbox) -> None:
        self.name = name
        self.transport = transport
        self.outbox = outbox
        self.count = 0

    def may(self, items: list[StoredItem]) -> bool:
        """Whether this send is of summaries that give way to an alert. Not past
        MAX_GIVE_WAYS in a row: a summaries endpoint that answers, only more slowly than
        alerts come (a slow link, a busy backend), had every send cancelled and got the
        same batch again and again while no summary was ever delivered."""
        if items[0].class_name == "alert" or not getattr(self.transport, "summaries_yield", False):
            return False
        if self.count < MAX_GIVE_WAYS:
            return True
        self.count = 0  # this one is sent to its end (an answer or timeout_s)
        return False

    async def send(self, items: list[StoredItem]) -> SendResult | None:
        """Send a batch of summaries, cancelled when an alert is stored meanwhile (None).

        Summaries may go to their own endpoint (summaries_url): one that hangs (a firewall
        dropping its packets) held each new alert back for up to timeout_s. A cancelled
        batch stays pending and is sent again after the alert (the far end dedupes on ids).
        """
        send = asyncio.ensure_future(self.transport.send(items))
        wake = self.outbox.wake_event(self.name)
        try:
            while not send.done():
                waiter = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait([send, waiter], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if send.done() or not wake.is_set():
                    continue
                wake.clear()  # a summary appended wakes us too: only an alert counts
                if await self._alert_waits():
                    send.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await send
                    if send.cancelled():
                        self.count += 1
                        return None
        finally:
            if not send.done():  # this loop is cancelled (a stop): so is the send
                send.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await send
        self.count = 0
        return send.result()

    async def _alert_waits(self) -> bool:
        try:
            first = await self.outbox.next_batch(self.name, 1)
        except StoreError:
            return False  # the summaries' send goes on; the next step reads again
        return bool(first) and first[0].class_name == "alert"
