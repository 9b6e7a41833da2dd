"""Per asset/sensor/channel analysis: reading -> severity zone -> alert lifecycle -> drafts.

The monitor is pure and synchronous: the runtime feeds it readings and persists what it
returns (drafts and changed state) in one store transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from agent.analysis.lifecycle import LifecycleState, step
from agent.analysis.severity import LEVEL_NAMES, ZONE_LEVEL, ZoneTable, zone_table
from agent.config import Asset, Config
from agent.records import AlertDraft, AssetRef, SensorRef, Severity, format_ts
from drivers.reading import VELOCITY_RMS, Reading

SEVERITY_METRIC = VELOCITY_RMS


@dataclass(frozen=True, slots=True)
class ChannelView:
    """The latest state of one channel, for status displays and health."""

    asset_id: str
    sensor_id: str
    channel: str
    at: datetime
    value: float
    zone: str
    active_level: int


@dataclass(slots=True)
class Update:
    """What one reading produced: drafts to store, and state to store with them."""

    drafts: list[AlertDraft] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Channel:
    asset: Asset
    table: ZoneTable
    sensor: SensorRef
    severity: LifecycleState
    view: ChannelView | None = None


def state_key(asset_id: str, sensor_id: str, channel: str, kind: str) -> str:
    """The store key of one lifecycle state."""
    return f"{asset_id}/{sensor_id}/{channel}/{kind}"


class Monitor:
    """Runs every configured channel's analysis.

    Args:
        config: the validated configuration.
        state: persisted lifecycle state by key, as the store returned it.
    """

    def __init__(self, config: Config, *, state: Mapping[str, str] | None = None) -> None:
        self._sensor_asset = {s.id: config.asset(s.asset) for s in config.sensors}
        self._tables = {a.id: zone_table(a.machine) for a in config.assets}
        self._saved = dict(state or {})
        self._channels: dict[tuple[str, str], _Channel] = {}
        self.skipped_total = 0  # readings without a usable velocity (bad quality, missing)

    def _channel(self, reading: Reading) -> _Channel:
        key = (reading.sensor_id, reading.channel)
        ch = self._channels.get(key)
        if ch is None:
            asset = self._sensor_asset[reading.sensor_id]
            saved = self._saved.get(
                state_key(asset.id, reading.sensor_id, reading.channel, "severity")
            )
            ch = _Channel(
                asset=asset,
                table=self._tables[asset.id],
                sensor=SensorRef(reading.sensor_id, reading.channel, reading.transport),
                severity=LifecycleState.from_dict(json.loads(saved)) if saved else LifecycleState(),
            )
            self._channels[key] = ch
        return ch

    def update(self, reading: Reading) -> Update:
        """Analyse one reading; returns the drafts and state to persist together."""
        out = Update()
        if reading.sensor_id not in self._sensor_asset:
            raise KeyError(f"reading from unconfigured sensor {reading.sensor_id!r}")
        value = reading.features.get(SEVERITY_METRIC)
        if reading.quality != "good" or value is None or value != value:  # NaN check
            self.skipped_total += 1
            return out
        ch = self._channel(reading)
        zone = ch.table.zone(value)
        before = ch.severity.to_dict()
        s = step(
            ch.severity,
            ZONE_LEVEL[zone],
            below_clear=value < ch.table.bc * (1.0 - ch.asset.alerting.hysteresis),
            debounce=ch.asset.alerting.debounce,
            now_iso=format_ts(reading.timestamp),
        )
        ch.view = ChannelView(
            ch.asset.id, ch.sensor.id, ch.sensor.channel, reading.timestamp, value, zone,
            ch.severity.active,
        )
        if s.transition is not None:
            out.drafts.append(self._severity_draft(ch, reading, value, zone, s.transition, s.level))
        if ch.severity.to_dict() != before:
            key = state_key(ch.asset.id, ch.sensor.id, ch.sensor.channel, "severity")
            out.state[key] = json.dumps(ch.severity.to_dict(), sort_keys=True)
        return out

    def _severity_draft(
        self, ch: _Channel, reading: Reading, value: float, zone: str, transition: str, level: int
    ) -> AlertDraft:
        h = ch.asset.alerting.hysteresis
        if transition == "cleared":
            severity = Severity(
                "info", zone, ch.table.standard, SEVERITY_METRIC, value, ch.table.bc * (1 - h)
            )
        else:
            threshold = ch.table.cd if level >= 2 else ch.table.bc
            severity = Severity(
                LEVEL_NAMES[level], zone, ch.table.standard, SEVERITY_METRIC, value, threshold
            )
        return AlertDraft(
            asset=AssetRef(ch.asset.id, ch.asset.name, ch.asset.tier),
            sensor=ch.sensor,
            kind="severity",
            state=transition,  # type: ignore[arg-type]
            detected_at=reading.timestamp,
            severity=severity,
            no_estimate_reason="no trend model for this channel yet",
            evidence={"features": {k: round(v, 6) for k, v in reading.features.items()}},
        )

    def views(self) -> list[ChannelView]:
        """The latest view of every channel that has produced a reading."""
        return [c.view for c in self._channels.values() if c.view is not None]
