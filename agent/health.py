"""Local health endpoints on loopback: GET /healthz (JSON) and GET /metrics (Prometheus).

The server reports the state the pollers, uplinks and store already hold; it computes
nothing of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.store import StoreError

log = logging.getLogger(__name__)

Snapshot = dict[str, Any]
Maintenance = Callable[[str, str], Awaitable[list[dict[str, Any]]]]
MAX_BODY_BYTES = 64 * 1024


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
        for c in snap.get("channels", []):
            zone.add_metric([c["asset"], c["sensor"], c["channel"], c["zone"]], c["value"])
            level.add_metric([c["asset"], c["sensor"], c["channel"]], c["active_level"])
        yield zone
        yield level
        store = snap.get("store", {})
        for key, doc in (
            ("pending", "Alerts waiting for delivery (buffer depth)"),
            ("oldest_pending_age_s", "Age of the oldest undelivered alert, seconds"),
            ("db_bytes", "Store file size in bytes"),
            ("dead_lettered", "Alerts moved to the dead-letter table"),
        ):
            if store.get(key) is not None:
                g = GaugeMetricFamily(f"edge_store_{key}", doc)
                g.add_metric([], float(store[key]))
                yield g
        if store.get("evicted_total") is not None:
            c = CounterMetricFamily("edge_store_evicted", "Alerts evicted by the disk budget")
            c.add_metric([], float(store["evicted_total"]))
            yield c
        up = CounterMetricFamily("edge_uplink_delivered", "Alerts delivered", labels=["uplink"])
        fail = CounterMetricFamily("edge_uplink_failures", "Failed deliveries", labels=["uplink"])
        for u in snap.get("uplinks", []):
            up.add_metric([u["name"]], float(u.get("delivered_total", 0)))
            fail.add_metric([u["name"]], float(u.get("failures_total", 0)))
        yield up
        yield fail
        pipe = snap.get("pipeline", {})
        for key, doc in (
            ("readings_total", "Readings analysed"),
            ("readings_dropped_total", "Readings dropped because the analysis queue was full"),
            ("alerts_total", "Alerts committed to the store"),
            ("alerts_lost_total", "Alerts lost because the store stayed unwritable"),
            ("store_errors_total", "Failed store writes"),
            ("analysis_errors_total", "Readings the analysis failed on"),
        ):
            c = CounterMetricFamily(f"edge_{key.removesuffix('_total')}", doc)
            c.add_metric([], float(pipe.get(key, 0)))
            yield c


def render_metrics(snap: Snapshot) -> bytes:
    """Prometheus text exposition of a snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))  # type: ignore[arg-type]
    return generate_latest(registry)


class HealthServer:
    """aiohttp server for /healthz, /metrics and POST /v1/maintenance.

    Args:
        snapshot: coroutine returning the agent's current status snapshot.
        host: listen address; keep it on loopback.
        port: listen port, 0 for a free one (see `port` after start).
        maintenance: records a repair event (asset id, note) and returns its records.
    """

    def __init__(
        self,
        snapshot: Callable[[], Awaitable[Snapshot]],
        *,
        host: str = "127.0.0.1",
        port: int = 9108,
        maintenance: Maintenance | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._maintenance = maintenance
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.error: str | None = None  # why the endpoint is not listening, if it is not

    async def _healthz(self, _request: web.Request) -> web.Response:
        snap = await self._snapshot()
        return web.json_response(snap, status=200 if snap.get("status") == "ok" else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = render_metrics(await self._snapshot())
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def _post_maintenance(self, request: web.Request) -> web.Response:
        if self._maintenance is None:
            return web.json_response({"error": "maintenance not available"}, status=404)
        try:
            body = await request.json()
            asset, note = body["asset"], str(body.get("note", ""))[:1000]
            if not isinstance(asset, str):
                raise TypeError("asset must be a string")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response(
                {"error": f'expected {{"asset": "<id>", "note": "..."}}: {exc}'}, status=400
            )
        try:
            records = await self._maintenance(asset, note)
        except KeyError:
            return web.json_response({"error": f"unknown asset {asset!r}"}, status=404)
        except StoreError as exc:
            return web.json_response(
                {"error": f"store unwritable, event held and retried: {exc}"}, status=503
            )
        return web.json_response({"records": records})

    async def __aenter__(self) -> HealthServer:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/maintenance", self._post_maintenance)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            # Monitoring the machines matters more than this endpoint: keep running.
            self.error = f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}"
            log.error(
                "health endpoint not started (%s); the agent runs on without "
                "/healthz, /metrics and maintenance over HTTP",
                self.error,
            )
            return self
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("health endpoint on http://%s:%s/healthz", self._host, self.port)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
