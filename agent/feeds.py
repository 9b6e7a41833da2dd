"""What goes into the outbox besides the monitor's alerts: gateway_fault alerts for store
faults (and a store quarantined at start), and periodic feature summaries.

Each has its own task and bounded queue, off the reading path: a summary never blocks the
analysis (a full queue drops it, counted), and a fault alert goes through the same ordered
store writes as every alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from agent.analysis.monitor import Update
from agent.config import Config
from agent.gateway_faults import quarantine_draft, store_fault_draft
from agent.store import Outbox, StoreError, StoreFault
from agent.summaries import SummaryAggregator, SummaryDraft
from drivers.reading import Reading, utc_now

log = logging.getLogger(__name__)

SUMMARY_QUEUE_SIZE = 256  # summaries waiting for the store (dropped and counted beyond)
FAULT_QUEUE_SIZE = 16


class Counters(Protocol):
    summaries_total: int
    summaries_dropped_total: int
    store_faults_total: int


class OutboxFeeds:
    """The two feeds; the runtime runs `faults()` and `summaries()` as tasks.

    Args:
        config: the validated configuration.
        persist: stores an update through the runtime's ordered writes.
        counters: where summaries and store faults are counted.
    """

    def __init__(
        self, config: Config, persist: Callable[[Update], None], counters: Counters
    ) -> None:
        self._persist = persist
        self._counters = counters
        self._faults: asyncio.Queue[StoreFault] = asyncio.Queue(maxsize=FAULT_QUEUE_SIZE)
        self._summaries: asyncio.Queue[SummaryDraft] = asyncio.Queue(SUMMARY_QUEUE_SIZE)
        self._config = config
        self._aggregator: SummaryAggregator | None = None
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Take a (re)loaded configuration. The summary windows start again when what they
        are built from changed (summaries, uplinks, sensors, assets); queued ones go on."""
        sm = config.summaries
        basis = (sm, bool(config.uplinks), config.sensors, config.assets)
        old = self._config
        if self._aggregator is None or basis != (
            old.summaries,
            bool(old.uplinks),
            old.sensors,
            old.assets,
        ):
            self._aggregator = (  # without an uplink a summary would only fill the budget
                None
                if sm is None or not config.uplinks
                else SummaryAggregator(config, interval_s=sm.interval_s, sensors=sm.sensors)
            )
        self._config = config

    def reading(self, reading: Reading) -> None:
        """Fold an analysed reading into its sensor's summary (no I/O)."""
        if self._aggregator is None:
            return
        draft = self._aggregator.add(reading)
        if draft is None:
            return
        try:
            self._summaries.put_nowait(draft)
        except asyncio.QueueFull:
            self._counters.summaries_dropped_total += 1  # telemetry: never blocks analysis

    def store_fault(self, fault: StoreFault) -> None:
        """Called by the outbox after it recovered its file at run time."""
        self._counters.store_faults_total += 1
        with contextlib.suppress(asyncio.QueueFull):  # bounded; each is also logged
            self._faults.put_nowait(fault)

    async def summaries(self, outbox: Outbox) -> None:
        """Store feature summaries as they close (a lower class than alerts)."""
        while True:
            draft = await self._summaries.get()
            try:
                await outbox.append_summaries([draft])
                self._counters.summaries_total += 1
            except (StoreError, ValueError) as exc:
                self._counters.summaries_dropped_total += 1
                log.warning("feature summary of %s not stored: %s", draft.sensor_id, exc)

    async def faults(self, outbox: Outbox) -> None:
        """A gateway_fault alert for each store fault (and for a startup quarantine)."""
        q = outbox.quarantined
        if q is not None:
            self._persist(Update(drafts=[quarantine_draft(self._config, q, utc_now())]))
        while True:
            fault = await self._faults.get()
            draft = store_fault_draft(self._config, fault, utc_now())
            self._persist(Update(drafts=[draft]))
