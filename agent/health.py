"""Local health endpoints on loopback: GET /healthz (JSON) and GET /metrics (Prometheus).

The server reports the state the pollers, uplinks and store already hold; it computes
nothing of its own. It is read-only: anyone on the machine (and a web page in its browser)
can reach a TCP port, so every state-changing operation lives on the control socket
(agent.control). Requests whose Host is not the bound address are refused (DNS
rebinding), connections are capped and idle ones time out (agent._connguard).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent._connguard import ConnectionGuard
from agent.health_mqtt import mqtt_metrics
from agent.netaddr import ip_of, is_loopback

log = logging.getLogger(__name__)

Snapshot = dict[str, Any]
MAX_BODY_BYTES = 1024  # GET only: nothing to upload
# Connections served at once; more than the connections accepted per turn of the event
# loop (LISTEN_BACKLOG), so a newcomer has spoken before a crowd could push it out.
MAX_CONNECTIONS = 128
# Closes a connection that has not sent complete headers, or sits idle between requests,
# this long (aiohttp's keep-alive timeout covers both).
IDLE_TIMEOUT_S = 5.0
LISTEN_BACKLOG = 32
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


class _SnapshotCollector:
    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap

    def collect(self) -> Iterator[Metric]:
        snap = self._snap
        sensors = snap.get("sensors", [])

        def per_sensor(name: str, doc: str, key: str, counter: bool = False) -> Metric:
            family_cls = CounterMetricFamily if counter else GaugeMetricFamily
            fam = family_cls(name, doc, labels=["sensor"])
            for s in sensors:
                if s.get(key) is not None:
                    fam.add_metric([s["id"]], float(s[key]))
            return fam

        yield per_sensor(
            "edge_sensor_last_read_age_seconds", "Seconds since the last good read", "last_ok_age_s"
        )
        yield per_sensor("edge_sensor_poll_errors", "Failed polls", "errors_total", counter=True)
        yield per_sensor("edge_sensor_polls", "Polls attempted", "polls_total", counter=True)
        yield per_sensor(
            "edge_sensor_round_trip_seconds", "Last poll round-trip time", "last_rtt_s"
        )
        yield per_sensor(
            "edge_sensor_consecutive_failures", "Failure streak", "consecutive_failures"
        )
        yield from _modbus_metrics(snap)
        yield from mqtt_metrics(snap)
        zone = GaugeMetricFamily(
            "edge_channel_velocity_rms_mm_s",
            "Last velocity RMS",
            labels=["asset", "sensor", "channel", "zone"],
        )
        level = GaugeMetricFamily(
            "edge_channel_alert_level",
            "Active alert level (0 none)",
            labels=["asset", "sensor", "channel"],
        )
        flaps = CounterMetricFamily(
            "edge_alert_flaps",
            "Returns above an alert's limit within its clear hold (one episode, not a new raise)",
            labels=["asset", "sensor", "channel", "kind"],
        )
        for c in snap.get("channels", []):
            where = [c["asset"], c["sensor"], c["channel"]]
            # zone None: the waveform does not resolve the velocity band (no ISO zone)
            zone.add_metric([*where, c["zone"] or "unresolved"], c["value"])
            level.add_metric(where, c["active_level"])
            for kind, n in c.get("flaps", {}).items():
                flaps.add_metric([*where, kind], float(n))
        yield zone
        yield level
        yield flaps
        store = snap.get("store", {})
        yield from _scalars(
            store,
            "edge_store_",
            (
                ("pending", "Alerts waiting for delivery (buffer depth)"),
                ("oldest_pending_age_s", "Age of the oldest undelivered alert, seconds"),
                ("db_bytes", "Store file size in bytes"),
                ("dead_lettered", "Alerts moved to the dead-letter table"),
            ),
        )
        yield from _scalars(
            store, "edge_store_", (("evicted_total", "Alerts evicted by the disk budget"),),
            counter=True,
        )  # fmt: skip
        up = CounterMetricFamily("edge_uplink_delivered", "Alerts delivered", labels=["uplink"])
        fail = CounterMetricFamily("edge_uplink_failures", "Failed deliveries", labels=["uplink"])
        for u in snap.get("uplinks", []):
            up.add_metric([u["name"]], float(u.get("delivered_total", 0)))
            fail.add_metric([u["name"]], float(u.get("failures_total", 0)))
        yield up
        yield fail
        yield from _uplink_series(snap.get("uplinks", []))
        yield from _scalars(
            snap.get("pipeline", {}),
            "edge_",
            (
                ("readings_total", "Readings analysed"),
                ("readings_dropped_total", "Readings dropped because the analysis queue was full"),
                ("alerts_total", "Alerts committed to the store"),
                ("alerts_lost_total", "Alerts lost because the store stayed unwritable"),
                ("store_errors_total", "Failed store writes"),
                ("analysis_errors_total", "Readings the analysis failed on"),
                ("summaries_total", "Feature summaries committed to the store"),
                ("summaries_dropped_total", "Feature summaries dropped (queue full, store error)"),
                ("store_faults_total", "Store files recovered at run time (replaced, damaged)"),
            ),
            counter=True,
            default=0.0,
        )
        yield from _scalars(
            snap.get("process", {}),
            "edge_",
            (
                ("open_fds", "Open file descriptors"),
                ("fd_limit", "Soft limit on open file descriptors (RLIMIT_NOFILE)"),
                ("loop_lag_seconds", "Event-loop lag at the watchdog's last tick"),
                ("store_writer_busy_seconds", "How long the store writer has been on one batch"),
            ),
        )
        yield from _scalars(
            snap.get("reload", {}),
            "edge_",
            (
                ("reloads_total", "Configuration reloads applied (SIGHUP, edge-agent reload)"),
                ("reload_failures_total", "Configuration reloads refused (the old one stayed)"),
            ),
            counter=True,
        )
        http = snap.get("http", {})
        yield from _scalars(http, "edge_http_", (("open", "Open HTTP connections"),))
        yield from _scalars(
            http,
            "edge_http_connections_",
            (
                ("accepted_total", "HTTP connections accepted"),
                ("evicted_total", "HTTP connections closed by the connection cap"),
            ),
            counter=True,
        )


def _scalars(
    values: dict[str, Any],
    prefix: str,
    names: tuple[tuple[str, str], ...],
    *,
    counter: bool = False,
    default: float | None = None,
) -> Iterator[Metric]:
    """One unlabelled family per key present in `values` (or with a default)."""
    for key, doc in names:
        value = values.get(key, default)
        if value is None:
            continue
        if counter:
            fam: CounterMetricFamily | GaugeMetricFamily = CounterMetricFamily(
                f"{prefix}{key.removesuffix('_total')}", doc
            )
        else:
            fam = GaugeMetricFamily(f"{prefix}{key}", doc)
        fam.add_metric([], float(value))
        yield fam


# Per-uplink series: (name, help, where in the uplink's snapshot, counter?)
_UPLINK_SERIES = (
    ("edge_uplink_pending", "Alerts waiting for this uplink", ("backlog", "pending"), False),
    ("edge_uplink_summaries_pending", "Feature summaries waiting for this uplink",
     ("backlog", "pending_summaries"), False),
    ("edge_uplink_oldest_pending_age_seconds", "Age of its oldest waiting alert",
     ("backlog", "oldest_pending_age_s"), False),
    ("edge_uplink_dead_letters", "Its dead letters now", ("backlog", "dead_lettered"), False),
    ("edge_uplink_evicted", "Alerts evicted by the disk budget before it had them",
     ("backlog", "evicted_total"), True),
    ("edge_uplink_summaries_delivered", "Feature summaries delivered",
     ("summaries_delivered_total",), True),
    ("edge_uplink_consecutive_failures", "Failure streak", ("consecutive_failures",), False),
    ("edge_uplink_probes", "Reachability probes while it was down", ("probes_total",), True),
    ("edge_uplink_skipped", "Items settled unsent: not for this uplink (cmms: no work order)",
     ("skipped_total",), True),
)  # fmt: skip


def _uplink_series(uplinks: list[dict[str, Any]]) -> Iterator[Metric]:
    for name, doc, where, counter in _UPLINK_SERIES:
        fam = (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=["uplink"])
        for u in uplinks:
            value: Any = u
            for key in where:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, int | float):
                fam.add_metric([u["name"]], float(value))
        yield fam


def _modbus_metrics(snap: Snapshot) -> Iterator[Metric]:
    """Per-sensor fault kinds and value flags, per-bus line use, and the event-loop lag."""
    kinds = CounterMetricFamily(
        "edge_sensor_poll_errors_by_kind",
        "Failed polls by kind (timeout, connection, exception_N, crc, short, wrong_device...)",
        labels=["sensor", "kind"],
    )
    bad = CounterMetricFamily(
        "edge_sensor_bad_values",
        "Readings not analysed: implausible values (sentinel, out_of_range, not_finite, all_zero)",
        labels=["sensor", "reason"],
    )
    for s in snap.get("sensors", []):
        for kind, n in (s.get("errors_by_kind") or {}).items():
            kinds.add_metric([s["id"], kind], float(n))
        for reason, n in (s.get("bad_values") or {}).items():
            bad.add_metric([s["id"], reason], float(n))
    yield kinds
    yield bad
    families = {
        "utilisation": GaugeMetricFamily(
            "edge_bus_utilisation",
            "Share of the last ~10 s the bus's line was busy",
            labels=["bus"],
        ),
        "planned_utilisation": GaugeMetricFamily(
            "edge_bus_planned_utilisation",
            "Share of the line the poll plan needs (over 1: the line cannot keep the rates)",
            labels=["bus"],
        ),
        "queue_depth": GaugeMetricFamily(
            "edge_bus_queue_depth", "Requests waiting for the line", labels=["bus"]
        ),
        "wait_s_max": GaugeMetricFamily(
            "edge_bus_wait_seconds_max",
            "Longest wait for the line since last scrape",
            labels=["bus"],
        ),
    }
    late = CounterMetricFamily(
        "edge_bus_late_answers",
        "Answers dropped because their request had timed out",
        labels=["bus"],
    )
    for b in snap.get("buses", []):
        for key, fam in families.items():
            if b.get(key) is not None:
                fam.add_metric([b["name"]], float(b[key]))
        late.add_metric([b["name"]], float(b.get("late_answers", 0)))
    yield from families.values()
    yield late
    lag = snap.get("pipeline", {}).get("loop_lag_max_s")
    if lag is not None:
        g = GaugeMetricFamily(
            "edge_loop_lag_seconds_max", "Longest event-loop lag since last scrape"
        )
        g.add_metric([], float(lag))
        yield g


def render_metrics(snap: Snapshot) -> bytes:
    """Prometheus text exposition of a snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))  # type: ignore[arg-type]
    return generate_latest(registry)


class _OneLine(logging.Filter):
    """aiohttp logs a malformed request with its traceback: make it one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            record.msg = f"{record.getMessage()}: {' '.join(str(exc).split())}"
            record.args = ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_http_log = logging.getLogger(f"{__name__}.http")
_http_log.addFilter(_OneLine())


def _split_host(header: str) -> tuple[str, int | None]:
    """("name", port) from a Host header value; port None when absent or malformed."""
    name, port = header.strip().lower(), None
    if name.startswith("["):  # [v6]:port
        end = name.find("]")
        tail, name = name[end + 1 :], name[1:end]
        if tail.startswith(":") and tail[1:].isdigit():
            port = int(tail[1:])
    elif name.count(":") == 1:
        name, _, digits = name.partition(":")
        port = int(digits) if digits.isdigit() else -1
    return name, port


class HostCheck:
    """Which Host headers name this server (anything else is DNS rebinding or a mistake).

    Args:
        host: the listen address.
        names: this machine's names, accepted when listening beyond loopback.
    """

    def __init__(self, host: str, names: frozenset[str]) -> None:
        self._host = host.strip().lower()
        self._names = names
        self.port: int | None = None

    def accepts(self, header: str | None) -> bool:
        if not header:
            return False
        name, port = _split_host(header)
        if port is not None and port != self.port:
            return False
        if self._host in WILDCARDS:
            return ip_of(name) is not None or name in self._names
        if name == self._host or name in self._names:
            return True
        return is_loopback(self._host) and is_loopback(name)


def _machine_names() -> frozenset[str]:
    # getfqdn() may ask DNS: called once, in a thread, at start.
    return frozenset(n.lower() for n in (socket.gethostname(), socket.getfqdn()) if n)


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
    ) -> None:
        self._snapshot = snapshot
        self._host, self._port, self._expose = host, port, expose
        self._idle_timeout_s = idle_timeout_s
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._check = HostCheck(host, frozenset())
        self.guard = ConnectionGuard(max_connections, name="health endpoint")
        self.port: int | None = None
        self.error: str | None = None  # why the endpoint is not listening, if it is not

    async def _full_snapshot(self) -> Snapshot:
        return {**await self._snapshot(), "http": asdict(self.guard.stats)}

    async def _healthz(self, _request: web.Request) -> web.Response:
        snap = await self._full_snapshot()
        return web.json_response(snap, status=200 if snap.get("status") == "ok" else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = render_metrics(await self._full_snapshot())
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

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
        names = await asyncio.to_thread(_machine_names) if self._expose else frozenset()
        self._check = HostCheck(self._host, names)
        assert self._runner.server is not None
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
            # Monitoring the machines matters more than this endpoint: keep running.
            self.error = f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}"
            log.error(
                "health endpoint not started (%s); the agent runs on without /healthz and /metrics",
                self.error,
            )
            return self
        self.port = self._check.port = self._server.sockets[0].getsockname()[1]
        log.info("health endpoint on http://%s:%s/healthz", self._host, self.port)
        if self._expose:
            log.warning(
                "health endpoint exposed beyond this machine on %s:%s (health.expose): anyone "
                "who reaches it can read /healthz and /metrics; it changes nothing",
                self._host,
                self.port,
            )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
