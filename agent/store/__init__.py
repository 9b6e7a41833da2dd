"""Durable store-and-forward: the SQLite outbox of alerts and monitor state."""

from agent.store._lock import StoreInUseError, lock_path, store_lock
from agent.store._ops import OutboxStats, StoredAlert
from agent.store._outbox import Outbox
from agent.store._schema import Quarantined
from agent.store._writer import WriterCounters
from agent.store.errors import StoreClosedError, StoreError, StoreFullError

__all__ = [
    "Outbox",
    "OutboxStats",
    "Quarantined",
    "StoreClosedError",
    "StoreError",
    "StoreFullError",
    "StoreInUseError",
    "StoredAlert",
    "WriterCounters",
    "lock_path",
    "store_lock",
]
