"""CMMS transport: one work-order request per raised or escalated alert, idempotent.

Each alert that opens a work order (agent.uplink._workorder) is POSTed on its own to the
configured URL with `Idempotency-Key: <alert_id>` and a body built deterministically from
the stored record, so a retry (an answer lost, an agent killed mid-request, a store
recovered) is byte-identical and the CMMS answers with the work order it already opened
instead of opening a second one. Everything else the uplink is given (clears, maintenance
records, sensor and gateway faults, feature summaries) is settled unsent, with why.

Status policy (agent.uplink._httpclient, plus):
- 201, 200 (a replay of the same key): delivered; the work order's id is logged;
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

import json
import logging
from collections.abc import Mapping
from typing import Any

from agent.config import CmmsUplink
from agent.store import StoredItem
from agent.uplink._httpclient import REASON_CHARS, RETRYABLE_4XX, Answer, HttpClient
from agent.uplink._transport import SendResult
from agent.uplink._workorder import AssetFacts, WorkOrder, build, no_work_order
from agent.uplink.errors import UplinkError, UplinkRejected, UplinkUnavailable

log = logging.getLogger(__name__)

RETRYABLE = RETRYABLE_4XX | {409}
SUMMARY_SKIPPED = "a feature summary opens no work order"


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
            return str(where[key])
    return None


class CmmsTransport(HttpClient):
    """POSTs work-order requests to a CMMS (probe: a HEAD on the URL, from HttpClient).

    Args:
        cfg: the `uplinks[].cmms` configuration (token_file already absolute).
        name: the uplink's name, for errors and logs.
        assets: per configured asset id, its zone table and planning horizon.
        site: the gateway's site, for the descriptions.
    """

    kind = "cmms"

    def __init__(
        self,
        cfg: CmmsUplink,
        *,
        name: str,
        assets: Mapping[str, AssetFacts],
        site: str | None = None,
    ) -> None:
        super().__init__(cfg, name=name)
        self.cfg: CmmsUplink = cfg
        self.assets = dict(assets)
        self.site = site

    def request(self, item: StoredItem) -> WorkOrder | str:
        """The work-order request for an item, or why it opens none.

        Raises:
            UplinkRejected: the stored record lacks what a work order needs.
        """
        if item.class_name != "alert":
            return SUMMARY_SKIPPED
        try:
            record = json.loads(item.json)
            return no_work_order(record) or build(
                record, self.cfg, self.assets, gateway_site=self.site
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            reason = (
                f"cannot build a work order from the stored record ({type(exc).__name__}: {exc})"
            )
            raise UplinkRejected(
                reason, uplink=self.name, status=None, reason=reason, per_item=True
            ) from exc

    async def send(self, items: list[StoredItem]) -> SendResult:
        """One POST per work order, in order; stops at the first failure (the rest stays
        pending). Items that open no work order are returned as skipped."""
        delivered: list[StoredItem] = []
        skipped: list[tuple[StoredItem, str]] = []
        for i, item in enumerate(items):
            try:
                wo = self.request(item)
            except UplinkRejected as exc:
                return SendResult(delivered, exc, [item], skipped)
            if isinstance(wo, str):
                skipped.append((item, wo))
                continue
            try:
                answer = await self.post(self.cfg.url, wo.body, {"Idempotency-Key": wo.key})
            except UplinkError as exc:
                if isinstance(exc, UplinkUnavailable):
                    exc.timed_out = False  # one work order per POST: a smaller batch is no faster
                return SendResult(delivered, exc, items[i:], skipped)
            if not answer.ok:
                err = await self._refusal(wo, answer)
                failed = [item] if isinstance(err, UplinkRejected) else items[i:]
                return SendResult(delivered, err, failed, skipped)
            self._opened(wo, answer)
            delivered.append(item)
        return SendResult(delivered, None, [], skipped)

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
            else:
                reason = (
                    f"HTTP 422: {answer.text[:REASON_CHARS]} (the CMMS refused the "
                    f"work-order request for alert {wo.key}; it is never sent under another key)"
                )
            return UplinkRejected(
                f"POST {self.target}: {reason}",
                uplink=self.name, status=422, reason=reason, per_item=True,
            )  # fmt: skip
        err = await self.failure(self.cfg.url, answer, retryable=RETRYABLE)
        if not isinstance(err, UplinkRejected):
            return err
        reason = (
            f"{err.reason} (the CMMS refused the work-order request for alert {wo.key}: "
            f"check uplink {self.name}'s mapping, then `edge-agent requeue --uplink {self.name}`)"
        )
        return UplinkRejected(
            f"POST {self.target}: {reason}",
            uplink=self.name, status=answer.status, reason=reason,
            too_large=err.too_large, per_item=True, alike=err.alike,
        )  # fmt: skip
