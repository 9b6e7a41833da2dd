"""The backend simulator's feature-summary endpoint.

    POST /v1/summaries   {"summaries": [record, ...]} with edge-agent/summary/v1 records,
                         deduplicated on summary_id -> 200 {"accepted": n}
    GET  /v1/summaries   {"stored": n, "summaries": [record, ...]} (the newest, bounded)

The table lives in the backend's own file and is touched only from its DB thread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from aiohttp import web

from simulators._http import DbThread, bearer_ok, json_error, read_json

SCHEMA = "edge-agent/summary/v1"
MAX_PER_POST = 10_000
MAX_LIST = 1000
_DDL = (
    "CREATE TABLE IF NOT EXISTS summaries (receipt INTEGER PRIMARY KEY AUTOINCREMENT, "
    "summary_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)"
)


def _valid(payload: object) -> list[dict[str, Any]] | None:
    items = payload.get("summaries") if isinstance(payload, dict) else None
    if not isinstance(items, list) or len(items) > MAX_PER_POST:
        return None
    for rec in items:
        if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
            return None
        if not isinstance(rec.get("summary_id"), str) or not rec["summary_id"]:
            return None
    return items


def _store(conn: sqlite3.Connection, records: list[dict[str, Any]]) -> int:
    conn.execute(_DDL)
    conn.execute("BEGIN IMMEDIATE")
    try:
        accepted = 0
        for rec in records:
            accepted += conn.execute(
                "INSERT OR IGNORE INTO summaries (summary_id, body) VALUES (?, ?)",
                (rec["summary_id"], json.dumps(rec, sort_keys=True)),
            ).rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return accepted


def _list(conn: sqlite3.Connection) -> dict[str, Any]:
    conn.execute(_DDL)
    stored = conn.execute("SELECT count(*) FROM summaries").fetchone()[0]
    rows = conn.execute(
        "SELECT body FROM summaries ORDER BY receipt DESC LIMIT ?", (MAX_LIST,)
    ).fetchall()
    return {"stored": stored, "summaries": [json.loads(b) for (b,) in rows]}


class SummaryApi:
    """The routes above, on a backend's DB thread and connection.

    Args:
        dbt: the backend's DB thread.
        conn: returns the open connection (valid once the backend started).
        token: the backend's token, or None for open access.
    """

    def __init__(
        self, dbt: DbThread, conn: Callable[[], sqlite3.Connection], *, token: str | None
    ) -> None:
        self._dbt, self._conn, self._token = dbt, conn, token

    def add_routes(self, app: web.Application) -> None:
        app.add_routes([web.post("/v1/summaries", self._post), web.get("/v1/summaries", self._get)])

    async def _post(self, request: web.Request) -> web.Response:
        if not bearer_ok(request, self._token):
            return json_error(401, "bad or missing bearer token")
        payload, error = await read_json(request)
        items = None if error is not None else _valid(payload)
        if items is None:
            return json_error(400, f'body must be {{"summaries": [{SCHEMA} records]}}')
        accepted = await self._dbt.run(_store, self._conn(), items)
        return web.json_response({"accepted": accepted})

    async def _get(self, request: web.Request) -> web.Response:
        if not bearer_ok(request, self._token):
            return json_error(401, "bad or missing bearer token")
        return web.json_response(await self._dbt.run(_list, self._conn()))
