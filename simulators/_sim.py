"""What every HTTP simulator shares: its SQLite file with counters, a token, fault injection.

`SimApp` is the application's state, `SimServer` runs it on loopback, and
`add_common_arguments` gives their command lines the same options.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from aiohttp import web

from simulators._faults import Fault, Faults
from simulators._http import AppServer, DbThread, bearer_ok, json_error

# The token for --token's default: a process's environment is readable by its user only,
# its command line by every local user (ps).
TOKEN_ENV = "EDGE_SIM_TOKEN"


class StartError(Exception):
    """A simulator cannot start (its database cannot be opened); the message says why."""


class CountedDb:
    """A simulator's SQLite file (WAL, fsync on commit) with a table of counters.

    Used only from the simulator's one DB thread.
    """

    def __init__(self, path: str, counters: tuple[str, ...]) -> None:
        try:
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise StartError(f"cannot open the database {path}: {exc}") from None
        self.conn.executemany(
            "INSERT OR IGNORE INTO counters (key, value) VALUES (?, 0)", [(k,) for k in counters]
        )

    def bump(self, **counts: int) -> None:
        self.conn.executemany(
            "UPDATE counters SET value = value + ? WHERE key = ?",
            [(n, k) for k, n in counts.items()],
        )

    def counters(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT key, value FROM counters").fetchall())


DbT = TypeVar("DbT", bound=CountedDb)


class SimApp(Generic[DbT]):
    """What every HTTP simulator has: its file in one thread, a token, fault injection.

    Args:
        name: the DB thread's name.
        open_db: opens the simulator's file (in the DB thread) from its path.
        db: SQLite file path (":memory:" keeps nothing across restarts).
        token: if set, requests require `Authorization: Bearer <token>`.
        fail_first: the first N write requests fail with `fail_status`.
        fail_status: status of those failures.
        max_body: request body limit in bytes (413 beyond).
    """

    def __init__(
        self,
        name: str,
        open_db: Callable[[str], DbT],
        *,
        db: str | Path,
        token: str | None,
        fail_first: int,
        fail_status: int,
        max_body: int,
    ) -> None:
        self._open, self._db_path, self.token = open_db, str(db), token
        self.dbt = DbThread(name)
        self.faults = Faults(
            on_served=lambda: self.dbt.run(self.db.bump, faults_served=1), token=token
        )
        self.faults.inject(Fault(status=fail_status), fail_first)
        self._db: DbT | None = None
        self.app = web.Application(client_max_size=max_body)
        self.faults.add_routes(self.app)
        self.app.on_startup.append(self._startup)
        self.app.on_cleanup.append(self._cleanup)

    async def _startup(self, _app: web.Application) -> None:
        self._db = await self.dbt.run(self._open, self._db_path)

    async def _cleanup(self, _app: web.Application) -> None:
        if self._db is not None:
            await self.dbt.run(self._db.conn.close)
            self._db = None
        self.dbt.shutdown()

    @property
    def db(self) -> DbT:
        if self._db is None:
            raise RuntimeError("simulator not started")
        return self._db

    async def admit_write(
        self, request: web.Request, kind: str | None = None
    ) -> tuple[Fault | None, web.Response | None]:
        """Count a write request (of `kind`, for faults that wait for one), then: (the
        fault to answer with after applying it, or the answer to give now: a fault or an
        outage before applying it, or a 401)."""
        await self.dbt.run(self.db.bump, posts=1)
        fault = self.faults.next_write(kind)
        if fault is not None and not fault.after_store:
            return None, await self.faults.serve(fault)
        if not bearer_ok(request, self.token):
            await self.dbt.run(self.db.bump, unauthorized=1)
            return None, json_error(401, "bad or missing bearer token")
        return fault, None

    async def reject(self, reason: str) -> web.Response:
        """Count a rejected write and answer 400 with `reason`."""
        await self.dbt.run(self.db.bump, rejected=1)
        return json_error(400, reason)

    def read_page(
        self, request: web.Request, max_list: int
    ) -> tuple[tuple[int, int], web.Response | None]:
        """A list request's ((after, limit), None), or (_, the 401 or 400 answer to give):
        `after` defaults to 0, `limit` to and at most `max_list`, at least 1."""
        if not bearer_ok(request, self.token):
            return (0, 0), json_error(401, "bad or missing bearer token")
        try:
            after = int(request.query.get("after", "0"))
            limit = min(max_list, max(1, int(request.query.get("limit", str(max_list)))))
        except ValueError:
            return (0, 0), json_error(400, "after and limit must be integers")
        return (after, limit), None


class SimServer(AppServer):
    """Runs a SimApp on loopback: `async with BackendServer(db=path) as s: s.url`.

    Args:
        sim: the application.
        host: address to bind (loopback by default).
        port: 0 picks a free port; give the old port to restart on it.
    """

    path = "/"  # the simulator's main endpoint

    def __init__(self, sim: SimApp[Any], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim = sim
        super().__init__(sim.app, host=host, port=port)

    @property
    def url(self) -> str:
        """The main endpoint's URL."""
        return self.base_url + self.path

    def inject(self, fault: Fault, count: int = 1) -> None:
        """Queue `count` failures of the next write requests."""
        self.sim.faults.inject(fault, count)


def add_common_arguments(parser: argparse.ArgumentParser, stored: str) -> None:
    """Options every HTTP simulator takes; `stored` names what its --db keeps."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--db", default=":memory:", help=f"SQLite file for {stored}")
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"require this bearer token (default: ${TOKEN_ENV}, better: a command line is "
        "visible to every local user)",
    )
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
