"""Alerts a sensor leaves open when it leaves its asset.

A reload that removes a sensor (or one of its channels) or moves it to another asset, or a
restart with a configuration edited that way, leaves the alerts it had open on the old
asset with no reading that could ever clear them: the backend's case for that machine
would stay open on a machine nobody measures. Each is closed with a "cleared" record whose
evidence says why; the caller stores it with the reset lifecycle state in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, MutableMapping
from datetime import datetime

from agent.analysis.channel import state_key
from agent.analysis.lifecycle import LifecycleState
from agent.analysis.severity import LEVEL_NAMES
from agent.config import Asset
from agent.records import AlertDraft, AssetRef, SensorRef

__all__ = [
    "CLOSED_AT_START",
    "CLOSED_BY_RELOAD",
    "asset_ref",
    "close_saved",
    "closing_draft",
    "why_left",
]

CLOSED_BY_RELOAD = "by a reload"
CLOSED_AT_START = "at start (the configuration no longer has it there)"


def why_left(
    asset_id: str, sensor_id: str, channel: str | None, placed: tuple[str, tuple[str, ...]] | None,
    when: str,
) -> str | None:  # fmt: skip
    """Why the sensor's channel on asset_id is no longer measured there; None if it is.

    Args:
        placed: the sensor's (asset id, channels) in the configuration now (None: absent).
        channel: None for a state of the whole sensor (sensor_fault).
        when: CLOSED_BY_RELOAD or CLOSED_AT_START.
    """
    if placed is None:
        return f"sensor removed from the configuration {when}"
    if placed[0] != asset_id:
        return f"sensor moved to asset {placed[0]} {when}"
    if channel is not None and channel not in placed[1]:
        return f"channel {channel} removed from the sensor's configuration {when}"
    return None


def asset_ref(asset: Asset | None, asset_id: str) -> AssetRef:
    """The record's asset; one gone from the configuration too is known by its id only
    (the state keeps no name or tier): named by its id, tier 3."""
    return (
        AssetRef(asset_id, asset_id, 3)
        if asset is None
        else AssetRef(asset.id, asset.name, asset.tier)
    )


def closing_draft(
    asset: AssetRef, sensor: SensorRef, kind: str, level: int, raised_at: str | None,
    at: datetime, reason: str, lead: str = "no longer measured on this asset",
) -> AlertDraft:  # fmt: skip
    """The "cleared" record of an alert closed without a reading that cleared it: its
    sensor left the asset, or (with its own lead) a reload made the channel
    relearn the baseline the alert was measured against."""
    return AlertDraft(
        asset=asset,
        sensor=sensor,
        kind=kind,  # type: ignore[arg-type]
        state="cleared",
        detected_at=at,
        severity=None,  # no reading measured the clear
        no_estimate_reason=f"{lead}: {reason}",
        evidence={
            "reason": reason,
            "closed_level": LEVEL_NAMES[min(max(level, 1), 2)],
            "raised_at": raised_at,
        },
    )


def close_saved(
    saved: MutableMapping[str, str], state: MutableMapping[str, str],
    placed: Callable[[str], tuple[str, tuple[str, ...]] | None],
    assets: Mapping[str, Asset], transports: Mapping[str, str], at: datetime, when: str,
) -> list[AlertDraft]:  # fmt: skip
    """The monitor's saved severity and trend alerts open for channels no longer on their
    asset: their "cleared" records; their lifecycle states restart (in saved and in the
    state to store with the records), the model keeps its baseline but not the closed
    trend's onset.

    Args:
        saved: persisted state by key of channels not running (changed in place).
        state: the update's state to store (the reset states are added).
        placed: a sensor's (asset id, channels) now, None if not configured.
        assets: the assets the records name, by id (as the alerts were raised).
        transports: each sensor's transport for the records ("modbus" if unknown).
    """
    drafts = []
    for k in sorted(saved):
        parts = k.split("/", 3)
        if len(parts) != 4 or parts[3] not in ("severity", "trend"):
            continue
        asset_id, sensor, channel, kind = parts
        if (reason := why_left(asset_id, sensor, channel, placed(sensor), when)) is None:
            continue  # still measured there (most keys: parse nothing)
        try:
            st = LifecycleState.from_dict(json.loads(saved[k]))
        except (ValueError, TypeError, AttributeError):
            continue
        if not st.active:
            continue
        ref = asset_ref(assets.get(asset_id), asset_id)
        sref = SensorRef(sensor, channel, transports.get(sensor, "modbus"))
        drafts.append(closing_draft(ref, sref, kind, st.active, st.raised_at, at, reason))
        saved[k] = state[k] = json.dumps(LifecycleState().to_dict(), sort_keys=True)
        model = state_key(asset_id, sensor, channel, "model")
        if kind == "trend" and model in saved:
            try:
                data = json.loads(saved[model])
                if data.get("onset_s") is not None:
                    data["onset_s"] = None
                    saved[model] = state[model] = json.dumps(data, separators=(",", ":"))
            except (ValueError, AttributeError):
                pass  # an unreadable model is relearned when the channel returns
    return drafts
