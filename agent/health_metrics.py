"""Prometheus text exposition of the agent's status snapshot (GET /metrics).

Every family reports a value the pollers, uplinks and store already hold; nothing here
computes state of its own. Modbus and MQTT families live beside it (health_modbus,
health_mqtt).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.health_modbus import modbus_metrics
from agent.health_mqtt import mqtt_metrics

__all__ = ["Snapshot", "render_metrics"]

Snapshot = dict[str, Any]

LEARNING_STATES = ("waiting_to_run", "learning", "watching")


def render_metrics(snap: Snapshot) -> bytes:
    """Prometheus text exposition of a snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))  # type: ignore[arg-type]
    return generate_latest(registry)


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
        yield from modbus_metrics(snap)
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
        learning = GaugeMetricFamily(
            "edge_channel_learning",
            "Baseline state (1 the current one): waiting_to_run (readings under "
            "machine.running_above_mm_s, nothing learned or watched), learning, watching",
            labels=["asset", "sensor", "channel", "state"],
        )
        unconfirmed = CounterMetricFamily(
            "edge_channel_unconfirmed_readings",
            "Readings that jumped over 10x the last analysed one and fell back before 4 in a "
            "row: taken as garbage, not analysed",
            labels=["asset", "sensor", "channel"],
        )
        for c in snap.get("channels", []):
            where = [c["asset"], c["sensor"], c["channel"]]
            unconfirmed.add_metric(where, float(c.get("unconfirmed", 0)))
            if "learning_state" in c:
                for state in LEARNING_STATES:
                    learning.add_metric([*where, state], float(c["learning_state"] == state))
            # zone None: the machine is stopped, or the waveform does not resolve the
            # velocity band (no ISO zone)
            idle = "stopped" if c.get("stopped") else "unresolved"
            zone.add_metric([*where, c["zone"] or idle], c["value"])
            level.add_metric(where, c["active_level"])
            for kind, n in c.get("flaps", {}).items():
                flaps.add_metric([*where, kind], float(n))
        yield zone
        yield level
        yield flaps
        yield learning
        yield unconfirmed
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
    ("edge_uplink_dead_lettered", "Items it dead-lettered since start (refused by the far end)",
     ("dead_lettered_total",), True),
    ("edge_uplink_too_large", "Items dead-lettered as larger than the far end takes (HTTP "
     "413, MQTT maximum packet size)", ("too_large_total",), True),
    ("edge_uplink_evicted", "Alerts evicted by the disk budget before it had them",
     ("backlog", "evicted_total"), True),
    ("edge_uplink_summaries_delivered", "Feature summaries delivered",
     ("summaries_delivered_total",), True),
    ("edge_uplink_consecutive_failures", "Failure streak of its alerts (0: alerts flow)",
     ("consecutive_failures",), False),
    ("edge_uplink_summaries_consecutive_failures", "Failure streak of its feature summaries",
     ("summaries_consecutive_failures",), False),
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
