"""Prometheus families of the MQTT inputs: per-sensor messages and drops, per-broker link
state, unrouted messages and what the broker says it dropped (from the snapshot the
runtime already holds)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


def mqtt_metrics(snap: dict[str, Any]) -> Iterator[Metric]:
    """The MQTT families (empty ones when no MQTT sensor is configured)."""
    messages = CounterMetricFamily(
        "edge_mqtt_messages", "MQTT messages routed to the sensor", labels=["sensor"]
    )
    dropped = CounterMetricFamily(
        "edge_mqtt_dropped",
        "MQTT messages dropped, by reason (too_large, malformed, wrong_type, missing_field, "
        "bad_timestamp, future_timestamp, old_timestamp, bad_waveform...)",
        labels=["sensor", "reason"],
    )
    timing = CounterMetricFamily(
        "edge_mqtt_timing",
        "MQTT readings kept whose time was noted, by kind (late: measured longer than "
        "stale_after_s before arrival, not a sign of life; clock_ahead: stamped ahead of "
        "this gateway, analysed at their arrival time)",
        labels=["sensor", "kind"],
    )
    silent = GaugeMetricFamily(
        "edge_mqtt_last_message_age_seconds",
        "Seconds since the newest measurement of the sensor's usable MQTT messages",
        labels=["sensor"],
    )
    for s in snap.get("sensors", []):
        if s.get("transport") != "mqtt":
            continue
        messages.add_metric([s["id"]], float(s.get("messages_total", 0)))
        for reason, n in (s.get("dropped") or {}).items():
            dropped.add_metric([s["id"], reason], float(n))
        for kind, n in (s.get("timing") or {}).items():
            timing.add_metric([s["id"], kind], float(n))
        if s.get("last_message_age_s") is not None:
            silent.add_metric([s["id"]], float(s["last_message_age_s"]))
    yield messages
    yield dropped
    yield timing
    yield silent
    connected = GaugeMetricFamily(
        "edge_mqtt_broker_connected", "1 while the broker link is up", labels=["broker"]
    )
    connects = CounterMetricFamily(
        "edge_mqtt_broker_connects", "Successful connections to the broker", labels=["broker"]
    )
    received = CounterMetricFamily(
        "edge_mqtt_broker_messages", "Messages received from the broker", labels=["broker"]
    )
    queue = GaugeMetricFamily(
        "edge_mqtt_queue_depth", "Messages waiting to be decoded", labels=["broker"]
    )
    queue_bytes = GaugeMetricFamily(
        "edge_mqtt_queue_bytes",
        "Payload bytes waiting to be decoded (bounded by the broker's queue_max_bytes)",
        labels=["broker"],
    )
    queue_drops = CounterMetricFamily(
        "edge_mqtt_queue_dropped",
        "Messages dropped because the decode queue was full, by reason (queue_full: "
        "queue_size messages waiting; queue_bytes: queue_max_bytes of payload waiting)",
        labels=["broker", "reason"],
    )
    unrouted = CounterMetricFamily(
        "edge_mqtt_unrouted",
        "Messages no configured sensor took (unknown_sensor, no_key, malformed...), by topic "
        "filter",
        labels=["broker", "topic", "reason"],
    )
    refused = GaugeMetricFamily(
        "edge_mqtt_subscription_refused",
        "1 for a topic filter the broker refused to subscribe to (its ACL): its sensors get "
        "no messages",
        labels=["broker", "topic"],
    )
    broker_dropped = CounterMetricFamily(
        "edge_mqtt_broker_dropped",
        "Messages the broker reports it dropped while we were connected (mosquitto's "
        "$SYS/broker/publish/messages/dropped: its per-client limits max_inflight_messages / "
        "max_queued_messages; broker-wide, over all its clients, not only ours); absent while "
        "unknown (a broker without that topic, or one that refuses it)",
        labels=["broker"],
    )
    for b in snap.get("mqtt", []):
        name = [b["id"]]
        if b.get("broker_dropped_total") is not None:
            broker_dropped.add_metric(name, float(b["broker_dropped_total"]))
        for topic in b.get("refused_subscriptions") or {}:
            refused.add_metric([b["id"], topic], 1.0)
        connected.add_metric(name, 1.0 if b.get("connected") else 0.0)
        connects.add_metric(name, float(b.get("connects_total", 0)))
        received.add_metric(name, float(b.get("messages_total", 0)))
        queue.add_metric(name, float(b.get("queue_depth", 0)))
        queue_bytes.add_metric(name, float(b.get("queue_bytes", 0)))
        for reason, n in (b.get("queue_dropped") or {}).items():
            queue_drops.add_metric([b["id"], reason], float(n))
        for topic, reasons in (b.get("unrouted") or {}).items():
            for reason, n in reasons.items():
                unrouted.add_metric([b["id"], topic, reason], float(n))
    yield from (connected, connects, received, queue, queue_bytes, queue_drops, unrouted, refused)
    yield broker_dropped
