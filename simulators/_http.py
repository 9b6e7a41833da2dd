"""Plumbing shared by the HTTP simulators (backend, cmms): a DB thread, faults, a runner.

Each simulator keeps its SQLite file in one worker thread (`DbThread`), never on the event
loop, and runs its aiohttp application through `AppServer`, which binds with SO_REUSEADDR
so that a restarted simulator takes its old port at once (tests restart them on purpose).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

T = TypeVar("T")
SHUTDOWN_S = 0.5  # requests still open at shutdown are cut after this


def bind(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on host:port (0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class DbThread:
    """One worker thread that owns a simulator's SQLite connection."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` in the worker thread."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def shutdown(self) -> None:
        """Wait for the running call, then stop the thread."""
        self._executor.shutdown(wait=True)


def bearer_ok(request: web.Request, token: str | None) -> bool:
    """Whether the request carries `Authorization: Bearer <token>` (always, without token)."""
    if token is None:
        return True
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    """A JSON error body {"error": message, ...} with the given status."""
    return web.json_response({"error": message, **extra}, status=status)


async def read_json(request: web.Request) -> tuple[Any, web.Response | None]:
    """The request's JSON body, or (None, a 400 response saying why); 413 propagates."""
    try:
        return await request.json(), None
    except web.HTTPRequestEntityTooLarge:
        raise
    except (ValueError, UnicodeDecodeError):
        return None, json_error(400, "body is not JSON")


class AppServer:
    """Runs an aiohttp application on loopback: `async with AppServer(app) as s: s.port`.

    Args:
        app: the application.
        host: address to bind (loopback by default).
        port: 0 picks a free port; give the old port to restart on it.
    """

    def __init__(self, app: web.Application, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """http://host:port, without a trailing slash."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> Self:
        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        # A request still open at shutdown (a fault's held answer) is cut after this: a
        # simulator stopped while holding one waited its whole delay (then was killed).
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_S)
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


async def serve_until_cancelled(
    server: AppServer, ready: Callable[[AppServer], dict[str, Any]]
) -> None:
    """Run `server` until cancelled; print one `READY {...}` line once listening.

    Args:
        server: the server to run.
        ready: the line's fields beyond host and port, from the bound server.
    """
    async with server:
        info = {"host": server.host, "port": server.port, **ready(server)}
        print("READY " + json.dumps(info), flush=True)
        await asyncio.Event().wait()
