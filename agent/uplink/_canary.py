"""The canary rule: when a refusal dead-letters an item, and when it holds the backlog.

Refused items: a too-large batch is halved (one item too large on its own, or an MQTT
message over the broker's maximum packet size, is dead-lettered); a refused batch is
resent one item at a time so one bad record cannot take good ones with it; a refused
single item is dead-lettered for this uplink with the reason (an operator can requeue it:
`edge-agent requeue`). But a refusal that could be the endpoint's rather than the item's
(any answer an endpoint refusing everything gives every item: a proxy's 400 page, http://
sent to a TLS port, a WAF's 406, a CDN's error page) dead-letters nothing by itself: an
item so refused is dead-lettered only when refused again after an item behind it (on this
uplink) was delivered, i.e. the endpoint takes items, so the refusal is the item's own,
and refused once more when resent alone at once (two refusals in a row: an endpoint that
flips between refusing and taking per request, a flaky proxy, met the held item on each
refusal and the canary on each success, and dead-lettered good items). A refusal an
item met and was later delivered after is the endpoint's, never an item's verdict: an
item refused so is held, never dead-lettered (a proxy failing at random, 30 % of its
answers its 400 page, dead-lettered about 1 good alert in 100 with two refusals in a row).
Such an answer is the endpoint's for ENDPOINT_MEMORY_S after an item last met it and went
through (ENDPOINT_SIGNATURES kept): a backend that refused everything with its own "invalid
record" during a deploy does not hold a truly invalid record back for good after it.
Meanwhile such an item, refused again after an item behind it went through, is set aside
for ASIDE_S at a time: the items behind it (but its own episode's) go in full batches
without it; before, each went alone as a canary with the held item resent before each
(123 POSTs for 60 good records behind one bad one).
The refused first item is held pending and an item behind it is sent at once (the canary,
CANARY_MAX_DEPTH items back at most, further back each round it is refused too, so a run
of bad items blocks none behind it for long; never a record of an alert episode, same
kind, asset, sensor and channel, an item ahead of it belongs to: the held raise's clear
delivered first reached the backend and CMMS before the raise, so the first item of
another episode is taken, CANARY_SEARCH looked at); a refused canary ends the round with a
backoff (an ERROR once, the uplink failing in /healthz and status), after which the held
item is tried first again, so fixing the URL delivers the backlog once and in order.
While everything is refused nothing is dead-lettered, however long it lasts and however
often the agent restarts (the rule needs no count that a restart would reset). With no
item behind the held one (a quiet plant), or only records of its episodes, there is no
canary: the held item is retried after each backoff, failing, until it is delivered or
an item of another episode arrives behind it;
the pending summaries (which otherwise wait behind any alert) are sent meanwhile; they
prove nothing of the alerts' endpoint (never a canary: a batch is of one class), so their
delivery ends neither the hold nor the alerts' backoff (agent.uplink._delivery), which
they fill: the held item is tried again when it ends, not once every summary is sent.
This is for refusals of a batch narrowed down to one item (http) and a CMMS's refusals
other than a 422 (a proxy's page names no work order); a refusal that is certainly one
item's own (too large, an MQTT PUBACK, a CMMS 422, a record no work order can be built
from) is dead-lettered at once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from agent.store import StoredItem
from agent.uplink.errors import UplinkRejected

# A refused canary is tried this many items behind the held one at most (doubling from 1).
CANARY_MAX_DEPTH = 64
# From there, this many items are looked at for one of no episode ahead of it.
CANARY_SEARCH = 64
# Refusals proven the endpoint's (an item refused so was delivered after): this many kept,
# each for this long after it was last proven.
ENDPOINT_SIGNATURES = 8
ENDPOINT_MEMORY_S = 600.0
# An item held by such a refusal while the items behind it are delivered is set aside for
# this long: the items behind it go in full batches meanwhile (then it is tried again).
ASIDE_S = 60.0
_EPISODIC = frozenset({"severity", "trend", "sensor_fault"})


@dataclass(slots=True)
class Canary:
    """One uplink's state under the canary rule (see the module docstring).

    Attributes:
        refusals: refusals that may be the endpoint's since a delivery.
        held: the first pending item, so refused: kept pending.
        held_class: its class ("alert", "summary"): only a delivery of that class ends it.
        due: the held item was just refused: an item behind it next.
        depth: how far behind the held item the canary is taken.
        ahead: the items ahead of the canary under way.
        proven: ahead of a delivered canary: a refusal of one of these is its own (the
            endpoint takes items) ...
        rechecked: ... once refused twice in a row.
        refused_with: items held or rechecked, and the refusal (its `alike`) they met.
        endpoint_says: refusals an item met and was delivered after: the endpoint's
            (with the monotonic time it was last so proven).
        aside: an item held by such a refusal though an item behind it was delivered: the
            items behind it (but its episodes') go without it until `aside_until`
            (monotonic); before, each went alone as a canary, the held item resent
            before each (1 good record per 2 POSTs for up to ENDPOINT_MEMORY_S).
    """

    refusals: int = 0
    held: str | None = None
    held_class: str | None = None
    due: bool = False
    depth: int = 1
    ahead: frozenset[str] = frozenset()
    proven: frozenset[str] = frozenset()
    rechecked: frozenset[str] = frozenset()
    refused_with: dict[str, str] = field(default_factory=dict)
    endpoint_says: dict[str, float] = field(default_factory=dict)
    aside: str | None = None
    aside_until: float = 0.0

    def recheck(self, items: list[StoredItem], exc: UplinkRejected) -> bool:
        """Whether to send these items once more at once, alone, before taking a refusal
        after their canary was delivered as their own: an endpoint that flips between
        refusing and taking per request (a flaky proxy) met the held item on each refusal
        and the canary on each success, and dead-lettered good items."""
        ids = frozenset(it.item_id for it in items)
        if exc.too_large or exc.alike is None or not ids <= self.proven:
            return False
        if ids <= self.rechecked or self._endpoints(exc.alike):
            return False  # refused twice in a row: its own (or the endpoint's: held)
        self.rechecked = ids
        self._remember(ids, exc.alike)
        return True

    def hold_back(self, items: list[StoredItem], exc: UplinkRejected) -> bool:
        """Whether to keep these refused items pending instead of dead-lettering them now
        (see the module docstring): yes unless the refusal is certainly theirs, or they
        are refused again after an item behind them was delivered."""
        ids = frozenset(it.item_id for it in items)
        if (
            exc.too_large
            or exc.alike is None
            or (ids <= self.proven and not self._endpoints(exc.alike))
        ):
            self.proven -= ids
            self.rechecked -= ids
            for item_id in ids:  # dead-lettered: its refusal was its own
                self.refused_with.pop(item_id, None)
            if self.held in ids:
                self.held, self.held_class, self.depth = None, None, 1
            if self.aside in ids:
                self.aside = None
            return False
        if not self.ahead and len(items) == 1 and ids <= self.proven:
            # Refused again after an item behind it went through, by an answer the
            # endpoint gave items it took later: held, and set aside meanwhile.
            self.aside, self.aside_until = items[0].item_id, time.monotonic() + ASIDE_S
        self.refusals += len(items)
        self._remember(ids, exc.alike)
        if self.ahead:  # the canary: the next one is taken further back
            self.depth = min(len(self.ahead) * 2, CANARY_MAX_DEPTH)
        else:  # the first pending item: held, and one behind it tried at once
            self.held, self.held_class, self.due = items[0].item_id, items[0].class_name, True
        return True

    def delivered(self, items: list[StoredItem]) -> None:
        """Items were delivered: the endpoint takes items, nothing is held. But summaries
        (sent while an alert is held on a quiet plant, to their own endpoint maybe) say
        nothing of the alerts' endpoint: they leave a held alert held."""
        if self.held_class is None or any(it.class_name == self.held_class for it in items):
            self.refusals, self.held, self.held_class, self.depth = 0, None, None, 1
        if self.aside in {it.item_id for it in items}:
            self.aside = None
        self.proven -= {it.item_id for it in items}
        self.rechecked -= {it.item_id for it in items}
        for it in items:
            said = self.refused_with.pop(it.item_id, None)
            if said is not None:
                # Refused, then taken: that refusal was the endpoint's, not the item's.
                self.endpoint_says.pop(said, None)
                self.endpoint_says[said] = time.monotonic()
                while len(self.endpoint_says) > ENDPOINT_SIGNATURES:
                    del self.endpoint_says[next(iter(self.endpoint_says))]

    def _endpoints(self, alike: str) -> bool:
        """Whether this refusal was proven the endpoint's, lately."""
        at = self.endpoint_says.get(alike)
        return at is not None and time.monotonic() - at < ENDPOINT_MEMORY_S

    def _remember(self, ids: frozenset[str], alike: str) -> None:
        """The refusal these items met (bounded: the held item and a canary or so)."""
        for item_id in ids:
            self.refused_with.pop(item_id, None)
            self.refused_with[item_id] = alike
        while len(self.refused_with) > CANARY_MAX_DEPTH:
            del self.refused_with[next(iter(self.refused_with))]

    def failed(self) -> None:
        """A failure: a delivered canary proves the endpoint took items then, not after
        a failure (an outage, a proxy refusing everything again): a refusal after it may
        be the endpoint's again, so the items ahead of the canary are held again (and
        an item set aside goes first again, in order)."""
        self.proven = self.rechecked = frozenset()
        self.aside = None

    def behind(self, items: list[StoredItem]) -> list[StoredItem] | None:
        """`items` without the item set aside and the records of its episodes behind it
        (which must not overtake it); None when none is set aside (or its time is up), it
        is not among them, or nothing would be left."""
        if self.aside is not None and time.monotonic() >= self.aside_until:
            self.aside = None
        at = next((i for i, it in enumerate(items) if it.item_id == self.aside), None)
        if at is None:
            return None
        skipped = episodes(items[at])
        rest = items[:at]
        for item in items[at + 1 :]:
            keys = episodes(item)
            if keys & skipped:
                skipped |= keys
            else:
                rest.append(item)
        return rest or None

    def held_error(self, last_error: str | None, *, reason: str | None, quiet: bool) -> str:
        """Why the backlog is held back (the ERROR, /healthz's last_error)."""
        if quiet:
            return (
                f"{last_error or 'refused'}: the first pending item is held, "
                "refused with no item behind it to show whether the endpoint takes any "
                "(a quiet plant, or only records of its alert episode, which must not reach "
                "the backend before it): retried after each backoff, dead-lettered only once an "
                "item behind it is delivered"
            )
        return (
            f"{reason}: {self.refusals} refusal(s) in a row, none delivered between, "
            "the items behind the first one refused too: the endpoint (a proxy, a URL) "
            "may refuse everything, so the backlog stays pending, tried again after each "
            "backoff (an item is dead-lettered only once one behind it is delivered)"
        )


def canary_at(items: list[StoredItem], depth: int) -> int | None:
    """Where in `items` (the held one first) the canary is: the first item from `depth` on
    (or the last) of no alert episode an item ahead of it belongs to; None if there is none.

    A delivered canary goes before the items ahead of it: one of the same episode (the
    held raise's clear or escalation) reached the backend before its raise, and the
    backend and the CMMS build a case from raise -> escalate -> clear in that order. A
    clear carries no raise's id, so any record of the same kind, asset, sensor and channel
    (a later raise too: a clear ahead of it would close it) must keep its place."""
    if len(items) < 2:
        return None
    start = min(depth, len(items) - 1)
    ahead: set[tuple[str, ...]] = set()
    for item in items[:start]:
        ahead |= episodes(item)
    for k in range(start, len(items)):
        keys = episodes(items[k])
        if not keys & ahead:
            return k
        ahead |= keys
    return None


def episodes(item: StoredItem) -> set[tuple[str, ...]]:
    """The alert episodes (kind, asset, sensor, channel) a record belongs to: its own, or
    those a maintenance record closes (agent.store._episodes); none for a summary or a
    one-off event. An unreadable record counts as in none (it was stored as JSON)."""
    if item.class_name != "alert":
        return set()
    try:
        rec = json.loads(item.json)
        kind, asset = rec["kind"], rec["asset"]["id"]
        if kind == "maintenance":
            closed = (rec.get("evidence") or {}).get("closed_alerts") or ()
            return {
                (str(c.get("kind")), asset, str(c.get("sensor")), str(c.get("channel")))
                for c in closed
                if isinstance(c, dict)
            }
        if kind in _EPISODIC:
            return {(kind, asset, rec["sensor"]["id"], rec["sensor"]["channel"])}
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return set()
