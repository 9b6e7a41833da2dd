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


def test_an_item_held_by_the_endpoints_refusal_is_set_aside_for_a_while_only() -> None:
    """An item refused, after an item behind it went through, by an answer the endpoint
    gave items it took later: the items behind it go without it, for ASIDE_S; then (or
    after a failure: an outage proves nothing) it goes first again, in order."""
    c = Canary()
    good = _item(1)
    assert _refuse(c, good) == "held"
    c.delivered([good])  # the refusal is the endpoint's
    assert _proven_then_refused(c) == ["held", "held"]
    bad, behind = _item(9), [_item(10), _item(11)]
    assert c.aside == bad.item_id
    assert c.behind([bad, *behind]) == behind
    c.aside_until = time.monotonic() - 1
    assert c.behind([bad, *behind]) is None and c.aside is None
    assert _proven_then_refused(c) == ["held", "held"] and c.aside == bad.item_id
    c.failed()
    assert c.behind([bad, *behind]) is None
