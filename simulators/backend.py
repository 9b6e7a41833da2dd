"""Portfolio backend simulator: accepts alert batches over HTTP, deduplicates on alert_id.

Endpoints:
    POST /v1/alerts          {"alerts": [record, ...]} -> 200 {"accepted": n, "duplicates": m}
                             400 with a reason if any record is malformed (none stored),
                             401 if a token is configured and the bearer token differs,
                             413 if the body exceeds the size limit.
    GET  /v1/alerts          ?after=<receipt>&limit=<n>: {"alerts": [record, ...],
                             "receipts": [receipt id per record], "last_receipt": n},
                             in receipt order (the token applies here too when set).
    GET  /v1/stats           counters (accepted, duplicates, posts, rejected, faults).
    POST /admin/faults       {"status": 503, "count": 2, "retry_after": 1, "delay_s": 0,
                              "after_store": false}
                             the next `count` POSTs to /v1/alerts fail that way;
                             after_store: the batch is stored first (the answer is lost).
    DELETE /admin/faults     clears queued faults.

Stands alone (imports nothing from agent/ or drivers/): it checks the record the way an
independent receiver would. Its SQLite file is touched only from one worker thread.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import re
import socket
import sqlite3
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

log = logging.getLogger(__name__)

SCHEMA = "edge-agent/alert/v1"
MAX_BODY_BYTES = 8 * 2**20
MAX_ALERTS_PER_POST = 10_000
MAX_QUEUED_FAULTS = 1000
MAX_LIST = 10_000
_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_COUNTERS = ("posts", "accepted", "duplicates", "rejected", "unauthorized", "faults_served")


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure of a POST /v1/alerts."""

    status: int = 503
    retry_after: str | None = None
    delay_s: float = 0.0
    body: str = "injected fault"
    after_store: bool = False  # store the batch, then fail: a lost answer, so a retry dupes


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


class _Db:
    """The backend's SQLite file, used only from one worker thread."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS alerts (receipt INTEGER PRIMARY KEY AUTOINCREMENT, "
            "alert_id TEXT NOT NULL UNIQUE, gateway_id TEXT NOT NULL, seq INTEGER NOT NULL, "
            "received_at TEXT NOT NULL, body TEXT NOT NULL)"
        )
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
        )
        self.conn.executemany(
            "INSERT OR IGNORE INTO counters (key, value) VALUES (?, 0)", [(k,) for k in _COUNTERS]
        )

    def bump(self, **counts: int) -> None:
        self.conn.executemany(
            "UPDATE counters SET value = value + ? WHERE key = ?",
            [(n, k) for k, n in counts.items()],
        )

    def store(self, records: list[dict[str, Any]]) -> tuple[int, int]:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        accepted = 0
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for rec in records:
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO alerts (alert_id, gateway_id, seq, received_at, body) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        rec["alert_id"],
                        rec["gateway_id"],
                        rec["seq"],
                        now,
                        json.dumps(rec, sort_keys=True, separators=(",", ":")),
                    ),
                )
                accepted += cur.rowcount
            duplicates = len(records) - accepted
            self.bump(accepted=accepted, duplicates=duplicates)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return accepted, duplicates

    def list(self, after: int, limit: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT receipt, received_at, body FROM alerts WHERE receipt > ? "
            "ORDER BY receipt LIMIT ?",
            (after, limit),
        ).fetchall()
        return [{"receipt": r, "received_at": at, "alert": json.loads(b)} for r, at, b in rows]

    def stats(self) -> dict[str, int]:
        out = dict(self.conn.execute("SELECT key, value FROM counters").fetchall())
        out["stored"] = self.conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
        return out


class Backend:
    """The aiohttp application and its state.

    Args:
        db: SQLite file path (":memory:" keeps nothing across restarts).
        token: if set, POST /v1/alerts requires `Authorization: Bearer <token>`.
        fail_first: the first N POSTs fail with `fail_status`.
        fail_status: status of those failures (default 503).
        max_body: request body limit in bytes (413 beyond).
    """

    def __init__(
        self,
        *,
        db: str | Path = ":memory:",
        token: str | None = None,
        fail_first: int = 0,
        fail_status: int = 503,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self._db_path = str(db)
        self.token = token
        self.faults: deque[Fault] = deque(maxlen=MAX_QUEUED_FAULTS)
        for _ in range(max(0, min(fail_first, MAX_QUEUED_FAULTS))):
            self.faults.append(Fault(status=fail_status))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backend-db")
        self._db: _Db | None = None
        self.app = web.Application(client_max_size=max_body)
        self.app.add_routes(
            [
                web.post("/v1/alerts", self._post_alerts),
                web.get("/v1/alerts", self._get_alerts),
                web.get("/v1/stats", self._get_stats),
                web.post("/admin/faults", self._post_faults),
                web.delete("/admin/faults", self._delete_faults),
            ]
        )
        self.app.on_startup.append(self._startup)
        self.app.on_cleanup.append(self._cleanup)

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _startup(self, _app: web.Application) -> None:
        self._db = await self._run(_Db, self._db_path)

    async def _cleanup(self, _app: web.Application) -> None:
        if self._db is not None:
            await self._run(self._db.conn.close)
            self._db = None
        self._executor.shutdown(wait=True)

    @property
    def db(self) -> _Db:
        if self._db is None:
            raise RuntimeError("backend not started")
        return self._db

    async def _post_alerts(self, request: web.Request) -> web.Response:
        await self._run(self.db.bump, posts=1)
        fault = self.faults.popleft() if self.faults else None
        if fault is not None and not fault.after_store:
            return await self._fail(fault)
        if not self._authorized(request):
            await self._run(self.db.bump, unauthorized=1)
            return web.Response(status=401, text="bad or missing bearer token")
        try:
            payload = await request.json()
        except web.HTTPRequestEntityTooLarge:
            raise
        except ValueError:
            return await self._reject("body is not JSON")
        alerts = payload.get("alerts") if isinstance(payload, dict) else None
        if not isinstance(alerts, list):
            return await self._reject('body must be {"alerts": [...]}')
        if len(alerts) > MAX_ALERTS_PER_POST:
            return await self._reject(f"at most {MAX_ALERTS_PER_POST} alerts per POST")
        for i, rec in enumerate(alerts):
            reason = validate(rec, i)
            if reason:
                return await self._reject(reason)
        accepted, duplicates = await self._run(self.db.store, alerts)
        if fault is not None:
            return await self._fail(fault)
        return web.json_response({"accepted": accepted, "duplicates": duplicates})

    async def _fail(self, fault: Fault) -> web.Response:
        await self._run(self.db.bump, faults_served=1)
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
        return web.Response(status=fault.status, text=fault.body, headers=headers)

    async def _reject(self, reason: str) -> web.Response:
        await self._run(self.db.bump, rejected=1)
        return web.json_response({"error": reason}, status=400)

    def _authorized(self, request: web.Request) -> bool:
        return self.token is None or request.headers.get("Authorization") == (
            f"Bearer {self.token}"
        )

    async def _get_alerts(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401, text="bad or missing bearer token")
        try:
            after = int(request.query.get("after", "0"))
            limit = min(MAX_LIST, max(1, int(request.query.get("limit", str(MAX_LIST)))))
        except ValueError:
            return web.json_response({"error": "after and limit must be integers"}, status=400)
        rows = await self._run(self.db.list, after, limit)
        last = rows[-1]["receipt"] if rows else after
        return web.json_response(
            {
                "alerts": [r["alert"] for r in rows],
                "receipts": [r["receipt"] for r in rows],
                "last_receipt": last,
            }
        )

    async def _get_stats(self, _request: web.Request) -> web.Response:
        stats = await self._run(self.db.stats)
        stats["faults_queued"] = len(self.faults)
        return web.json_response(stats)

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json()
            count = int(spec.get("count", 1))
            retry_after = spec.get("retry_after")
            fault = Fault(
                status=int(spec.get("status", 503)),
                retry_after=None if retry_after is None else str(retry_after),
                delay_s=min(float(spec.get("delay_s", 0.0)), 300.0),
                body=str(spec.get("body", "injected fault")),
                after_store=bool(spec.get("after_store", False)),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            return web.json_response({"error": f"bad fault spec: {exc}"}, status=400)
        for _ in range(max(0, min(count, MAX_QUEUED_FAULTS))):
            self.faults.append(fault)
        return web.json_response({"queued": len(self.faults)})

    async def _delete_faults(self, _request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"queued": 0})


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # Lets a restarted backend take the same port at once (tests restart it on purpose).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class BackendServer:
    """In-process backend for tests: `async with BackendServer(db=path) as b: b.url`.

    Args:
        host: address to bind (loopback by default).
        port: 0 picks a free port; give the old port to restart on it.
        **kwargs: passed to Backend (db, token, fail_first, fail_status, max_body).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self.host = host
        self.port = port
        self.backend = Backend(**kwargs)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The alerts endpoint."""
        return f"http://{self.host}:{self.port}/v1/alerts"

    async def __aenter__(self) -> Self:
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(self.backend.app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def inject(self, fault: Fault, count: int = 1) -> None:
        """Queue `count` failures of the next POSTs."""
        for _ in range(count):
            self.backend.faults.append(fault)

    async def stats(self) -> dict[str, int]:
        """The persisted counters and the stored count."""
        return await self.backend._run(self.backend.db.stats)

    async def alerts(self, after: int = 0) -> list[dict[str, Any]]:
        """Stored alerts in receipt order."""
        return await self.backend._run(self.backend.db.list, after, MAX_LIST)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `edge-sim backend`."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--db", default=":memory:", help="SQLite file for received alerts")
    parser.add_argument("--token", default=None, help="require this bearer token")
    parser.add_argument(
        "--fail-first",
        type=int,
        default=0,
        metavar="N",
        help="fail the first N POSTs (see --fail-status)",
    )
    parser.add_argument(
        "--fail-status",
        type=int,
        default=503,
        help="HTTP status of --fail-first failures (default 503)",
    )


async def serve(args: argparse.Namespace) -> None:
    """Run the backend until cancelled; prints one `READY {...}` line once listening."""
    server = BackendServer(
        host=args.host,
        port=args.port,
        db=args.db,
        token=args.token,
        fail_first=args.fail_first,
        fail_status=getattr(args, "fail_status", 503),
    )
    async with server:
        ready = {"host": server.host, "port": server.port, "url": server.url}
        print("READY " + json.dumps(ready), flush=True)
        await asyncio.Event().wait()  # until cancelled
