"""The canary rule's memory of refusals proven the endpoint's: it lasts, then ends."""

from __future__ import annotations

import time

from agent.store import StoredItem
from agent.uplink._canary import ENDPOINT_MEMORY_S, Canary
from agent.uplink.errors import UplinkRejected

PAGE = '400 text/html "invalid record"'


def _item(seq: int) -> StoredItem:
    return StoredItem(0, seq, 1, f"gw-01-{seq:012d}", "{}")


def _refused() -> UplinkRejected:
    return UplinkRejected("HTTP 400", uplink="up", status=400, reason="HTTP 400", alike=PAGE)


def _refuse(c: Canary, item: StoredItem) -> str:
    """A refusal of one item, as the delivery loop takes it: resent, held or dead."""
    if c.recheck([item], _refused()):
        return "resent"
    return "held" if c.hold_back([item], _refused()) else "dead"


def _proven_then_refused(c: Canary) -> list[str]:
    """An item whose canary went through, refused twice in a row."""
    bad = _item(9)
    c.proven = frozenset({bad.item_id})
    return [_refuse(c, bad), _refuse(c, bad)]


def test_a_refusal_an_item_went_through_after_holds_for_a_while_only() -> None:
    """A backend refusing every record with its own "invalid record" during a deploy, then
    taking them: that answer is the endpoint's, so an item meeting it is held, not
    dead-lettered; past ENDPOINT_MEMORY_S a truly invalid record is dead-lettered again
    instead of being held for good (and every item behind it sent one by one)."""
    c = Canary()
    good = _item(1)
    assert _refuse(c, good) == "held"  # the deploy
    c.delivered([good])  # the deploy over: it went through
    assert _proven_then_refused(c) == ["held", "held"]  # the answer is the endpoint's
    c.endpoint_says[PAGE] = time.monotonic() - ENDPOINT_MEMORY_S - 1
    assert _proven_then_refused(c) == ["resent", "dead"]  # long ago: the item's own
