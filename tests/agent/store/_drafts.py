"""Alert drafts for store and uplink tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from agent.records import AlertDraft, AssetRef, SensorRef, Severity

T0 = datetime(2026, 11, 21, 8, 15, 2, 123000, tzinfo=UTC)


def draft(tier: int = 2, i: int = 0, *, asset: str | None = None, **evidence: Any) -> AlertDraft:
    """A severity alert on a tier-`tier` asset, detected i seconds after T0."""
    aid = asset or f"asset-t{tier}"
    return AlertDraft(
        asset=AssetRef(aid, f"Asset {aid}", tier),
        sensor=SensorRef("m1-de", "z", "modbus"),
        kind="severity",
        state="raised",
        detected_at=T0 + timedelta(seconds=i),
        severity=Severity(
            "warning", "C", "ISO 10816-3 group 2 rigid", "velocity_rms_mm_s", 4.9, 4.5
        ),
        evidence={"features": {"kurtosis": 5.8, **evidence}},
    )
