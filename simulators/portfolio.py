"""The backend's portfolio: cases over HTTP, a planner's confirmation, the page.

    GET  /v1/cases                 ?asset=&tier=&state=open,confirmed&since=&until=&limit=
                                   {"cases": [...], "totals": {...}, "monitoring_gaps": [...],
                                    "unmatched_maintenance": [...], "skipped_records": n}
    GET  /v1/cases/{id}            one case with its timeline (any of its aliases works)
    POST /v1/cases/{id}/confirm    {"by": "planner", "note": "..."}: a planner confirms
    GET  /portfolio                the page (same filters); ?key=TOKEN sets a cookie once

Cases are computed from the stored records on every request (see simulators/cases.py),
so a late record or a confirmation shows at once. With a token, reads take the bearer
token or the page's cookie; the confirmation (a write) takes the bearer token only.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from simulators._backend_db import BackendDb
from simulators._case_facts import format_time, parse_time, text
from simulators._http import DbThread, bearer_ok, json_error, read_json
from simulators.backend_config import BackendConfig
from simulators.cases import STATES, Portfolio, build_portfolio
from simulators.portfolio_page import render_page

COOKIE = "edge_portfolio"
MAX_CASES = 1000
STATE_ORDER = {s: i for i, s in enumerate(STATES)}
_LIST_HIDDEN = ("timeline", "aliases")


@dataclass(frozen=True, slots=True)
class Filters:
    """What GET /v1/cases and /portfolio select."""

    asset: str | None = None
    tier: int | None = None
    states: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 200

    def keep(self, case: Mapping[str, Any]) -> bool:
        opened = parse_time(case["opened_at"])
        return (
            (self.asset is None or case["asset"]["id"] == self.asset)
            and (self.tier is None or case["asset"]["tier"] == self.tier)
            and (not self.states or case["state"] in self.states)
            and (self.since is None or (opened is not None and opened >= self.since))
            and (self.until is None or (opened is not None and opened <= self.until))
        )


def parse_filters(query: Mapping[str, str], extra: tuple[str, ...] = ()) -> Filters:
    """Filters from a query string.

    Raises:
        ValueError: an unknown parameter or a bad value, with what is allowed.
    """
    allowed = ("asset", "tier", "state", "since", "until", "limit", *extra)
    for key in query:
        if key not in allowed:
            raise ValueError(f"unknown parameter {key!r}; allowed: {', '.join(allowed)}")
    states = tuple(s for s in query.get("state", "").split(",") if s)
    for s in states:
        if s not in STATES:
            raise ValueError(f"state {s!r} is not one of {', '.join(STATES)}")
    times = {}
    for key in ("since", "until"):
        if key in query:
            times[key] = parse_time(query[key])
            if times[key] is None:
                raise ValueError(f"{key} must look like 2026-11-21T08:15:02.123Z")
    try:
        tier = int(query["tier"]) if "tier" in query else None
        limit = int(query.get("limit", "200"))
    except ValueError:
        raise ValueError("tier and limit must be integers") from None
    if not 1 <= limit <= MAX_CASES:
        raise ValueError(f"limit must be 1..{MAX_CASES}")
    return Filters(query.get("asset"), tier, states, times.get("since"), times.get("until"), limit)


def ordered(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By tier (1 first), then state (open first), then the most recent first."""
    by_time = sorted(cases, key=lambda c: c["opened_at"], reverse=True)
    return sorted(
        by_time,
        key=lambda c: (c["asset"]["tier"] or 99, STATE_ORDER.get(c["state"], 9)),
    )


def totals(cases: list[dict[str, Any]], currency: str) -> dict[str, Any]:
    """Counts and sums over the selected cases."""
    saved = [c["downtime_avoided"] for c in cases if c["downtime_avoided"]]
    costs = [s["cost"] for s in saved if s["cost"] is not None]
    return {
        "cases": len(cases),
        "by_state": {s: sum(c["state"] == s for c in cases) for s in STATES},
        "repaired_before_failure": sum(c["repair_before_failure"] is True for c in cases),
        "downtime_avoided_hours": round(sum(s["hours"] for s in saved), 3),
        "downtime_avoided_cost": round(sum(costs), 2) if costs else None,
        "currency": currency,
    }


def find(portfolio: Portfolio, ident: str) -> dict[str, Any] | None:
    """The case with this id, or the one this alias (a later record's id) belongs to."""
    return next((c for c in portfolio.cases if c["id"] == ident), None) or next(
        (c for c in portfolio.cases if ident in c["aliases"]), None
    )


class PortfolioApi:
    """The routes above, on a backend's DB thread and file.

    Args:
        dbt: the backend's DB thread.
        db: returns the open database (valid once the backend started).
        token: the backend's token, or None for open access.
        config: the backend's YAML.
    """

    def __init__(
        self,
        dbt: DbThread,
        db: Callable[[], BackendDb],
        *,
        token: str | None,
        config: BackendConfig,
    ) -> None:
        self._dbt, self._db, self._token, self._config = dbt, db, token, config

    def add_routes(self, app: web.Application) -> None:
        app.add_routes(
            [
                web.get("/v1/cases", self._list),
                web.get("/v1/cases/{id}", self._one),
                web.post("/v1/cases/{id}/confirm", self._confirm),
                web.get("/portfolio", self._page),
            ]
        )

    def _build(self) -> Portfolio:
        db = self._db()
        return build_portfolio(db.case_records(), db.confirmations(), self._config)

    def _read_ok(self, request: web.Request) -> bool:
        cookie = request.cookies.get(COOKIE, "")
        return bearer_ok(request, self._token) or (
            self._token is not None and hmac.compare_digest(cookie.encode(), self._token.encode())
        )

    def _selection(self, filters: Filters) -> dict[str, Any]:
        pf = self._build()
        cases = ordered([c for c in pf.cases if filters.keep(c)])[: filters.limit]
        return {
            "generated_at": format_time(datetime.now(UTC)),
            "totals": totals(cases, self._config.currency),
            "cases": cases,
            "monitoring_gaps": pf.monitoring_gaps,
            "unmatched_maintenance": pf.unmatched_maintenance,
            "skipped_records": pf.skipped_records,
        }

    async def _list(self, request: web.Request) -> web.Response:
        if not self._read_ok(request):
            return json_error(401, "bad or missing bearer token")
        try:
            filters = parse_filters(request.query)
        except ValueError as exc:
            return json_error(400, str(exc))
        out = await self._dbt.run(self._selection, filters)
        out["cases"] = [{k: v for k, v in c.items() if k not in _LIST_HIDDEN} for c in out["cases"]]
        return web.json_response(out)

    async def _one(self, request: web.Request) -> web.Response:
        if not self._read_ok(request):
            return json_error(401, "bad or missing bearer token")
        case = find(await self._dbt.run(self._build), request.match_info["id"])
        if case is None:
            return json_error(404, f"no case {request.match_info['id']!r}")
        return web.json_response(case)

    def _confirm_now(self, ident: str, by: str, note: str) -> tuple[dict[str, Any] | None, bool]:
        case = find(self._build(), ident)
        if case is None or case["confirmation"] is not None:
            return case, False
        self._db().confirm(case["detection"]["alert_id"], by, note)
        return find(self._build(), case["id"]), True

    async def _confirm(self, request: web.Request) -> web.Response:
        if not bearer_ok(request, self._token):
            return json_error(401, "bad or missing bearer token")
        body: Any = {}
        if request.can_read_body:
            body, error = await read_json(request)
            if error is not None:
                return error
        if not isinstance(body, dict):
            return json_error(400, 'body must be {"by": "...", "note": "..."}')
        by, note = text(body.get("by", "planner"), 100), text(body.get("note", ""), 2000)
        if not by or note is None:
            return json_error(400, "by must be a non-empty string, note a string")
        ident = request.match_info["id"]
        case, created = await self._dbt.run(self._confirm_now, ident, by, note)
        if case is None:
            return json_error(404, f"no case {ident!r}")
        return web.json_response({"case": case, "confirmed_now": created})

    async def _page(self, request: web.Request) -> web.Response:
        key = request.query.get("key")
        if key is not None and self._token is not None:
            if not hmac.compare_digest(key.encode(), self._token.encode()):
                return web.Response(status=401, text="wrong key", content_type="text/plain")
            rest = {k: v for k, v in request.query.items() if k != "key"}
            resp = web.Response(
                status=303, headers={"Location": str(request.rel_url.with_query(rest))}
            )
            resp.set_cookie(COOKIE, self._token, httponly=True, samesite="Strict", path="/")
            return resp
        if not self._read_ok(request):
            return web.Response(
                status=401,
                text="Open the portfolio with the URL the backend's operator gave you "
                "(it ends in ?key=...), or send the bearer token.",
                content_type="text/plain",
            )
        try:
            filters = parse_filters(request.query, extra=("key",))
        except ValueError as exc:
            return web.Response(status=400, text=str(exc), content_type="text/plain")
        html = await self._dbt.run(
            lambda: render_page(self._selection(filters), self._config.currency)
        )
        return web.Response(
            text=html,
            content_type="text/html",
            headers={
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )
