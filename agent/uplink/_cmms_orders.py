"""Which CMMS work order each open alert episode has: kept in the store, across restarts.

A CMMS uplink opens one work order per alert episode (kind, asset, sensor, channel) and
updates it with the episode's later records. The episode -> work order map is saved in the
store's state table (through the store's writer thread, like the monitor's state) before
the record that opened or updated the order is marked delivered, so an agent killed in
between finds it again: the request is retried (the CMMS replays its answer) and the map
saved then. A raise replaces its episode's entry (a new episode), so the map holds at most
one entry per configured channel and kind; a raise the CMMS refused removes it, so an
escalation never updates the work order of an earlier episode.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from agent.store import Outbox
from agent.uplink._workorder import OpenOrder

log = logging.getLogger(__name__)

PREFIX = "uplink/{uplink}/work_order/"  # + the episode key (agent.uplink._workorder.episode)


class EpisodeOrders:
    """The open work order of each episode, for one uplink.

    Args:
        uplink: the uplink's name (its entries are its own).
        outbox: the store that keeps them; None keeps them in memory only (a transport
            built without a store, e.g. by a test).
    """

    def __init__(self, uplink: str, outbox: Outbox | None) -> None:
        self.prefix = PREFIX.format(uplink=uplink)
        self.outbox = outbox
        self._orders: dict[str, OpenOrder] | None = None

    async def get(self, episode: str) -> OpenOrder | None:
        """The episode's open work order, if the uplink opened one."""
        return (await self._load()).get(episode)

    async def put(self, episode: str, order: OpenOrder | None) -> None:
        """Keep (or, with None, forget) the episode's work order; on disk when this returns.

        Raises:
            StoreError: the store did not take it (nothing changed).
        """
        orders = await self._load()
        if orders.get(episode) == order:
            return
        if self.outbox is not None:
            value = "" if order is None else json.dumps(asdict(order), sort_keys=True)
            await self.outbox.append([], {self.prefix + episode: value})
        if order is None:
            orders.pop(episode, None)
        else:
            orders[episode] = order

    async def _load(self) -> dict[str, OpenOrder]:
        if self._orders is not None:
            return self._orders
        orders: dict[str, OpenOrder] = {}
        if self.outbox is not None:
            for key, value in (await self.outbox.load_state()).items():
                if not key.startswith(self.prefix) or not value:
                    continue
                try:
                    orders[key[len(self.prefix) :]] = OpenOrder(**json.loads(value))
                except (ValueError, TypeError) as exc:  # damaged: that episode opens anew
                    log.warning("work order of %s unreadable in the store (%s): a later "
                                "record of that episode opens a new one", key, exc)  # fmt: skip
        self._orders = orders
        return orders
