"""Portfolio backend simulator: accepts alert batches over HTTP, deduplicates on alert_id.

Endpoints:
    POST /v1/alerts          {"alerts": [record, ...]} -> 200 {"accepted": n, "duplicates": m}
                             400 with a reason if any record is malformed (none stored),
                             401 if a token is configured and the bearer token differs,
                             413 if the body exceeds the size limit.
    GET  /v1/alerts          ?after=<receipt>&limit=<n>: {"alerts": [record, ...],
                             "receipts": [receipt id per record], "last_receipt": n},
                             in receipt order (the token applies here too when set).
    GET  /v1/alerts/{alert_id}
                             the stored record, 404 if none (what an uplink's
                             duplicate_check_url asks after a 409 naming no id).
    GET  /v1/stats           counters (accepted, duplicates, posts, rejected, faults).
    /v1/cases, /v1/cases/{id}, /v1/cases/{id}/confirm, /portfolio
                             the prevented-failure portfolio (simulators/portfolio.py):
                             the stored records grouped into cases (simulators/cases.py).
    POST, GET /v1/summaries  feature summaries (simulators/_summaries.py).
    POST /admin/faults, /admin/outage, DELETE /admin/faults
                             fault injection on POST /v1/alerts (simulators/_faults.py);
                             after_store: the batch is stored first (the answer is lost).

Stands alone (imports nothing from agent/ or drivers/): it checks the record the way an
independent receiver would. Its SQLite file is touched only from one worker thread.
"""

from __future__ import annotations

import argparse
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from simulators._backend_db import BackendDb
from simulators._faults import Fault
from simulators._http import AppServer, bearer_ok, json_error, read_json, serve_until_cancelled
from simulators._sim import SimApp, SimServer, add_common_arguments
from simulators._summaries import SummaryApi
from simulators.backend_config import BackendConfig, ConfigFileError, load_backend_config
from simulators.portfolio import PortfolioApi

__all__ = ["MAX_LIST", "Backend", "BackendServer", "Fault", "add_arguments", "serve", "validate"]

log = logging.getLogger(__name__)

SCHEMA = "edge-agent/alert/v1"
MAX_BODY_BYTES = 8 * 2**20
MAX_ALERTS_PER_POST = 10_000
MAX_LIST = 10_000
_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def validate(record: object, index: int) -> str | None:
    """Why a record is unacceptable, or None if it passes the minimal checks."""
    if not isinstance(record, dict):
        return f"alerts[{index}]: not an object"
    if record.get("schema") != SCHEMA:
        return f"alerts[{index}]: schema must be {SCHEMA!r}, got {record.get('schema')!r}"
    for key in ("alert_id", "gateway_id"):
        value = record.get(key)
        if not isinstance(value, str) or not value or len(value) > 200:
            return f"alerts[{index}]: {key} must be a non-empty string"
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return f"alerts[{index}]: seq must be a non-negative integer"
    ts = record.get("detected_at")
    if not isinstance(ts, str) or not _TS_RE.match(ts):
        return f"alerts[{index}]: detected_at must be UTC ISO-8601 with ms and Z, got {ts!r}"
    try:
        datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return f"alerts[{index}]: detected_at is not a valid time: {ts!r}"
    return None


class Backend(SimApp[BackendDb]):
    """The aiohttp application and its state.

    Args:
        db: SQLite file path (":memory:" keeps nothing across restarts).
        token: if set, POST /v1/alerts requires `Authorization: Bearer <token>`.
        fail_first: the first N POSTs fail with `fail_status`.
        fail_status: status of those failures (default 503).
        max_body: request body limit in bytes (413 beyond).
        config: the backend's YAML (asset downtime costs; see backend_config.py).
    """

    def __init__(
        self,
        *,
        db: str | Path = ":memory:",
        token: str | None = None,
        fail_first: int = 0,
        fail_status: int = 503,
        max_body: int = MAX_BODY_BYTES,
        config: BackendConfig | None = None,
    ) -> None:
        super().__init__(
            "backend-db",
            BackendDb,
            db=db,
            token=token,
            fail_first=fail_first,
            fail_status=fail_status,
            max_body=max_body,
        )
        self.app.add_routes(
            [
                web.post("/v1/alerts", self._post_alerts),
                web.get("/v1/alerts", self._get_alerts),
                web.get("/v1/alerts/{alert_id}", self._get_alert),
                web.get("/v1/stats", self._get_stats),
            ]
        )
        PortfolioApi(
            self.dbt, lambda: self.db, token=token, config=config or BackendConfig()
        ).add_routes(self.app)
        SummaryApi(self.dbt, lambda: self.db.conn, token=token).add_routes(self.app)

    async def _post_alerts(self, request: web.Request) -> web.Response:
        fault, answer = await self.admit_write(request)
        if answer is not None:
            return answer
        payload, error = await read_json(request)
        if error is not None:
            return await self.reject("body is not JSON")
        alerts = payload.get("alerts") if isinstance(payload, dict) else None
        if not isinstance(alerts, list):
            return await self.reject('body must be {"alerts": [...]}')
        if len(alerts) > MAX_ALERTS_PER_POST:
            return await self.reject(f"at most {MAX_ALERTS_PER_POST} alerts per POST")
        for i, rec in enumerate(alerts):
            reason = validate(rec, i)
            if reason:
                return await self.reject(reason)
        accepted, duplicates = await self.dbt.run(self.db.store, alerts)
        if fault is not None:
            return await self.faults.serve(fault)
        return web.json_response({"accepted": accepted, "duplicates": duplicates})

    async def _get_alerts(self, request: web.Request) -> web.Response:
        (after, limit), answer = self.read_page(request, MAX_LIST)
        if answer is not None:
            return answer
        rows = await self.dbt.run(self.db.list, after, limit)
        last = rows[-1]["receipt"] if rows else after
        return web.json_response(
            {
                "alerts": [r["alert"] for r in rows],
                "receipts": [r["receipt"] for r in rows],
                "last_receipt": last,
            }
        )

    async def _get_alert(self, request: web.Request) -> web.Response:
        if not bearer_ok(request, self.token):
            return json_error(401, "bad or missing bearer token")
        record = await self.dbt.run(self.db.get, request.match_info["alert_id"])
        if record is None:
            return json_error(404, "no such alert_id")
        return web.json_response(record)

    async def _get_stats(self, _request: web.Request) -> web.Response:
        stats = await self.dbt.run(self.db.stats)
        stats["faults_queued"] = len(self.faults.queue)
        return web.json_response(stats)


class BackendServer(SimServer):
    """In-process backend for tests, on loopback (`host`, `port` as SimServer); other
    keywords go to Backend (db, token, fail_first, fail_status, max_body, config)."""

    path = "/v1/alerts"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self.backend = Backend(**kwargs)
        super().__init__(self.backend, host=host, port=port)

    async def stats(self) -> dict[str, int]:
        """The persisted counters and the stored count."""
        return await self.backend.dbt.run(self.backend.db.stats)

    async def alerts(self, after: int = 0) -> list[dict[str, Any]]:
        """Stored alerts in receipt order."""
        return await self.backend.dbt.run(self.backend.db.list, after, MAX_LIST)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `edge-sim backend`."""
    add_common_arguments(parser, "received alerts")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the backend's YAML: downtime cost per asset (see simulators/backend_config.py)",
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    """Why the options cannot work (a bad --config), before anything binds; else None."""
    if args.config is not None:
        try:
            args.backend_config = load_backend_config(args.config)
        except ConfigFileError as exc:
            return str(exc)
    return None


async def serve(args: argparse.Namespace) -> None:
    """Run the backend until cancelled; prints one `READY {...}` line once listening.

    The line carries the alert URL and the portfolio page's URL (with its key when a
    token is set).
    """
    server = BackendServer(
        host=args.host,
        port=args.port,
        db=args.db,
        token=args.token,
        fail_first=args.fail_first,
        fail_status=getattr(args, "fail_status", 503),
        config=getattr(args, "backend_config", None),
    )

    def ready(s: AppServer) -> dict[str, Any]:
        key = f"?key={args.token}" if args.token else ""
        return {"url": f"{s.base_url}/v1/alerts", "portfolio": f"{s.base_url}/portfolio{key}"}

    await serve_until_cancelled(server, ready)
