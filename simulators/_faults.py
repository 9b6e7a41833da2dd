"""Fault injection shared by the HTTP simulators: one-shot faults and timed outages.

POST   /admin/faults   {"status": 503, "count": 2, "retry_after": 1, "delay_s": 0,
                        "after_store": false, "location": null, "body": "..."}
                       the next `count` write requests fail that way; after_store: the
                       request is applied first and its answer is lost (a retry must
                       not duplicate); location: sent with a 3xx status (a redirect);
                       content_type: of the answer ("text/html" with 200: a block page);
                       on: only a write of that kind takes it (edge-sim cmms: "open",
                       "update"), the others pass it by.
POST   /admin/outage   {"seconds": 10, "status": 503, "retry_after": 5}: every write
                       request fails that way for `seconds` (a maintenance window).
DELETE /admin/faults   clears queued faults and any outage.

With a token, these take `Authorization: Bearer <token>` like every other request: without
it any local user, or a web page in the machine's browser (a form's text/plain POST needs
no preflight), could hold the demo's backend in an outage.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from simulators._http import bearer_ok, json_error, read_json

MAX_QUEUED_FAULTS = 1000
MAX_FAULT_DELAY_S = 300.0
MAX_OUTAGE_S = 3600.0


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure of a write request."""

    status: int = 503
    retry_after: str | None = None
    delay_s: float = 0.0
    body: str = "injected fault"
    after_store: bool = False  # apply the request, then fail: a lost answer, so a retry dupes
    location: str | None = None  # Location header of a 3xx answer
    content_type: str = "text/plain"  # text/html with 200: a firewall's block page
    # The write it waits for: None, the next one; else only one of that kind (edge-sim
    # cmms: "open" or "update"), the others pass it by.
    on: str | None = None

    async def respond(self) -> web.Response:
        """Wait `delay_s`, then answer with this fault."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        headers = {}
        if self.retry_after:
            headers["Retry-After"] = self.retry_after
        if self.location:
            headers["Location"] = self.location
        return web.Response(
            status=self.status, text=self.body, headers=headers, content_type=self.content_type
        )


def parse_fault(spec: Any) -> Fault:
    """A Fault from an admin request body.

    Raises:
        ValueError: a malformed spec, with the reason.
    """
    if not isinstance(spec, dict):
        raise ValueError("the fault spec must be a JSON object")
    try:
        status = int(spec.get("status", 503))
        retry_after = spec.get("retry_after")
        location = spec.get("location")
        fault = Fault(
            status=status,
            retry_after=None if retry_after is None else str(retry_after),
            delay_s=min(max(float(spec.get("delay_s", 0.0)), 0.0), MAX_FAULT_DELAY_S),
            body=str(spec.get("body", "injected fault")),
            after_store=bool(spec.get("after_store", False)),
            location=None if location is None else str(location),
            content_type=str(spec.get("content_type", "text/plain")),
            on=None if spec.get("on") is None else str(spec["on"]),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad fault spec: {exc}") from None
    if not 100 <= status <= 599:
        raise ValueError(f"bad fault spec: status {status} is not an HTTP status")
    return fault


class Faults:
    """The queued one-shot faults and the current outage of one simulator.

    Args:
        on_served: called (awaited) each time a fault is served, e.g. to count it.
        token: the simulator's token: the /admin routes require it as a bearer token.
    """

    def __init__(
        self, on_served: Callable[[], Awaitable[None]] | None = None, *, token: str | None = None
    ) -> None:
        self.queue: deque[Fault] = deque(maxlen=MAX_QUEUED_FAULTS)
        self._outage: Fault | None = None
        self._outage_until = 0.0
        self._on_served = on_served
        self._token = token

    def inject(self, fault: Fault, count: int = 1) -> None:
        """Queue `count` failures of the next write requests."""
        for _ in range(max(0, min(count, MAX_QUEUED_FAULTS))):
            self.queue.append(fault)

    def outage(self) -> Fault | None:
        """The fault every API request gets now, while an outage lasts."""
        if self._outage is not None and time.monotonic() < self._outage_until:
            return self._outage
        self._outage = None
        return None

    def next_write(self, kind: str | None = None) -> Fault | None:
        """The fault for the next write request (of `kind`): the outage, else the first
        queued one that waits for any write or for this kind."""
        if (outage := self.outage()) is not None:
            return outage
        for i, fault in enumerate(self.queue):  # at most MAX_QUEUED_FAULTS
            if fault.on is None or fault.on == kind:
                del self.queue[i]
                return fault
        return None

    async def serve(self, fault: Fault) -> web.Response:
        """Count the fault, then answer with it."""
        if self._on_served is not None:
            await self._on_served()
        return await fault.respond()

    def add_routes(self, app: web.Application) -> None:
        """The /admin routes (see the module docstring)."""
        app.add_routes(
            [
                web.post("/admin/faults", self._post_faults),
                web.post("/admin/outage", self._post_outage),
                web.delete("/admin/faults", self._delete_faults),
            ]
        )

    async def _post_faults(self, request: web.Request) -> web.Response:
        if not bearer_ok(request, self._token):
            return json_error(401, "bad or missing bearer token")
        spec, error = await read_json(request)
        if error is not None:
            return error
        try:
            fault = parse_fault(spec)
            count = int(spec.get("count", 1))
        except (TypeError, ValueError) as exc:
            return json_error(400, str(exc))
        self.inject(fault, count)
        return web.json_response({"queued": len(self.queue)})

    async def _post_outage(self, request: web.Request) -> web.Response:
        if not bearer_ok(request, self._token):
            return json_error(401, "bad or missing bearer token")
        spec, error = await read_json(request)
        if error is not None:
            return error
        try:
            fault = parse_fault({"retry_after": 5, **spec} if isinstance(spec, dict) else spec)
            seconds = min(float(spec.get("seconds", 10.0)), MAX_OUTAGE_S)
        except (TypeError, ValueError) as exc:
            return json_error(400, str(exc))
        self._outage, self._outage_until = fault, time.monotonic() + max(seconds, 0.0)
        return web.json_response({"outage_s": max(seconds, 0.0), "status": fault.status})

    async def _delete_faults(self, request: web.Request) -> web.Response:
        if not bearer_ok(request, self._token):
            return json_error(401, "bad or missing bearer token")
        self.queue.clear()
        self._outage = None
        return web.json_response({"queued": 0})
