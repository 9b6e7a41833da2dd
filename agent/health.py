"""Local health endpoints on loopback: GET /healthz (JSON) and GET /metrics (Prometheus).

The server reports the state the pollers, uplinks and store already hold; it computes
nothing of its own. It is read-only: anyone on the machine (and a web page in its browser)
can reach a TCP port, so every state-changing operation lives on the control socket
(agent.control). Requests whose Host is not the bound address are refused (DNS
rebinding), connections are capped and idle ones time out (agent._connguard). Requests
are answered from one snapshot at a time (SNAPSHOT_MAX_AGE_S), so a flood of them costs
the agent no more than one client does.

When the port cannot be taken (another process, maybe another local user's, holds it
while the agent restarts), the agent runs on and keeps trying, with a backoff up to
BIND_RETRY_MAX_S: the port is taken back as soon as it is free, instead of Prometheus
scraping whoever holds it for good. Meanwhile whatever answers on the port is not the
agent, and nothing here can stop Prometheus from scraping it: the episode is made loud
instead. It is logged as an error with the holder's uid where the kernel tells it, again
every BIND_REMIND_S while it lasts, and reported through `on_state` (the agent notes it in
its store, where `edge-agent status` reads it without the log, and in systemd's STATUS=,
which `systemctl status` shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import pwd
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from agent._connguard import ConnectionGuard
from agent.health_hosts import HostCheck, machine_names
from agent.health_metrics import Snapshot, render_metrics
from agent.reach import listener_uid
from agent.records import format_ts

log = logging.getLogger(__name__)

__all__ = ["HealthServer", "HostCheck", "Snapshot", "render_metrics"]

MAX_BODY_BYTES = 1024  # GET only: nothing to upload
# Connections served at once; more than the connections accepted per turn of the event
# loop (LISTEN_BACKLOG), so a newcomer has spoken before a crowd could push it out.
MAX_CONNECTIONS = 128
# Closes a connection that has not sent complete headers, or sits idle between requests,
# this long (aiohttp's keep-alive timeout covers both).
IDLE_TIMEOUT_S = 5.0
LISTEN_BACKLOG = 32
# The kernel's queue of connections not yet accepted (the loop still accepts LISTEN_BACKLOG
# a turn). At 32, a crowd of 1000 connects filled it and the kernel dropped a newcomer's
# SYN: its connect waited for the retransmission, 1 s later. Capped by net.core.somaxconn.
KERNEL_BACKLOG = 1024
MAX_ERROR_CHARS = 300  # of an unexpected error's text in the log line
# Every snapshot costs a read on the store writer's thread (where alerts are committed)
# and a render on the event loop (where sensors are polled): requests within this many
# seconds of one share it. 128 concurrent clients took the store writer for seconds per
# alert before (a read each, queued ahead of the writes, even for clients that hung up).
SNAPSHOT_MAX_AGE_S = 1.0
HEALTH_NOTE = "health_endpoint"  # the store's note (agent.store Outbox.note) of why not served
# While the port cannot be taken: the first retry after this long, then twice as long each
# time up to the maximum (one bind attempt each: nothing to flood).
BIND_RETRY_FIRST_S = 1.0
BIND_RETRY_MAX_S = 30.0
# While it lasts, the episode is logged again this often: whoever holds the port answers
# Prometheus as if it were the agent, and one line at the start scrolls out of sight.
BIND_REMIND_S = 600.0


def _what(exc: BaseException) -> str:
    """An error in words; a malformed request's without its bytes, which the client chose."""
    if isinstance(exc, HttpProcessingError):
        return f"malformed request refused with HTTP {exc.code} ({type(exc).__name__})"
    return " ".join(str(exc).split())[:MAX_ERROR_CHARS]


class _OneLine(logging.Filter):
    """aiohttp logs a malformed request with its traceback and some of its bytes: make it
    one warning line, the same for every malformed request of a kind. The log writes a
    repeated line once (agent.logs), so junk that differs each time cannot flood it: 20,000
    over-long request lines, each with other bytes, once wrote 6 MB in 10 s (under systemd,
    journald's rate limit then drops the agent's own warnings)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            record.msg = f"{record.getMessage()}: {_what(exc)}"
            record.args = ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_http_log = logging.getLogger(f"{__name__}.http")
_http_log.addFilter(_OneLine())


@dataclass(slots=True)
class _Answer:
    """One snapshot and its encodings, each made once however many requests read it."""

    snap: Snapshot
    _json: bytes | None = None
    _metrics: bytes | None = None

    @property
    def status(self) -> int:
        return 200 if self.snap.get("status") == "ok" else 503

    def json(self) -> bytes:
        if self._json is None:
            self._json = json.dumps(self.snap).encode()
        return self._json

    def metrics(self) -> bytes:
        if self._metrics is None:
            self._metrics = render_metrics(self.snap)
        return self._metrics


class _SharedAnswer:
    """The answer every request gets: one in the making for all callers at once, reused
    while younger than `max_age_s`. A caller that goes away (a client that hung up) does
    not cancel it; the next callers wait for the same one instead of starting another."""

    def __init__(self, make: Callable[[], Awaitable[Snapshot]], max_age_s: float) -> None:
        self._make = make
        self._max_age_s = max_age_s
        self._task: asyncio.Task[_Answer] | None = None
        self._started = 0.0
        # Bumped when the agent's state changes (a reload, a maintenance record): a
        # snapshot begun before that is not given to a caller asking after it.
        self._generation = 0
        self._task_generation = 0

    async def _answer(self) -> _Answer:
        return _Answer(await self._make())

    def _usable(self, now: float) -> bool:
        task = self._task
        if task is None or self._task_generation != self._generation:
            return False
        if not task.done():
            return True
        return (
            not task.cancelled()
            and task.exception() is None
            and now - self._started <= self._max_age_s
        )

    async def get(self) -> _Answer:
        now = time.monotonic()
        if not self._usable(now):
            self._task = asyncio.get_running_loop().create_task(self._answer())
            # retrieved here too: every caller may have gone before it failed
            self._task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._started = now
            self._task_generation = self._generation
        assert self._task is not None
        return await asyncio.shield(self._task)

    def expire(self) -> None:
        """The state changed: the next caller gets a snapshot begun after this."""
        self._generation += 1

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


class HealthServer:
    """aiohttp server for GET /healthz and GET /metrics (read-only).

    Args:
        snapshot: coroutine returning the agent's current status snapshot.
        host: listen address; keep it on loopback unless `expose`.
        port: listen port, 0 for a free one (see `port` after start).
        expose: the configuration asked to listen beyond loopback (logged as a warning).
        max_connections: connections served at once.
        idle_timeout_s: a connection without complete headers, or idle between requests,
            is closed after this long.
        snapshot_max_age_s: requests within this long of a snapshot are answered from it.
        on_state: told why the endpoint is not served when that begins, and None once it
            is served (at the start too) or closed unserved; must not raise.
        retry_first_s, retry_max_s: the backoff between attempts to take the port.
        remind_s: while the port cannot be taken, the error is logged again this often.
    """

    def __init__(
        self,
        snapshot: Callable[[], Awaitable[Snapshot]],
        *,
        host: str = "127.0.0.1",
        port: int = 9108,
        expose: bool = False,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        snapshot_max_age_s: float = SNAPSHOT_MAX_AGE_S,
        on_state: Callable[[str | None], Awaitable[None]] | None = None,
        retry_first_s: float = BIND_RETRY_FIRST_S,
        retry_max_s: float = BIND_RETRY_MAX_S,
        remind_s: float = BIND_REMIND_S,
    ) -> None:
        self._snapshot = snapshot
        self._answers = _SharedAnswer(self._full_snapshot, snapshot_max_age_s)
        self._host, self._port, self._expose = host, port, expose
        self._idle_timeout_s = idle_timeout_s
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._check = HostCheck(host, frozenset())
        self.guard = ConnectionGuard(max_connections, name="health endpoint")
        self.port: int | None = None
        self.error: str | None = None  # why the endpoint is not listening, if it is not
        self.bind_attempts = 0  # failed attempts to take the port, in all
        self._on_state = on_state
        self._retry_s = (retry_first_s, max(retry_first_s, retry_max_s))
        self._remind_s = remind_s
        self._retrying: asyncio.Task[None] | None = None

    def expire(self) -> None:
        """The agent's state changed (a reload, a maintenance record): requests from now
        on are answered from a snapshot made after it, not one up to a second older."""
        self._answers.expire()

    async def _full_snapshot(self) -> Snapshot:
        return {**await self._snapshot(), "http": asdict(self.guard.stats)}

    async def _healthz(self, _request: web.Request) -> web.Response:
        answer = await self._answers.get()
        return web.Response(
            body=answer.json(),
            status=answer.status,
            content_type="application/json",
            charset="utf-8",
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        answer = await self._answers.get()
        return web.Response(body=answer.metrics(), content_type="text/plain", charset="utf-8")

    @web.middleware
    async def _gate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not self._check.accepts(request.headers.get("Host")):
            return web.json_response(
                {"error": f"Host {request.headers.get('Host')!r} is not this agent's address"},
                status=421,
            )
        if request.method not in ("GET", "HEAD"):
            return web.json_response(
                {
                    "error": "read-only endpoint: changes (maintenance) go through the agent's "
                    "control socket, with `edge-agent maintenance`"
                },
                status=405,
                headers={"Allow": "GET, HEAD"},
            )
        if request.body_exists:
            return web.json_response({"error": "GET requests carry no body"}, status=400)
        return await handler(request)

    async def __aenter__(self) -> HealthServer:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._gate])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            logger=_http_log,
            keepalive_timeout=self._idle_timeout_s,
            max_line_size=4096,
            max_field_size=4096,
            handler_cancellation=True,
        )
        await self._runner.setup()
        names = await asyncio.to_thread(machine_names) if self._expose else frozenset()
        self._check = HostCheck(self._host, names)
        first = await self._listen()
        if first is not None:
            # Monitoring the machines matters more than this endpoint: run on, and retry.
            self.error = first
            log.error(
                "health endpoint not started (%s); the agent runs on without /healthz and "
                "/metrics, whatever answers on that port is NOT this agent, and it takes the "
                "port as soon as it is free (retried every %g s at most)",
                first,
                self._retry_s[1],
            )
            await self._tell(first)
            self._retrying = asyncio.create_task(self._retry(), name="health endpoint bind")
            return self
        await self._tell(None)
        return self

    async def _listen(self) -> str | None:
        """Take the port and serve; why not, when it cannot."""
        assert self._runner is not None and self._runner.server is not None
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self.guard.wrap(self._runner.server),
                self._host or None,
                self._port,
                backlog=LISTEN_BACKLOG,
                reuse_address=True,
            )
        except OSError as exc:
            self.bind_attempts += 1
            return await self._why_not(exc)
        for listening in self._server.sockets:
            with listening.dup() as sock:  # the same socket: asyncio's wrapper has no listen()
                sock.listen(KERNEL_BACKLOG)
        self.port = self._check.port = self._server.sockets[0].getsockname()[1]
        log.info("health endpoint on http://%s:%s/healthz", self._host, self.port)
        if self._expose:
            log.warning(
                "health endpoint exposed beyond this machine on %s:%s (health.expose): anyone "
                "who reaches it can read /healthz and /metrics; it changes nothing",
                self._host,
                self.port,
            )
        return None

    async def _why_not(self, exc: OSError) -> str:
        """The bind error in words, with who holds the port when the kernel says."""
        words = os.strerror(exc.errno) if exc.errno else str(exc)
        why = f"cannot listen on {self._host}:{self._port}: {words}"
        if exc.errno == errno.EADDRINUSE and self._port:
            holder = await asyncio.to_thread(_holder, self._host or "0.0.0.0", self._port)
            if holder is not None:
                why += f", held by {holder}"
        return why

    async def _retry(self) -> None:
        """Try to take the port again, with a backoff, until it is served (or closed)."""
        delay, cap = self._retry_s
        started = reminded = time.monotonic()
        while True:
            await asyncio.sleep(delay)
            why = await self._listen()
            if why is None:
                break
            self.error = why
            delay = min(delay * 2, cap)
            now = time.monotonic()
            if now - reminded >= self._remind_s:
                reminded = now
                log.error(
                    "health endpoint still not served after %.0f s (%s): whatever answers "
                    "/healthz and /metrics on that port is NOT this agent; retrying",
                    now - started,
                    why,
                )
            else:
                log.debug("health endpoint still not served (%s); next try in %g s", why, delay)
        log.warning(
            "health endpoint served again after %.0f s and %d failed attempt(s)",
            time.monotonic() - started,
            self.bind_attempts,
        )
        self.error = None
        await self._tell(None)

    async def _tell(self, why: str | None) -> None:
        if self._on_state is not None:
            await self._on_state(why)

    async def __aexit__(self, *_exc: object) -> None:
        if self._retrying is not None:
            self._retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrying
            self._retrying = None
            if self.error is not None:  # closed unserved: nothing left to report
                await self._tell(None)
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._answers.cancel()


def health_note(why: str | None, now: datetime) -> str | None:
    """The store's note of why the endpoint is not served (JSON: error, since), or None."""
    return None if why is None else json.dumps({"error": why, "since": format_ts(now)})


def health_status(why: str | None) -> str:
    """systemd's STATUS= for the endpoint's state: why it is not served, or cleared."""
    if why is None:
        return "STATUS="  # empty: systemd drops the text
    return (
        f"STATUS=health endpoint NOT served ({why}): whatever answers /healthz and /metrics "
        "there is not this agent; retrying"
    )


def _holder(host: str, port: int) -> str | None:
    """Who listens on host:port (blocking: /proc and the user database): uid 1000 (ana),
    the uid alone when it has no name; None when the kernel does not tell."""
    uid = listener_uid(host, port)
    if uid is None:
        return None
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"
