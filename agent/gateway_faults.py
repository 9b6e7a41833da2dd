"""Gateway faults as alerts: the store damaged, replaced or quarantined.

A reliability engineer proving, alert by alert, what was caught must also see when the
gateway itself lost (or nearly lost) its records. A `gateway_fault` record names the
gateway as its asset and what happened in its evidence; it is raised once per event (it
has no "cleared": the event is over when the record exists).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agent.config import Config
from agent.records import AlertDraft, AssetRef, SensorRef, Severity
from agent.store import Quarantined, StoreFault

STORE_SENSOR = "store"


def _gateway(config: Config) -> AssetRef:
    gw = config.gateway
    name = f"gateway {gw.id}" + (f" ({gw.site})" if gw.site else "")
    return AssetRef(gw.id, name, 1)


def _draft(
    config: Config,
    now: datetime,
    metric: str,
    value: float,
    threshold: float,
    evidence: dict[str, Any],
) -> AlertDraft:
    return AlertDraft(
        asset=_gateway(config),
        sensor=SensorRef(STORE_SENSOR, "all", "gateway"),
        kind="gateway_fault",
        state="raised",
        detected_at=now,
        severity=Severity("critical", None, "store integrity", metric, value, threshold),
        no_estimate_reason="a gateway fault, not a machine trend",
        evidence=evidence,
    )


def store_fault_draft(config: Config, fault: StoreFault, now: datetime) -> AlertDraft:
    """The record of a store recovered at run time."""
    lost = sum(n for n in fault.lost_rows.values() if n > 0)
    evidence = {
        "fault": f"store_{fault.kind}",
        "reason": fault.reason,
        "detected_at": fault.detected_at,
        "moved_to": str(fault.moved_to) if fault.moved_to else None,
        "rows_copied": fault.copied,
        "rows_unreadable": fault.lost_rows,
        "unreadable_count_unknown": any(n < 0 for n in fault.lost_rows.values()),
        "lost_items": list(fault.lost),
        "next_seq": fault.seq_restart,
    }
    return _draft(config, now, "unreadable_rows", float(lost), 0.0, evidence)


def quarantine_draft(config: Config, q: Quarantined, now: datetime) -> AlertDraft:
    """The record of a corrupt store moved aside at startup (its backlog is not here)."""
    evidence = {
        "fault": "store_quarantined_at_start",
        "reason": q.reason,
        "moved_to": str(q.path),
        "last_readable_seq": q.recovered_seq,
        "next_seq": q.seq_restart,
        "note": "undelivered alerts of the old file are not in the new store; keep it",
    }
    value = float(q.recovered_seq or 0)
    return _draft(config, now, "last_readable_seq", value, float(q.seq_restart), evidence)
