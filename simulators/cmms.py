"""`edge-sim cmms`: a CMMS work-order request receiver, the test peer of a CMMS uplink.

Modelled on how CMMS products take work-order requests over REST (UpKeep `POST
/api/v2/work-orders`, MaintainX `POST /v1/workorders`, Maximo `mxapiwo`/`mxapisr`): a
JSON object with a title, an asset, a priority, a due date and a description, answered
with the work order's id. Idempotency follows the IETF Idempotency-Key header draft: the
client sends one key per request it means once; a retry with the same key never opens a
second work order.

    POST /api/v1/work-orders       headers: Idempotency-Key (required, 1-255 visible ASCII),
                                   Authorization: Bearer <token> (when --token is set)
        body {"title": str 1-200, "asset_id": str 1-100,
              "priority": "low" | "medium" | "high" | "urgent",
              "type": "corrective" | "predictive" | "preventive" | "inspection"
                      (default "corrective"),
              "due_date": "2026-11-21T08:15:02Z" (UTC, optional milliseconds; optional),
              "description": str <= 20000 (optional),
              "site_id" | "location_id" | "requested_by": str <= 100 (optional),
              "source": {...} (optional, <= 16 KiB: e.g. the alert's ids, kept verbatim),
              "custom_fields": {name: str | number | bool | null} (optional)}
        201 {"work_order": {...}}          created; Location: /api/v1/work-orders/WO-000001
        200 {"work_order": {...}}          a retry of a key already seen with the same body:
                                           the existing work order (Idempotent-Replayed: true)
        422 {"error", "work_order_id"}     the key was used before with a different body
        400 {"error"}                      malformed JSON, missing key, an unknown or bad field
        401                                bad or missing bearer token
        413                                body over 256 KiB
    PATCH /api/v1/work-orders/{id} headers: Idempotency-Key (required, one key per update
                                   meant), Authorization as for POST; like UpKeep's or
                                   Fiix's PATCH of a work order by its id; also as a
                                   POST with X-HTTP-Method-Override: PATCH (Maximo's
                                   x-method-override, for clients that only POST)
        body {"title", "priority", "due_date", "description" (each replaces, as in POST),
              "note": str 1-20000 (appended to the work order's notes, like a Maximo
                      work log or a MaintainX comment)}: at least one, nothing else
        200 {"work_order": {...}}          updated (updated_at set; the note in "notes")
        200 the same, Idempotent-Replayed: true   a retry of an update key with the same
                                           body: applied once, never twice
        404 {"error"}                      no work order with that id
        409 {"error", "work_order_status"} the work order is closed: open a new one
        422 {"error", "work_order_id"}     the update key was used before with another body
        400, 401, 413                      as for POST
    GET  /api/v1/work-orders       ?asset_id=&status=&after=<seq>&limit=<n>
                                   {"work_orders": [...], "last_seq": n} in creation order
    GET  /api/v1/work-orders/{id}  one work order (404 if unknown)
    GET  /api/v1/stats             counters: posts, created, replayed, conflicts, rejected,
                                   unauthorized, faults_served, updates, updated,
                                   update_replayed, not_found, updates_overridden (the
                                   updates POSTed with the override); work_orders
    POST /admin/faults, /admin/outage, DELETE /admin/faults
                                   fault injection on POSTs, as the backend's
                                   (simulators/_faults.py); after_store: the work order is
                                   created and the answer lost, so a retry must replay.

A work order is {"id", "request_key", "status": "open", "created_at", "updated_at" (null
until updated), "notes": [{"at", "text", "request_key"}], and the request's fields}; an
update overwrites the fields it names. POST /admin/close/{id} closes a work order (a person
doing so in the CMMS). Keys never expire here (a real CMMS may forget them after a day or
so: an uplink should also put the alert id in `source` so a person can find a duplicate).
The file is SQLite in one worker thread; a restarted receiver keeps its work orders and keys.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from simulators._http import bearer_ok, json_error, read_json, serve_until_cancelled
from simulators._sim import CountedDb, SimApp, SimServer, add_common_arguments

MAX_BODY_BYTES = 256 * 1024
MAX_SOURCE_BYTES = 16 * 1024
MAX_LIST = 1000
COUNTERS = (
    "posts",
    "created",
    "replayed",
    "conflicts",
    "rejected",
    "unauthorized",
    "faults_served",
    "updates",
    "updated",
    "update_replayed",
    "not_found",
    "updates_overridden",  # of the updates, POSTed with X-HTTP-Method-Override: PATCH
)
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
_DUE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
CustomValue = str | int | float | bool | None


def _utc_date(value: str | None) -> str | None:
    if value is not None:
        if not _DUE_RE.match(value):
            raise ValueError("must be UTC ISO-8601 like 2026-11-21T08:15:02Z")
        datetime.fromisoformat(value.replace("Z", "+00:00"))  # a real date
    return value


class WorkOrderRequest(BaseModel):
    """The body of POST /api/v1/work-orders (strict: no type coercion, no unknown field)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    title: str = Field(min_length=1, max_length=200)
    asset_id: str = Field(min_length=1, max_length=100)
    priority: Literal["low", "medium", "high", "urgent"]
    type: Literal["corrective", "predictive", "preventive", "inspection"] = "corrective"
    due_date: str | None = None
    description: str = Field(default="", max_length=20000)
    site_id: str | None = Field(default=None, max_length=100)
    location_id: str | None = Field(default=None, max_length=100)
    requested_by: str | None = Field(default=None, max_length=100)
    source: dict[str, Any] | None = None
    custom_fields: dict[str, CustomValue] | None = None

    @field_validator("due_date")
    @classmethod
    def _utc(cls, value: str | None) -> str | None:
        return _utc_date(value)

    @field_validator("source")
    @classmethod
    def _small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value)) > MAX_SOURCE_BYTES:
            raise ValueError(f"must be at most {MAX_SOURCE_BYTES} bytes of JSON")
        return value


class WorkOrderUpdate(BaseModel):
    """The body of PATCH /api/v1/work-orders/{id} (strict, as WorkOrderRequest)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    title: str | None = Field(default=None, min_length=1, max_length=200)
    priority: Literal["low", "medium", "high", "urgent"] | None = None
    due_date: str | None = None
    description: str | None = Field(default=None, max_length=20000)
    note: str | None = Field(default=None, min_length=1, max_length=20000)

    @field_validator("due_date")
    @classmethod
    def _utc(cls, value: str | None) -> str | None:
        return _utc_date(value)

    def changes(self) -> dict[str, Any]:
        """The fields this update sets (at least one, else ValueError)."""
        given = self.model_dump(exclude_none=True)
        if not given:
            raise ValueError("body: give at least one of title, priority, due_date, "
                             "description, note")  # fmt: skip
        return given


def _problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: {err['msg']}{more}"


class CmmsDb(CountedDb):
    """Work orders and their request keys, used only from one worker thread."""

    def __init__(self, path: str) -> None:
        super().__init__(path, COUNTERS)
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS work_orders (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "request_key TEXT NOT NULL UNIQUE, body_sha256 TEXT NOT NULL, "
            "created_at TEXT NOT NULL, status TEXT NOT NULL, asset_id TEXT NOT NULL, "
            "body TEXT NOT NULL)"
        )
        # An update's key, so a retried PATCH (its answer lost) is applied once.
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS updates (request_key TEXT PRIMARY KEY, "
            "wo_seq INTEGER NOT NULL, body_sha256 TEXT NOT NULL, at TEXT NOT NULL)"
        )

    @staticmethod
    def _work_order(row: tuple[Any, ...]) -> dict[str, Any]:
        seq, key, created_at, status, body = row
        fields = json.loads(body)
        return {
            "id": f"WO-{seq:06d}",
            "request_key": key,
            "status": status,
            "created_at": created_at,
            "updated_at": fields.pop("_updated_at", None),
            "notes": fields.pop("_notes", []),
            **fields,
        }

    def update(
        self, wo_id: str, key: str, changes: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, str]:
        """Apply an update under its key: (the work order, updated | replayed | conflict |
        closed), or (None, not_found)."""
        match = re.fullmatch(r"WO-(\d{1,12})", wo_id)
        text = json.dumps(changes, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(f"{wo_id}\n{text}".encode()).hexdigest()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            row = None if match is None else self.conn.execute(
                "SELECT seq, request_key, created_at, status, body FROM work_orders "
                "WHERE seq = ?", (int(match.group(1)),),
            ).fetchone()  # fmt: skip
            if row is None:
                self.bump(not_found=1)
                self.conn.execute("COMMIT")
                return None, "not_found"
            seen = self.conn.execute(
                "SELECT body_sha256 FROM updates WHERE request_key = ?", (key,)
            ).fetchone()
            if seen is not None:
                outcome = "update_replayed" if seen[0] == digest else "conflicts"
                self.bump(**{outcome: 1})
                self.conn.execute("COMMIT")
                return self._work_order(row), outcome.removeprefix("update_").removesuffix("s")
            if row[3] == "closed":
                self.conn.execute("COMMIT")
                return self._work_order(row), "closed"
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            fields = json.loads(row[4])
            note = changes.pop("note", None)
            fields.update(changes)
            if note is not None:
                fields["_notes"] = [*fields.get("_notes", []),
                                    {"at": now, "text": note, "request_key": key}]  # fmt: skip
            fields["_updated_at"] = now
            body = json.dumps(fields, sort_keys=True, separators=(",", ":"))
            self.conn.execute("UPDATE work_orders SET body = ? WHERE seq = ?", (body, row[0]))
            self.conn.execute(
                "INSERT INTO updates (request_key, wo_seq, body_sha256, at) VALUES (?, ?, ?, ?)",
                (key, row[0], digest, now),
            )
            self.bump(updated=1)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return self._work_order((*row[:4], body)), "updated"

    def close(self, wo_id: str) -> bool:
        """Close a work order (a person did the job); False if there is none."""
        match = re.fullmatch(r"WO-(\d{1,12})", wo_id)
        if match is None:
            return False
        cur = self.conn.execute(
            "UPDATE work_orders SET status = 'closed' WHERE seq = ?", (int(match.group(1)),)
        )
        return cur.rowcount == 1

    def create(self, key: str, request: WorkOrderRequest) -> tuple[dict[str, Any], str]:
        """The work order for `key` and what happened: created, replayed or conflict."""
        body = json.dumps(request.model_dump(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(body.encode()).hexdigest()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            row = self.conn.execute(
                "SELECT seq, request_key, created_at, status, body, body_sha256 "
                "FROM work_orders WHERE request_key = ?",
                (key,),
            ).fetchone()
            if row is not None:
                outcome = "replayed" if row[5] == digest else "conflicts"
                self.bump(**{outcome: 1})
                self.conn.execute("COMMIT")
                return self._work_order(row[:5]), outcome.removesuffix("s")
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            cur = self.conn.execute(
                "INSERT INTO work_orders (request_key, body_sha256, created_at, status, "
                "asset_id, body) VALUES (?, ?, ?, 'open', ?, ?)",
                (key, digest, now, request.asset_id, body),
            )
            self.bump(created=1)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return self._work_order((cur.lastrowid, key, now, "open", body)), "created"

    def list(
        self, after: int, limit: int, asset_id: str | None, status: str | None
    ) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT seq, request_key, created_at, status, body FROM work_orders WHERE seq > ? "
            "AND (? IS NULL OR asset_id = ?) AND (? IS NULL OR status = ?) ORDER BY seq LIMIT ?",
            (after, asset_id, asset_id, status, status, limit),
        ).fetchall()
        return [self._work_order(r) for r in rows]

    def get(self, wo_id: str) -> dict[str, Any] | None:
        match = re.fullmatch(r"WO-(\d{1,12})", wo_id)
        if match is None:
            return None
        row = self.conn.execute(
            "SELECT seq, request_key, created_at, status, body FROM work_orders WHERE seq = ?",
            (int(match.group(1)),),
        ).fetchone()
        return None if row is None else self._work_order(row)

    def stats(self) -> dict[str, int]:
        out = self.counters()
        out["work_orders"] = self.conn.execute("SELECT count(*) FROM work_orders").fetchone()[0]
        return out


class Cmms(SimApp[CmmsDb]):
    """The aiohttp application and its state.

    Args:
        db: SQLite file path (":memory:" keeps nothing across restarts).
        token: if set, every /api request requires `Authorization: Bearer <token>`.
        fail_first: the first N POSTs fail with `fail_status`.
        fail_status: status of those failures (default 503).
    """

    def __init__(
        self,
        *,
        db: str | Path = ":memory:",
        token: str | None = None,
        fail_first: int = 0,
        fail_status: int = 503,
    ) -> None:
        super().__init__(
            "cmms-db",
            CmmsDb,
            db=db,
            token=token,
            fail_first=fail_first,
            fail_status=fail_status,
            max_body=MAX_BODY_BYTES,
        )
        self.app.add_routes(
            [
                web.post("/api/v1/work-orders", self._post),
                web.get("/api/v1/work-orders", self._list),
                web.get("/api/v1/work-orders/{id}", self._get),
                web.patch("/api/v1/work-orders/{id}", self._patch),
                web.post("/api/v1/work-orders/{id}", self._overridden),
                web.post("/admin/close/{id}", self._close),
                web.get("/api/v1/stats", self._stats),
            ]
        )

    async def _post(self, request: web.Request) -> web.Response:
        fault, answer = await self.admit_write(request, "open")
        if answer is not None:
            return answer
        key = request.headers.get("Idempotency-Key", "")
        if not _KEY_RE.match(key):
            return await self.reject(
                "Idempotency-Key header required: 1-255 visible ASCII characters, one key "
                "per work order meant (e.g. the alert id)"
            )
        payload, error = await read_json(request)
        if error is not None:
            return await self.reject("body is not JSON")
        try:
            wo_request = WorkOrderRequest.model_validate(payload)
        except ValidationError as exc:
            return await self.reject(_problem(exc))
        work_order, outcome = await self.dbt.run(self.db.create, key, wo_request)
        if fault is not None:
            return await self.faults.serve(fault)
        if outcome == "conflict":
            return json_error(
                422,
                "this Idempotency-Key was used before with a different request",
                work_order_id=work_order["id"],
            )
        if outcome == "replayed":
            return web.json_response(
                {"work_order": work_order}, headers={"Idempotent-Replayed": "true"}
            )
        return web.json_response(
            {"work_order": work_order},
            status=201,
            headers={"Location": f"/api/v1/work-orders/{work_order['id']}"},
        )

    async def _patch(self, request: web.Request) -> web.Response:
        fault, answer = await self.admit_write(request, "update")
        if answer is not None:
            return answer
        await self.dbt.run(self.db.bump, updates=1)
        key = request.headers.get("Idempotency-Key", "")
        if not _KEY_RE.match(key):
            return await self.reject(
                "Idempotency-Key header required: 1-255 visible ASCII characters, one key "
                "per update meant"
            )
        payload, error = await read_json(request)
        if error is not None:
            return await self.reject("body is not JSON")
        try:
            changes = WorkOrderUpdate.model_validate(payload).changes()
        except ValidationError as exc:
            return await self.reject(_problem(exc))
        except ValueError as exc:
            return await self.reject(str(exc))
        wo_id = request.match_info["id"]
        work_order, outcome = await self.dbt.run(self.db.update, wo_id, key, changes)
        if fault is not None:
            return await self.faults.serve(fault)
        if work_order is None:
            return json_error(404, f"no work order {wo_id!r}")
        if outcome == "closed":
            return json_error(409, f"work order {wo_id} is closed", work_order_status="closed")
        if outcome == "conflict":
            return json_error(
                422, "this Idempotency-Key was used before with a different update",
                work_order_id=work_order["id"],
            )  # fmt: skip
        headers = {"Idempotent-Replayed": "true"} if outcome == "replayed" else None
        return web.json_response({"work_order": work_order}, headers=headers)

    async def _overridden(self, request: web.Request) -> web.Response:
        """POST with `X-HTTP-Method-Override: PATCH` is the PATCH (as Maximo's
        x-method-override, for clients and proxies that only pass POST)."""
        override = request.headers.get("X-HTTP-Method-Override") or request.headers.get(
            "x-method-override", ""
        )
        if override.upper() != "PATCH":
            return json_error(405, "POST a work order's update with X-HTTP-Method-Override: "
                              "PATCH, or PATCH it", allow="PATCH")  # fmt: skip
        await self.dbt.run(self.db.bump, updates_overridden=1)
        return await self._patch(request)

    async def _close(self, request: web.Request) -> web.Response:
        if not bearer_ok(request, self.token):
            return json_error(401, "bad or missing bearer token")
        if not await self.dbt.run(self.db.close, request.match_info["id"]):
            return json_error(404, f"no work order {request.match_info['id']!r}")
        return web.json_response({"closed": request.match_info["id"]})

    async def _list(self, request: web.Request) -> web.Response:
        (after, limit), answer = self.read_page(request, MAX_LIST)
        if answer is not None:
            return answer
        q = request.query
        rows = await self.dbt.run(self.db.list, after, limit, q.get("asset_id"), q.get("status"))
        last = int(rows[-1]["id"][3:]) if rows else after
        return web.json_response({"work_orders": rows, "last_seq": last})

    async def _get(self, request: web.Request) -> web.Response:
        if not bearer_ok(request, self.token):
            return json_error(401, "bad or missing bearer token")
        wo = await self.dbt.run(self.db.get, request.match_info["id"])
        if wo is None:
            return json_error(404, f"no work order {request.match_info['id']!r}")
        return web.json_response({"work_order": wo})

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response(await self.dbt.run(self.db.stats))


class CmmsServer(SimServer):
    """In-process CMMS receiver for tests, on loopback (`host`, `port` as SimServer); other
    keywords go to Cmms (db, token, fail_first, fail_status)."""

    path = "/api/v1/work-orders"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self.cmms = Cmms(**kwargs)
        super().__init__(self.cmms, host=host, port=port)

    async def work_orders(self) -> list[dict[str, Any]]:
        """Every work order in creation order."""
        return await self.cmms.dbt.run(self.cmms.db.list, 0, MAX_LIST, None, None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `edge-sim cmms`."""
    add_common_arguments(parser, "work orders")


async def serve(args: argparse.Namespace) -> None:
    """Run the receiver until cancelled; prints one `READY {...}` line once listening."""
    server = CmmsServer(
        host=args.host,
        port=args.port,
        db=args.db,
        token=args.token,
        fail_first=args.fail_first,
        fail_status=args.fail_status,
    )
    await serve_until_cancelled(server, lambda s: {"url": f"{s.base_url}/api/v1/work-orders"})
