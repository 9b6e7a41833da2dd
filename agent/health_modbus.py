"""Prometheus families of the Modbus side: per-sensor fault kinds and value flags, per-bus
line use, and the event-loop lag (from the snapshot the runtime already holds)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


def modbus_metrics(snap: dict[str, Any]) -> Iterator[Metric]:
    """Per-sensor fault kinds and value flags, per-bus line use, and the event-loop lag."""
    kinds = CounterMetricFamily(
        "edge_sensor_poll_errors_by_kind",
        "Failed polls by kind (timeout, connection, exception_N, crc, short, wrong_device...)",
        labels=["sensor", "kind"],
    )
    bad = CounterMetricFamily(
        "edge_sensor_bad_values",
        "Readings not analysed: implausible values "
        "(sentinel, out_of_range, not_finite, all_zero, saturated, stuck)",
        labels=["sensor", "reason"],
    )
    stuck = CounterMetricFamily(
        "edge_sensor_stuck_episodes",
        "Values found frozen (one exact value repeated past the stuck rule), each run once",
        labels=["sensor"],
    )
    stuck_now = GaugeMetricFamily(
        "edge_sensor_stuck_values",
        "Channel features frozen now (their readings are not analysed)",
        labels=["sensor"],
    )
    for s in snap.get("sensors", []):
        for kind, n in (s.get("errors_by_kind") or {}).items():
            kinds.add_metric([s["id"], kind], float(n))
        for reason, n in (s.get("bad_values") or {}).items():
            bad.add_metric([s["id"], reason], float(n))
        if "stuck" in s:
            stuck.add_metric([s["id"]], float(s.get("stuck_episodes") or 0))
            stuck_now.add_metric([s["id"]], float(len(s["stuck"])))
    yield kinds
    yield bad
    yield stuck
    yield stuck_now
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
    duplicates = CounterMetricFamily(
        "edge_bus_duplicate_answers",
        "Answers a device sent twice (flaky slave, RS-485 repeater); the repeats were dropped",
        labels=["bus"],
    )
    echoes = CounterMetricFamily(
        "edge_bus_echoes",
        "Our requests read back by an echoing RS-485 adapter; dropped",
        labels=["bus"],
    )
    noisy_reads = CounterMetricFamily(
        "edge_bus_noisy_reads",
        "Failed reads after which the line never fell quiet (noise: broken transceiver, "
        "babbling device)",
        labels=["bus"],
    )
    sync_reads = CounterMetricFamily(
        "edge_bus_sync_reads",
        "Reads sent first because the device still owed a late answer to the block (RTU): "
        "that answer cannot pass for the block's",
        labels=["bus"],
    )
    noisy = GaugeMetricFamily(
        "edge_bus_noisy", "1 while the line is noisy (never falls quiet)", labels=["bus"]
    )
    for b in snap.get("buses", []):
        for key, fam in families.items():
            if b.get(key) is not None:
                fam.add_metric([b["name"]], float(b[key]))
        late.add_metric([b["name"]], float(b.get("late_answers", 0)))
        duplicates.add_metric([b["name"]], float(b.get("duplicate_answers", 0)))
        echoes.add_metric([b["name"]], float(b.get("echoes", 0)))
        noisy_reads.add_metric([b["name"]], float(b.get("noisy_reads", 0)))
        sync_reads.add_metric([b["name"]], float(b.get("sync_reads", 0)))
        noisy.add_metric([b["name"]], float(bool(b.get("noisy"))))
    yield from families.values()
    yield late
    yield duplicates
    yield echoes
    yield noisy_reads
    yield sync_reads
    yield noisy
    yield from _endpoint_metrics(snap.get("endpoints", []))
    lag = snap.get("pipeline", {}).get("loop_lag_max_s")
    if lag is not None:
        g = GaugeMetricFamily(
            "edge_loop_lag_seconds_max", "Longest event-loop lag since last scrape"
        )
        g.add_metric([], float(lag))
        yield g


def _endpoint_metrics(endpoints: list[dict[str, Any]]) -> Iterator[Metric]:
    """Silences of whole endpoints (every device behind a host:port, gateway or serial
    line at once): each counted, brief ones included, which raise no fault."""
    outages = CounterMetricFamily(
        "edge_endpoint_outages",
        "Ended silences of a whole endpoint (all its devices failing at once), brief ones included",
        labels=["endpoint"],
    )
    seconds = CounterMetricFamily(
        "edge_endpoint_outage_seconds", "Seconds endpoints were silent", labels=["endpoint"]
    )
    silent = GaugeMetricFamily(
        "edge_endpoint_silent", "1 while no device behind the endpoint answers", labels=["endpoint"]
    )
    for e in endpoints:
        outages.add_metric([e["endpoint"]], float(e["outages"]))
        seconds.add_metric([e["endpoint"]], float(e["outage_seconds"]))
        silent.add_metric([e["endpoint"]], float(e["silent"]))
    yield outages
    yield seconds
    yield silent
