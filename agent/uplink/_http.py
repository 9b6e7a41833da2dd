"""HTTP transport: a batch POSTed as JSON; delivered only after a 2xx.

Alerts go to `url` as {"alerts": [...]}, feature summaries to the summaries URL as
{"summaries": [...]}; the stored text is sent byte for byte, so every retry carries the
same record.

Status policy (agent.uplink._httpclient):
- 2xx: delivered, unless the body is a web page (it begins with markup, whatever its
  Content-Type, or it is text/html with markup in it, or typed JSON that is not JSON with
  a tag in it): a firewall's block page, a proxy's
  or hotspot's login page answer 200 too; retried and logged at ERROR like a 3xx. A
  text/html answer without markup ("OK" from Express or PHP) is an acknowledgement, and so
  is XML sent as XML (application/xml, text/xml, */*+xml) without an <html> element. The answer must
  arrive whole (it is read to its end, its first 16 KiB kept): one cut short is a failure
  and the batch is resent, as a backend that died mid-answer may not have stored it (the
  backend dedupes on the ids). Cut short: closed before its Content-Length or last chunk;
  without either (the close ends it), JSON (or a body typed JSON) that stops half way: a
  bracket or string still open, the start of a literal or number, or empty (but for a 202
  Accepted, which needs no body). A whole body typed JSON that is simply not JSON ("OK", a
  Python dict's repr) is an acknowledgement (a WARNING once): resent, it met the same
  answer forever.
- 1xx as a final answer (a 101 nobody asked for): retried, never dead-lettered.
- 3xx: never followed: a failure naming the Location, retried with backoff and logged at
  ERROR; nothing is marked delivered.
- 5xx, 408, 429, connection errors, timeouts: retried; the backend is "down" (probed with a
  HEAD) unless it sent a Retry-After, which is honoured.
- 401, 403, 407: the credentials are wrong, not the alerts; dead-lettering would empty the
  whole backlog into the dead-letter table after a token rotation. Retried, with the token
  file re-read, and logged at ERROR.
- 404, 405: the URL or method is wrong (a misconfiguration, or a proxy during a backend
  deploy), not the alerts: retried, logged at ERROR.
- 413: the batch is too large; halved (a single alert that is too large is dead-lettered).
- 409 Conflict: the backend may already have an id in the batch (a resend after an answer
  that was lost: it stored the batch, the answer never came). The batch is resent one by
  one (as any refused batch); a single item answered 409 whose body names its id (the
  alert_id or summary_id, as a token) is one the backend has: delivered, logged, never
  dead-lettered (a requeue would only meet the same 409). A 409 that does not name it is
  no proof the backend has the item: an API gateway's or WAF's "Conflict" (plain text, or
  JSON like AWS API Gateway's {"message": ...}) answers any item alike; it is a refusal
  like any other 4xx (held, dead-lettered only once an item behind it is delivered: see
  agent.uplink._canary), never a delivery by itself. With duplicate_check_url (a GET
  for one alert, "{id}" its alert_id) an alert such a 409 does not name is asked for: a
  2xx (whole, no web page) whose JSON is the record (an object, itself or in a list or
  under a key, with its alert_id and one more field as sent) says the backend has it
  (delivered); one that merely names the id (a 200 "alert X not found", a lookup's echo
  {"alert_id": X, "found": false}), a 404 or a 410 leaves the 409 a refusal, its reason
  saying what the GET answered; no verdict (no answer, a 5xx, a 429, a 401) is retried
  with backoff, never a refusal (the backend may hold it). A 409 whose
  body is a web page is a CDN's or proxy's error page (Cloudflare answers its error 1014,
  a misconfigured custom hostname, with 409 and HTML): retried like a 2xx web page,
  nothing marked delivered.
- any other 4xx: the backend refuses these alerts (see agent.uplink._canary).
Error messages name the URL without credentials.
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import quote

from agent.config import HttpUplink as HttpUplinkConfig
from agent.config import public_url
from agent.store import StoredItem
from agent.uplink._answer import web_page
from agent.uplink._httpclient import REASON_CHARS, HttpClient
from agent.uplink._transport import SendResult
from agent.uplink.errors import UplinkError, UplinkRejected, UplinkUnavailable

log = logging.getLogger(__name__)

DUPLICATE = 409  # Conflict: the backend already has this id, when its answer names it
# What duplicate_check_url's GET answers for an alert the backend does not hold (besides a
# 2xx without its record); any other answer is no verdict: retried.
_LACKS = frozenset({404, 410})
_NO_CHECK = (
    " (409 naming no id: no proof the backend has it; if it answers such a 409 to a "
    "duplicate, set duplicate_check_url so a GET confirms it)"
)


class HttpTransport(HttpClient):
    """POSTs batches to an HTTP backend (probe: a HEAD on the URL, from HttpClient).

    Args:
        cfg: the `uplinks[].http` configuration (token_file already absolute).
        name: the uplink's name, for errors and logs.
    """

    kind = "http"
    # A summaries batch in flight is cancelled for a new alert (agent.uplink._giveway):
    # its own endpoint may hang while the alerts' answers.
    summaries_yield = True

    def __init__(self, cfg: HttpUplinkConfig, *, name: str) -> None:
        super().__init__(cfg, name=name)
        self.cfg: HttpUplinkConfig = cfg

    async def send(self, items: list[StoredItem]) -> SendResult:
        """POST the batch; all delivered, or all failed with the reason."""
        if items[0].class_name == "alert":
            url, key = self.cfg.url, "alerts"
        else:
            url, key = self.cfg.summaries_endpoint(), "summaries"
        body = ('{"' + key + '":[' + ",".join(it.json for it in items) + "]}").encode()
        try:
            answer = await self.post(url, body)
        except UplinkError as exc:
            return SendResult([], exc, items)
        if answer.ok:
            return SendResult(items)
        if answer.status == DUPLICATE and web_page(answer.content_type, answer.text.encode()):
            return SendResult([], self._page_409(url, answer.content_type), items)
        if answer.status == DUPLICATE and len(items) == 1:
            item = items[0]
            if _names(answer.text, item):
                log.warning(
                    "uplink[%s]: %s %s: the backend already has it (HTTP 409: %s); delivered",
                    self.name, item.class_name, item.item_id, answer.text[:REASON_CHARS],
                )  # fmt: skip
                return SendResult(items)
            checked = await self._confirm(url, item)
            if checked is True:
                return SendResult(items)
            if isinstance(checked, UplinkUnavailable):
                return SendResult([], checked, items)
            err = await self.failure(url, answer)
            if isinstance(err, UplinkRejected):  # why it is no delivery, for the dead letter
                err.reason += checked or _NO_CHECK
            return SendResult([], err, items)
        return SendResult([], await self.failure(url, answer), items)

    async def _confirm(self, posted: str, item: StoredItem) -> bool | str | UplinkUnavailable:
        """Whether the backend holds an alert a 409 did not name: its duplicate_check_url
        answers 2xx with its record (True); else why not ("" with no URL to ask, or for a
        summary), or, when the GET gave no verdict (no answer, a 5xx, a 429, a 401), the
        failure to retry: taken for a refusal, the alert the backend holds was
        dead-lettered once one behind it went through. Only a 2xx without the record, a
        404 or a 410 says it lacks it. A 409 that names no id may be a gateway's or WAF's
        "Conflict" answered to any request, so the 409 alone never marks anything
        delivered."""
        template = self.cfg.duplicate_check_url
        if template is None or item.class_name != "alert":
            return ""
        url = template.replace("{id}", quote(item.item_id, safe=""))
        shown = f"GET {public_url(url)}"
        said = f"POST {public_url(posted)}: HTTP 409 naming no id for alert {item.item_id}"
        try:
            answer = await self.post(url, b"", method="GET")
        except UplinkUnavailable as exc:
            return UplinkUnavailable(
                f"{said}; asked {shown}: no answer ({exc}): retried",
                uplink=self.name, down=exc.down, timed_out=exc.timed_out,
                retry_after_s=exc.retry_after_s, status=exc.status,
            )  # fmt: skip
        except UplinkError as exc:
            return f" (409 naming no id; asked {shown}: no answer: {exc})"
        if not answer.ok and answer.status not in _LACKS:
            return UplinkUnavailable(
                f"{said}; {shown} answered HTTP {answer.status} "
                f"({answer.text[:REASON_CHARS]}), no verdict whether the backend has it: "
                "retried",
                uplink=self.name, status=answer.status, retry_after_s=answer.retry_after_s,
                down=answer.status >= 500 and answer.retry_after_s is None,
            )  # fmt: skip
        if answer.ok and _holds(answer.text, item):
            log.warning(
                "uplink[%s]: alert %s: the backend already has it (HTTP 409 naming no id, "
                "confirmed by %s: HTTP %d); delivered",
                self.name, item.item_id, shown, answer.status,
            )  # fmt: skip
            return True
        return (
            f" (409 naming no id; {shown} answered HTTP {answer.status} not naming it "
            "as a record it holds)"
        )

    def _page_409(self, url: str, content_type: str) -> UplinkUnavailable:
        """A 409 with a web page: not the backend saying it has the items."""
        return UplinkUnavailable(
            f"POST {public_url(url)}: HTTP 409 with a web page ({content_type or 'no type'}) "
            "instead of the backend's answer (a CDN's or proxy's error page, e.g. "
            "Cloudflare's error 1014 for a hostname it is not set up to serve); nothing "
            "marked delivered",
            uplink=self.name,
            status=DUPLICATE,
        )


def _holds(text: str, item: StoredItem) -> bool:
    """Whether a GET's answer is the record the backend holds: JSON with an object (the
    answer itself, in a list, or under one of its keys) whose alert_id is the item's and
    that agrees with the record sent on one other field at least. An answer that merely
    names the id ("alert X not found" with a 200, a lookup's echo {"alert_id": X,
    "found": false}, a search's query) is no proof the backend has it."""
    try:
        answer = json.loads(text)
        sent = json.loads(item.json)
    except ValueError:
        return False
    if not isinstance(sent, dict):
        return False
    found: list[object] = [answer]
    for value in answer.values() if isinstance(answer, dict) else ():
        found.append(value)
    candidates: list[dict[str, object]] = []
    for value in found:
        for one in value if isinstance(value, list) else [value]:
            if isinstance(one, dict):
                candidates.append(one)
    return any(
        one.get("alert_id") == item.item_id
        and any(k != "alert_id" and k in sent and sent[k] == v for k, v in one.items())
        for one in candidates
    )


def _names(text: str, item: StoredItem) -> bool:
    """Whether an answer names the item's id as a token of its own (not inside another:
    gw-01-000000000042 is not named by gw-01-0000000000421)."""
    return re.search(rf"(?<![\w-]){re.escape(item.item_id)}(?![\w-])", text) is not None
