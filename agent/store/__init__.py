"""Durable store-and-forward: the SQLite outbox of alerts, summaries and monitor state."""

from agent.store._files import Quarantined, check_path
from agent.store._lock import (
    StoreInUseError,
    become_store_owner,
    lock_path,
    refuse_squatted,
    store_lock,
)
from agent.store._ops import StoredItem
from agent.store._outbox import Outbox, outbox_for, uplink_carries
from agent.store._queries import OutboxStats, UplinkBacklog
from agent.store._routing import EPISODES, FINDINGS
from agent.store._salvage import StoreFault
from agent.store._sqlite import ro_uri
from agent.store._view import (
    READ_BUSY_S,
    REQUEUE_CHUNK,
    StoreView,
    read_only,
    requeue_chunks,
    requeue_in_place,
)
from agent.store._writer import WriterCounters
from agent.store.errors import (
    StoreBusyError,
    StoreClosedError,
    StoreError,
    StoreFullError,
    StoreSquattedError,
)

__all__ = [
    "EPISODES",
    "FINDINGS",
    "READ_BUSY_S",
    "REQUEUE_CHUNK",
    "Outbox",
    "OutboxStats",
    "Quarantined",
    "StoreBusyError",
    "StoreClosedError",
    "StoreError",
    "StoreFault",
    "StoreFullError",
    "StoreInUseError",
    "StoreSquattedError",
    "StoreView",
    "StoredItem",
    "UplinkBacklog",
    "WriterCounters",
    "become_store_owner",
    "check_path",
    "lock_path",
    "outbox_for",
    "read_only",
    "refuse_squatted",
    "requeue_chunks",
    "requeue_in_place",
    "ro_uri",
    "store_lock",
    "uplink_carries",
]
