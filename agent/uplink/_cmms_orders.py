"""Which CMMS work order each asset in fault has: kept in the store, across restarts.

A CMMS uplink opens one work order per asset and fault (agent.uplink._workorder.order_key:
the asset the configuration names; its sensors and channels are one machine) and updates
it with the later records of any of its channels. The asset -> work order map is saved in
the store's state table (through the store's writer thread, like the monitor's state)
before the record that opened or updated the order is marked delivered, so an agent killed
in between finds it again: the request is retried (the CMMS replays its answer) and the map
saved then. An order ends once all its channels cleared (its row then keeps only the
detection time of that last clear, for a finding detected before it and delivered late:
OpenOrder.taken_up), the asset was repaired or the CMMS no longer has it (its row
deleted); a refused raise removes it, so an escalation never updates an earlier fault's
order. So the map holds at most one entry per asset, and never more than MAX_ORDERS (the
ended are forgotten first, then those of assets no longer configured, then the oldest
opened: their later records open a new order). Loading reads this uplink's keys only (a range on the
state table's primary key), at most twice MAX_ORDERS of them, then bounded.

Entries of agents before this version (one per channel episode, under LEGACY_PREFIX) are
taken over at the first load: one per asset (the latest opened; its channels those of all
of them), and the old rows deleted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import asdict

from agent.store import Outbox
from agent.uplink._workorder import OpenOrder

log = logging.getLogger(__name__)

PREFIX = "uplink/{uplink}/asset_order/"  # + the asset id (agent.uplink._workorder.order_key)
LEGACY_PREFIX = "uplink/{uplink}/work_order/"  # + kind/asset/sensor/channel (before)
MAX_ORDERS = 10_000  # far more assets than one gateway watches in fault at once


def _order(key: str, value: str) -> OpenOrder | None:
    try:
        raw = json.loads(value)
        raw["channels"] = tuple(raw.get("channels", ()))
        return OpenOrder(**raw)
    except (ValueError, TypeError, AttributeError) as exc:  # damaged: that asset opens anew
        log.warning("work order of %s unreadable in the store (%s): a later record of that "
                    "asset opens a new one", key, exc)  # fmt: skip
        return None


class EpisodeOrders:
    """The open work order of each asset in fault, for one uplink.

    Args:
        uplink: the uplink's name (its entries are its own).
        outbox: the store that keeps them; None keeps them in memory only (a transport
            built without a store, e.g. by a test).
        limit: at most this many kept (beyond it, the ended are forgotten first, then
            those of assets not `configured`, then the oldest opened).
        configured: the asset ids the configuration names (None: all are taken for
            configured): an asset a reload removed with its order open never clears.
    """

    def __init__(
        self,
        uplink: str,
        outbox: Outbox | None,
        limit: int = MAX_ORDERS,
        configured: Collection[str] | None = None,
    ) -> None:
        self.prefix = PREFIX.format(uplink=uplink)
        self.legacy = LEGACY_PREFIX.format(uplink=uplink)
        self.outbox = outbox
        self.limit = max(1, limit)
        self.configured = None if configured is None else frozenset(configured)
        self._orders: dict[str, OpenOrder] | None = None

    async def get(self, key: str) -> OpenOrder | None:
        """The asset's open work order, if the uplink opened one."""
        return (await self._load()).get(key)

    async def put(self, key: str, order: OpenOrder | None) -> None:
        """Keep (or, with None, forget: its row deleted) the asset's work order; on disk
        when this returns.

        Raises:
            StoreError: the store did not take it (nothing changed).
        """
        orders = await self._load()
        if orders.get(key) == order:
            return
        if order is None:
            await self._drop([key])
            orders.pop(key, None)
            return
        if self.outbox is not None:
            value = json.dumps(asdict(order), sort_keys=True)
            await self.outbox.append([], {self.prefix + key: value})
        orders[key] = order
        await self._bound(orders)

    async def _drop(self, keys: list[str]) -> None:
        if self.outbox is not None and keys:
            await self.outbox.drop_state([self.prefix + k for k in keys])

    async def _bound(self, orders: dict[str, OpenOrder]) -> None:
        """Forget the oldest opened orders beyond the limit (their assets' next records
        open new ones)."""
        extra = len(orders) - self.limit
        if extra <= 0:
            return

        # Ended orders first (they only wait for a late finding), then those of assets no
        # longer configured (a reload removed them: no clear of theirs will come), then
        # the oldest opened.
        def keep(k: str) -> tuple[bool, bool, int]:
            configured = self.configured is None or k in self.configured
            return orders[k].ended is None, configured, orders[k].seq

        oldest = sorted(orders, key=keep)[:extra]
        await self._drop(oldest)
        for k in oldest:
            log.warning("work order %s of %s forgotten: more than %d assets have an open "
                        "work order", orders.pop(k).work_order, k, self.limit)  # fmt: skip

    async def _load(self) -> dict[str, OpenOrder]:
        if self._orders is not None:
            return self._orders
        orders: dict[str, OpenOrder] = {}
        if self.outbox is not None:
            # Up to twice the limit: an agent killed between keeping an order and
            # forgetting the oldest left one row too many, bounded below (read only
            # `limit` by key, the asset whose key sorts last would be invisible).
            saved = await self.outbox.load_state(self.prefix, 2 * self.limit)
            for key, value in saved.items():
                order = _order(key, value) if value else None
                if order is not None:
                    orders[key[len(self.prefix) :]] = order
            await self._take_over(orders)  # bounds them
        self._orders = orders
        return orders

    async def _take_over(self, orders: dict[str, OpenOrder]) -> None:
        """Entries kept per channel episode by an agent before this version: one per asset.

        Read a page (at most `limit` rows) at a time until none is left, each page's rows
        deleted once their assets' rows are written: a map an earlier agent kept for more
        channels than `limit` is taken over whole at the first start, not a page per start
        (the assets of the rest would open second orders meanwhile)."""
        assert self.outbox is not None
        while old := await self.outbox.load_state(self.legacy, self.limit):
            taken: dict[str, OpenOrder] = {}
            for key, value in old.items():
                episode = key[len(self.legacy) :]
                # kind/asset/sensor/channel: ids never hold a slash, a channel may (the
                # axis names of a site's own register profile or payload decoder: de/z).
                parts = episode.split("/", 3)
                order = _order(key, value) if value and len(parts) == 4 else None
                if order is None:
                    continue
                asset = parts[1]
                was = taken.get(asset) or orders.get(asset)
                channels = (*(was.channels if was else ()), episode)
                if was is not None and was.seq > order.seq:
                    order = was
                taken[asset] = OpenOrder(**{**asdict(order), "channels": channels})
            if taken:
                await self.outbox.append(
                    [],
                    {self.prefix + a: json.dumps(asdict(o), sort_keys=True)
                     for a, o in taken.items()},
                )  # fmt: skip
                orders.update(taken)
            await self.outbox.drop_state(list(old))
        await self._bound(orders)
