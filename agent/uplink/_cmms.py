"""CMMS transport: one work order per machine (asset) and fault, opened by its first
finding, updated by the later ones of any of its channels; every request idempotent.

The first record of an asset's fault that opens a work order (agent.uplink._workorder: a
raise, or an escalation, while the asset has no open order the uplink knows) is POSTed on
its own to the configured URL with `Idempotency-Key: <alert_id>` and a body built
deterministically from the stored record, so a retry (an answer lost, an agent killed
mid-request, a store recovered) is byte-identical and the CMMS answers with the work order
it already opened instead of opening a second one. The id it answers with is kept for the
asset in the store (agent.uplink._cmms_orders) before the record counts as delivered. The
asset's later findings, on any sensor and channel (a bearing's x axis after its z axis,
an escalation, a revision, a critical again), update that work order: a PATCH of
`update_url` (default `{url}/{id}`; with `mapping.update_method: post_override`, a POST
there with `X-HTTP-Method-Override: PATCH`, as Maximo takes it) raising its priority,
bringing its due date forward and appending the evidence as a note, under
`Idempotency-Key: <their alert_id>`, so a retry is applied once. The order covers the
channels whose findings it took; a channel's clear (a note with `mapping.on_clear: note`,
else nothing sent) takes it off, and the order ends when none is left or the asset's
maintenance record (the repair) comes: the asset's next finding opens a new one (one
detected before that last clear, delivered after it, takes the ended order up again). A work
order the CMMS no longer has (404) or that a person closed (409, status closed) is
replaced: the record opens a new one. Everything else the uplink is given (clears,
maintenance records, sensor and gateway faults, feature summaries) is settled unsent, with
why.

Status policy (agent.uplink._httpclient, plus):
- 201, 200 (a replay of the same key): delivered; the work order's id is logged and kept;
- 409 (a request with this key is still being processed): retried;
- 422 (this key was used with a different body): the work order exists, but our request
  for the alert changed since it was sent (its mapping or safety margin was edited):
  dead-lettered with the work order's id, never sent under another key;
- 400 and other refusals (usually a mapping error, or a proxy, WAF or wrong host in front
  of the CMMS answering every request alike: nginx's 400 "plain HTTP request sent to HTTPS
  port", ModSecurity's 406) could be the endpoint's: a finding so refused is dead-lettered
  only once one behind it is opened (agent.uplink._canary), so fixing the mapping or URL
  finds the findings still pending;
  a 422 is the CMMS's verdict on that request and never held back;
- 3xx: never followed; 401/403/407, 404/405, 408, 429, 5xx, no answer: retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import quote

from agent.config import CmmsUplink, public_url
from agent.store import Outbox, StoredItem, StoreError
from agent.uplink._answer import Answer
from agent.uplink._cmms_orders import EpisodeOrders
from agent.uplink._httpclient import REASON_CHARS, RETRYABLE_4XX, HttpClient
from agent.uplink._transport import SendResult
from agent.uplink._workorder import (
    AssetFacts,
    Update,
    WorkOrder,
    build,
    episode,
    no_work_order,
    note_only,
    opened,
    order_key,
    update,
)
from agent.uplink.errors import UplinkError, UplinkRejected, UplinkUnavailable

log = logging.getLogger(__name__)

RETRYABLE = RETRYABLE_4XX | {409}
SUMMARY_SKIPPED = "a feature summary opens no work order"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Item:
    """A stored alert as sent: its record, its channel episode (None: not a severity or
    trend), its asset's work-order key (order_key), its store seq, whether it is late
    (stored before the record that opened its asset's work order, sent after it: a
    requeued raise, a raise behind its escalation after a reload changed the asset's tier,
    since tier 1 goes first), and the channels in fault the asset's order covered (a new
    order replacing a gone one covers them too)."""

    record: Mapping[str, Any]
    episode: str | None
    key: str | None = None
    seq: int = 0
    late: bool = False
    channels: tuple[str, ...] = ()


def _answer_id(text: str, key: str = "id") -> str | None:
    """The work order's id in an answer ({"work_order": {"id"}}, {"data": {"id"}}, {"id"})."""
    try:
        obj: Any = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    for where in (obj, obj.get("work_order"), obj.get("workOrder"), obj.get("data")):
        if isinstance(where, dict) and isinstance(where.get(key), str | int):
            found = str(where[key])
            # "", "." or ".." in a URL's path names no order (a dot segment is resolved
            # away: the update would go to the collection, refused and retried for ever).
            return None if found.strip(".") == "" else found
    return None


class CmmsTransport(HttpClient):
    """POSTs work-order requests to a CMMS (probe: a HEAD on the URL, from HttpClient).

    Args:
        cfg: the `uplinks[].cmms` configuration (token_file already absolute).
        name: the uplink's name, for errors and logs.
        assets: per configured asset id, its zone table and planning horizon.
        site: the gateway's site, for the descriptions.
        outbox: the store that keeps each episode's work order across restarts (None: in
            memory only).
    """

    kind = "cmms"

    def __init__(
        self,
        cfg: CmmsUplink,
        *,
        name: str,
        assets: Mapping[str, AssetFacts],
        site: str | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        super().__init__(cfg, name=name)
        self.cfg: CmmsUplink = cfg
        self.assets = dict(assets)
        self.site = site
        self.orders = EpisodeOrders(name, outbox, configured=self.assets)

    def request(self, item: StoredItem) -> WorkOrder | str:
        """The work-order request for an item as if its episode had no work order, or why
        it opens none.

        Raises:
            UplinkRejected: the stored record lacks what a work order needs.
        """
        if item.class_name != "alert":
            return SUMMARY_SKIPPED
        with self._unbuildable(item):
            record = json.loads(item.json)
            return no_work_order(record) or build(
                record, self.cfg, self.assets, gateway_site=self.site
            )

    @contextlib.contextmanager
    def _unbuildable(self, item: StoredItem) -> Iterator[None]:
        try:
            yield
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            reason = (
                f"cannot build a work order from the stored record ({type(exc).__name__}: {exc})"
            )
            raise UplinkRejected(
                reason, uplink=self.name, status=None, reason=reason, per_item=True
            ) from exc

    async def _plan(self, item: StoredItem) -> tuple[WorkOrder | Update | str, _Item | None]:
        """What to send for an item: an update of its asset's open work order, a request
        opening one, or why nothing (with the record, for a work order that is gone)."""
        if item.class_name != "alert":
            return SUMMARY_SKIPPED, None
        with self._unbuildable(item):
            record = json.loads(item.json)
            ep, key = episode(record), order_key(record)
        row = order = None
        if key is not None:
            row = order = await self._orders(self.orders.get(key))
        if row is not None and row.ended is not None:
            # Ended when its last channel cleared: a finding detected before that clear
            # (stored after it: another sensor's readings delivered late, the same
            # reading's other axis) was in fault under it and takes it up again.
            with self._unbuildable(item):
                order = replace(row, ended=None) if row.taken_up(record) else None
        known = order.channels if order is not None else ()
        # Stored before the record that opened the asset's order (late): never the asset's
        # entry changed. An escalation opened it: a note on it (this may be its raise),
        # never a second order. A raise opened it: this record is an earlier fault's, as
        # without an order (a raise opens its own, a clear notes nothing), never a note on
        # a later fault's order. Not late: a raise or escalation of any channel of the
        # asset updates its open order (one machine, one work order); a clear notes it
        # only if its channel is one the order covers.
        late = row is not None and item.seq < row.seq
        state = record.get("state")
        earlier = late and order is not None and order.by_raise
        if earlier or (not late and state == "cleared" and ep not in known):
            order = None
        if state == "cleared" and self.cfg.mapping.on_clear != "note":
            order = None
        with self._unbuildable(item):
            it = _Item(record, ep, key, item.seq, late, known)
            if ep is None:  # a repair: it ends the asset's order, sends nothing
                return no_work_order(record) or self._build(record), it
            if order is not None:
                up = update(record, order, self.cfg, self.assets, gateway_site=self.site,
                            late=late)  # fmt: skip
                return up, it
            return no_work_order(record) or self._build(record), it

    def _build(self, record: Mapping[str, Any]) -> WorkOrder:
        return build(record, self.cfg, self.assets, gateway_site=self.site)

    async def _orders(self, call: Awaitable[T]) -> T:
        """The order map's answer; a store that fails it leaves the item pending."""
        try:
            return await call
        except StoreError as exc:
            raise UplinkUnavailable(
                f"uplink {self.name}: cannot read or keep the assets' work orders in the "
                f"store ({exc}); retried",
                uplink=self.name,
            ) from exc

    async def send(self, items: list[StoredItem]) -> SendResult:
        """One request per work order opened or updated, in order; stops at the first
        failure (the rest stays pending). Items that send nothing are returned as skipped."""
        delivered: list[StoredItem] = []
        skipped: list[tuple[StoredItem, str]] = []
        for i, item in enumerate(items):
            try:
                outcome = await self._one(item)
            except UplinkRejected as exc:
                return SendResult(delivered, exc, [item], skipped)
            except UplinkError as exc:
                if isinstance(exc, UplinkUnavailable):
                    exc.timed_out = False  # one work order per POST: a smaller batch is no faster
                return SendResult(delivered, exc, items[i:], skipped)
            if outcome is None:
                delivered.append(item)
            else:
                skipped.append((item, outcome))
        return SendResult(delivered, None, [], skipped)

    async def _one(self, item: StoredItem) -> str | None:
        """Send what one item calls for: None once the CMMS has it, else why nothing was sent.

        Raises:
            UplinkError: not done (UplinkRejected: refused, for this item).
        """
        request, it = await self._plan(item)
        if isinstance(request, str):
            if it is not None and not it.late:
                await self._ended(it)
            return request
        assert it is not None
        if isinstance(request, Update):
            gone = await self._update(request, it)
            if gone is None:
                return None
            if it.late:  # the asset's later records decided about its order
                return f"{gone}; this record was stored before the one that opened it"
            if note_only(it.record):  # nothing to raise: the gone order is not replaced
                await self._orders(self.orders.put(it.key or "", None))
                return f"{gone}; a {it.record['state']} record opens no work order"
            with self._unbuildable(item):
                request = self._build(it.record)
            log.warning("uplink[%s]: %s: alert %s opens a new one", self.name, gone, request.key)
        await self._open(request, it)
        return None

    async def _ended(self, it: _Item) -> None:
        """A record that sends nothing may end its asset's order: a clear of the last
        channel in fault it covers (on_clear: nothing), a repair of the asset."""
        if it.key is None or not it.channels:
            return
        if it.episode is None:  # a maintenance record: the asset was repaired
            await self._orders(self.orders.put(it.key, None))
        elif it.record.get("state") == "cleared" and it.episode in it.channels:
            order = await self._orders(self.orders.get(it.key))
            if order is not None and order.ended is None:
                at = str(it.record["detected_at"])
                await self._orders(self.orders.put(it.key, order.left(it.episode, at)))

    def _covering(self, it: _Item) -> tuple[str, ...]:
        """The channels a new order for the item covers: its own and those still in
        fault under the order it replaces."""
        assert it.episode is not None
        return (*(c for c in it.channels if c != it.episode), it.episode)

    async def _open(self, wo: WorkOrder, it: _Item) -> None:
        answer = await self.post(self.cfg.url, wo.body, {"Idempotency-Key": wo.key})
        if not answer.ok:
            err = await self._refusal(wo, answer)
            if it.episode is not None and not it.late and isinstance(err, UplinkRejected):
                existing = (
                    _answer_id(answer.text, "work_order_id") if answer.status == 422 else None
                )
                # A 422 names the order this key opened: the asset's later records update
                # it. Any other refusal: no order, so they must not update an older one.
                order = None if existing is None else opened(wo, existing, it.seq, (it.episode,))
                await self._orders(self.orders.put(it.key or "", order))
            raise err
        number = _answer_id(answer.text)
        if it.episode is not None and not it.late:
            order = None if number is None else opened(wo, number, it.seq, self._covering(it))
            await self._orders(self.orders.put(it.key or "", order))  # before it is delivered
        self._opened(wo, answer)

    async def _update(self, up: Update, it: _Item) -> str | None:
        """PATCH the episode's open work order (or, with mapping.update_method:
        post_override, POST it with X-HTTP-Method-Override: PATCH, as Maximo takes it).
        None once applied; why, if the work order is gone (the CMMS
        answered 404, or 409 closed: a person closed or deleted it)."""
        number = up.order.work_order
        url = self.cfg.update_endpoint(quote(number, safe=""))
        headers = {"Idempotency-Key": up.key}
        method = "PATCH"
        if self.cfg.mapping.update_method == "post_override":
            method, headers["X-HTTP-Method-Override"] = "POST", "PATCH"
        answer = await self.post(url, up.body, headers, method=method)
        if answer.ok:
            # Kept before it counts as delivered; the clear of the last channel in fault
            # ends the order (the asset's next raise opens a new one).
            ep = it.episode or ""
            done = it.record.get("state") == "cleared"
            at = str(it.record["detected_at"])
            after = up.order.left(ep, at) if done else up.order.joined(ep)
            if not it.late:  # a late record changes nothing the asset's later ones kept
                await self._orders(self.orders.put(it.key or "", after))
            how = "already updated (a retry)" if answer.replayed else "updated"
            log.info(
                "uplink[%s]: work order %s %s for alert %s (priority %s, due %s, opened by %s)",
                self.name, number, how, up.key, up.priority or "kept", up.due or "kept",
                up.order.opened_by,
            )  # fmt: skip
            return None
        json_answer = answer.content_type.endswith("json")
        if answer.status == 404 and json_answer:
            return f"work order {number} is gone from the CMMS (HTTP 404)"
        if answer.status == 409 and json_answer and '"closed"' in answer.text:
            return f"work order {number} is closed in the CMMS"
        what = f"the CMMS refused the update of work order {number} for alert {up.key}"
        raise await self._item_refused(url, answer, what, method)

    def _opened(self, wo: WorkOrder, answer: Answer) -> None:
        number = _answer_id(answer.text) or "(no id in the answer)"
        if not answer.replayed:
            log.info(
                "uplink[%s]: work order %s opened for alert %s (asset %s, priority %s, due %s)",
                self.name, number, wo.key, wo.asset, wo.priority, wo.due,
            )  # fmt: skip
        else:
            log.info(
                "uplink[%s]: alert %s already has work order %s (a retry; none opened)",
                self.name, wo.key, number,
            )  # fmt: skip

    async def _refusal(self, wo: WorkOrder, answer: Answer) -> UplinkError:
        if answer.status == 422:
            existing = _answer_id(answer.text, "work_order_id") or _answer_id(answer.text)
            if existing is not None:
                reason = (
                    f"HTTP 422: the CMMS already has work order {existing} for alert {wo.key} "
                    "(its Idempotency-Key) from a different request: this agent's request "
                    "for the alert changed since it was first sent (the uplink's mapping, "
                    "safety margin or the asset's planning horizon was edited); no second "
                    f"work order is opened. Check {existing} in the CMMS"
                )
                return self._refused("POST", self.cfg.url, 422, reason)
        what = f"the CMMS refused the work-order request for alert {wo.key}"
        return await self._item_refused(self.cfg.url, answer, what)

    async def _item_refused(
        self, url: str, answer: Answer, what: str, method: str = "POST"
    ) -> UplinkError:
        """The error a non-2xx answer to one work order's request means; a refusal (a 422:
        the body as it is never sent under another key; or any other) says `what` the
        CMMS refused and is this record's alone (the next ones are still sent)."""
        if answer.status == 422:
            reason = (
                f"HTTP 422: {answer.text[:REASON_CHARS]} ({what}; it is never sent under "
                "another key)"
            )
            return self._refused(method, url, 422, reason)
        err = await self.failure(url, answer, retryable=RETRYABLE, method=method)
        if not isinstance(err, UplinkRejected):
            return err
        reason = (
            f"{err.reason} ({what}: check uplink {self.name}'s mapping, then `edge-agent "
            f"requeue --uplink {self.name}`)"
        )
        return self._refused(method, url, answer.status, reason, err)

    def _refused(
        self, method: str, url: str, status: int, reason: str, err: UplinkRejected | None = None
    ) -> UplinkRejected:
        """One record's refusal (per_item), with a generic refusal's size and likeness."""
        return UplinkRejected(
            f"{method} {public_url(url)}: {reason}",
            uplink=self.name, status=status, reason=reason, per_item=True,
            too_large=err is not None and err.too_large, alike=None if err is None else err.alike,
        )  # fmt: skip
