"""What one uplink's delivery loop reports to /healthz, /metrics and `status`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class UplinkStatus:
    """What health and status report; updated in place by the delivery loop.

    Plain JSON values only, so `dataclasses.asdict(status)` goes straight into /healthz.

    Attributes:
        name: the uplink's name; kind: http, mqtt or cmms; target: where, without secrets.
        state: idle, sending, backoff (waiting), probing (waiting, watching for the far
            end's return).
        last_success_at: UTC time of the last acknowledged batch, ISO-8601 with ms and Z.
        next_retry_in_s: while waiting, seconds to the next attempt (refreshed at least
            every second); None when not waiting.
        probes_total: cheap reachability checks made while the far end was down.
        resumed_by_probe_total: waits a probe cut short because the far end was back.
        skipped_total: items settled without sending, as this uplink does not carry them
            (cmms: clears, maintenance and sensor faults open no work order).
        too_large_total: items dead-lettered because they are larger than the far end takes
            (HTTP 413 for one item; MQTT: over the broker's maximum packet size).
        consecutive_failures, last_error: the alerts' side (a send of alerts, the store,
            the loop itself): consecutive_failures 0 means alerts flow. A summary delivered
            resets it only when no alert failed to go (the store or the loop failed: a
            calm plant sends no alert for days), or the one that did was dead-lettered
            since; a summary's failure sets neither.
        summaries_consecutive_failures, summaries_last_error: the feature summaries' own
            (their endpoint may be another: summaries_url), reset by a summary delivered.
    """

    name: str
    kind: str
    target: str
    state: str = "idle"
    delivered_total: int = 0
    summaries_delivered_total: int = 0
    attempts_total: int = 0
    failures_total: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_success_at: str | None = None
    next_retry_in_s: float | None = None
    dead_lettered_total: int = 0
    too_large_total: int = 0
    skipped_total: int = 0
    probes_total: int = 0
    resumed_by_probe_total: int = 0
    summaries_consecutive_failures: int = 0
    summaries_last_error: str | None = None
