"""Periodic feature summaries: per sensor, min/mean/max/last of each feature per channel.

Optional telemetry for the portfolio's trend charts between alerts. Summaries travel the
same uplinks as alerts but at a lower class: an uplink sends them only when no alert waits,
and the disk budget evicts them before any alert. They have their own seq (a gap in alert
seqs must only ever mean a missing alert) and their own record (schema
edge-agent/summary/v1, `agent/schemas/summary-v1.json`).

Windows follow the readings' own timestamps: a sensor's window opens with its first
reading and closes with the first reading at least `interval_s` later, so a dead sensor
sends nothing (its sensor_fault alert says why) and a clock step cannot emit a burst. A
live reading's window length is measured on the monotonic clock (`Reading.mono_s`), so an
NTP step back cannot hold a window open for hours.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from agent.config import Config
from agent.records import AssetRef, format_ts
from drivers.reading import Reading

SCHEMA = "edge-agent/summary/v1"
MAX_CHANNELS = 16  # per sensor: bounds the memory of one window
MAX_FEATURES = 32  # per channel


def summary_id(gateway_id: str, seq: int) -> str:
    """Unique per gateway, never reused, never equal to an alert id."""
    return f"{gateway_id}-summary-{seq:012d}"


@dataclass(slots=True)
class _Stat:
    min: float
    max: float
    total: float
    last: float
    n: int = 1

    def add(self, value: float) -> None:
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.total += value
        self.last = value
        self.n += 1

    def as_dict(self) -> dict[str, float]:
        return {
            "min": round(self.min, 6),
            "mean": round(self.total / self.n, 6),
            "max": round(self.max, 6),
            "last": round(self.last, 6),
        }


@dataclass(slots=True)
class _Window:
    start: datetime
    end: datetime
    transport: str
    mono_start: float | None = None  # monotonic time of its first live reading
    readings: dict[str, int] = field(default_factory=dict)
    stats: dict[str, dict[str, _Stat]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SummaryDraft:
    """A summary before the store has numbered it."""

    asset: AssetRef
    sensor_id: str
    transport: str
    start: datetime
    end: datetime
    channels: dict[str, Any]

    @property
    def tier(self) -> int:
        return self.asset.tier

    def record(self, *, gateway_id: str, seq: int) -> dict[str, Any]:
        """The schema edge-agent/summary/v1 record under the given seq."""
        return {
            "schema": SCHEMA,
            "summary_id": summary_id(gateway_id, seq),
            "seq": seq,
            "gateway_id": gateway_id,
            "asset": asdict(self.asset),
            "sensor": {"id": self.sensor_id, "transport": self.transport},
            "window": {
                "start": format_ts(self.start),
                "end": format_ts(self.end),
                "seconds": round((self.end - self.start).total_seconds(), 3),
            },
            "channels": self.channels,
        }


class SummaryAggregator:
    """Folds readings into per-sensor windows; returns a draft when a window closes.

    Args:
        config: the validated configuration (sensor -> asset).
        interval_s: window length in seconds of reading time.
        sensors: the sensor ids to summarise (None: every configured sensor).
    """

    def __init__(
        self, config: Config, *, interval_s: float, sensors: tuple[str, ...] | None = None
    ) -> None:
        wanted = set(sensors) if sensors is not None else None
        self._assets = {
            s.id: config.asset(s.asset) for s in config.sensors if wanted is None or s.id in wanted
        }
        self._interval = float(interval_s)
        self._windows: dict[str, _Window] = {}
        self.skipped_values_total = 0  # non-finite values left out of a summary

    def add(self, reading: Reading) -> SummaryDraft | None:
        """Fold one reading in; the closed window's draft when this reading closes it."""
        if reading.sensor_id not in self._assets or reading.quality == "bad":
            return None
        win = self._windows.get(reading.sensor_id)
        draft = None
        if win is not None and _elapsed_s(win, reading) >= self._interval:
            draft = self._close(reading.sensor_id, win)
            win = None
        if win is None:
            win = _Window(reading.timestamp, reading.timestamp, reading.transport, reading.mono_s)
            self._windows[reading.sensor_id] = win
        self._fold(win, reading)
        return draft

    def _fold(self, win: _Window, reading: Reading) -> None:
        if reading.channel not in win.stats and len(win.stats) >= MAX_CHANNELS:
            return
        win.end = max(win.end, reading.timestamp)
        win.readings[reading.channel] = win.readings.get(reading.channel, 0) + 1
        stats = win.stats.setdefault(reading.channel, {})
        for name, value in reading.features.items():
            v = float(value)
            if not math.isfinite(v):
                self.skipped_values_total += 1
                continue
            if name in stats:
                stats[name].add(v)
            elif len(stats) < MAX_FEATURES:
                stats[name] = _Stat(v, v, v, v)

    def _close(self, sensor_id: str, win: _Window) -> SummaryDraft:
        a = self._assets[sensor_id]
        channels = {
            ch: {
                "readings": win.readings.get(ch, 0),
                "features": {k: s.as_dict() for k, s in sorted(feats.items())},
            }
            for ch, feats in sorted(win.stats.items())
        }
        return SummaryDraft(
            asset=AssetRef(a.id, a.name, a.tier),
            sensor_id=sensor_id,
            transport=win.transport,
            start=win.start,
            end=win.end,
            channels=channels,
        )


def _elapsed_s(win: _Window, reading: Reading) -> float:
    """Seconds since the window opened: monotonic for live readings, else reading time."""
    if win.mono_start is not None and reading.mono_s is not None:
        return reading.mono_s - win.mono_start
    return (reading.timestamp - win.start).total_seconds()
