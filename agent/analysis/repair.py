"""What a repair resets: an asset's channels and saved analysis states, and the alerts it
closes (agent.analysis.monitor `maintenance` makes the record)."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from dataclasses import dataclass, field

from agent.analysis.channel import Channel, state_key
from agent.analysis.drafts import closed_alert
from agent.analysis.lifecycle import LifecycleState


@dataclass(slots=True)
class Reset:
    """An asset's reset.

    Attributes:
        closed: each alert still active on the asset, as the record lists it.
        keys: the (sensor, channel) pairs reset, sorted.
        state: the reset states to store.
        transport: the transport of the channels reset (the record's sensor).
    """

    closed: list[dict[str, object]] = field(default_factory=list)
    keys: list[tuple[str, str]] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)
    transport: str = "modbus"


def reset_asset(
    asset_id: str,
    channels: MutableMapping[tuple[str, str], Channel],
    saved: MutableMapping[str, str],
) -> Reset:
    """Drop the asset's channels and its saved severity, trend and model states (both
    mappings are changed in place); what to store and which alerts were closed."""
    out = Reset()
    closed = out.closed
    # The channels on this asset now; a sensor a reload moved to another asset keeps its
    # channel there (only what it left on this asset, in the saved state, is reset).
    here = {k for k, c in channels.items() if c.asset.id == asset_id}
    keys = set(here)
    prefix = f"{asset_id}/"
    for k in [k for k in saved if k.startswith(prefix)]:
        _, sensor, channel, kind = k.split("/", 3)
        if kind not in ("severity", "trend", "model"):
            continue  # not the monitor's (sensor_fault belongs to the runtime)
        if kind in ("severity", "trend"):
            st = LifecycleState.from_dict(json.loads(saved[k]))
            if st.active and (sensor, channel) not in here:
                closed.append(closed_alert(sensor, channel, kind, st))
        keys.add((sensor, channel))
        del saved[k]
    for sensor, channel in sorted(keys):
        ch = channels.pop((sensor, channel)) if (sensor, channel) in here else None
        if ch is not None:
            out.transport = ch.sensor.transport
            for kind, st in (("severity", ch.severity), ("trend", ch.trend)):
                if st.active:
                    closed.append(closed_alert(sensor, channel, kind, st))
        for kind in ("severity", "trend"):
            out.state[state_key(asset_id, sensor, channel, kind)] = json.dumps(
                LifecycleState().to_dict(), sort_keys=True
            )
        out.state[state_key(asset_id, sensor, channel, "model")] = "{}"
    out.keys = sorted(keys)
    return out
