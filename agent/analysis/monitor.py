"""Per asset/sensor/channel analysis: reading -> features -> severity and trend -> drafts.

For each channel the monitor runs two alert lifecycles (agent.analysis.lifecycle):
- "severity": the ISO zone of velocity RMS (C: warning, D: critical).
- "trend": early detection and time to failure. Level 1 (warning) when the health index
  (agent.analysis.health_index, learned from the channel's own baseline) is above its
  alarm level: that raise is the degradation onset. Level 2 (critical, an escalation) when
  the estimated time to failure falls under the asset's planning horizon.
Time to failure: a Bayesian exponential model of the failure metric started at the onset
(agent.analysis.degradation); before the onset there is no estimate and every record says
why. Every draft carries the channel's current progression and time to failure.

The monitor is pure and synchronous: the runtime feeds it readings and persists what it
returns (drafts and changed state) in one store transaction. Model state (baseline, binned
history) is written on transitions and otherwise at most once per persist interval of
reading time, so the write rate and the state size stay bounded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from agent.analysis.bearing import BearingGeometry
from agent.analysis.degradation import (
    DegradationPrior,
    PosteriorTuning,
    bayes_exponential,
)
from agent.analysis.features import waveform_features
from agent.analysis.health_index import HealthIndex, HealthIndexTuning
from agent.analysis.lifecycle import LifecycleState, step
from agent.analysis.severity import LEVEL_NAMES, ZONE_LEVEL, ZoneTable, velocity_band_hz, zone_table
from agent.analysis.trend import NoEstimate, Trend, TrendEstimate
from agent.config import Asset, Config
from agent.records import (
    AlertDraft,
    AssetRef,
    Progression,
    SensorRef,
    Severity,
    TimeToFailure,
    format_ts,
)
from drivers.reading import VELOCITY_RMS, Reading

SEVERITY_METRIC = VELOCITY_RMS
HEALTH_METRIC = "health_index"
_UNITS = (("_mm_s", "mm/s"), ("_g", "g"), ("_c", "degC"), ("_hz", "Hz"))


@dataclass(frozen=True, slots=True)
class Tuning:
    """Analysis settings that are not per-asset configuration (benchmark-chosen defaults).

    Attributes:
        health: health-index smoothing and alarm level.
        posterior: how the degradation posterior becomes a number.
        prior: growth-rate prior for every asset; None: from each asset's configuration.
        bin_s: trend history bin width, seconds of reading time.
        capacity: maximum bins kept per channel (older half thinned beyond it).
        pre_onset_bins: bins before the onset that anchor the degradation fit.
        persist_every_s: model state is written at most this often per channel.
    """

    health: HealthIndexTuning = field(default_factory=HealthIndexTuning)
    posterior: PosteriorTuning = field(default_factory=PosteriorTuning)
    prior: DegradationPrior | None = None
    bin_s: float = 60.0
    capacity: int = 256
    pre_onset_bins: int = 5
    persist_every_s: float = 60.0


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
    health_index: float | None = None
    trend_level: int = 0
    estimate: TrendEstimate | NoEstimate | None = None


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
    trend: LifecycleState
    hi: HealthIndex
    history: Trend
    onset_s: float | None = None
    estimate: TrendEstimate | NoEstimate | None = None
    estimate_bin: int | None = None
    persisted_s: float = -math.inf
    view: ChannelView | None = None


def state_key(asset_id: str, sensor_id: str, channel: str, kind: str) -> str:
    """The store key of one persisted state ("severity", "trend" or "model")."""
    return f"{asset_id}/{sensor_id}/{channel}/{kind}"


def _snap(s: LifecycleState) -> tuple[object, ...]:
    return (s.active, s.streak_level, s.streak, s.clear_streak, s.raised_at, s.cleared_at_s)


def _closed(sensor: str, channel: str, kind: str, st: LifecycleState) -> dict[str, object]:
    return {
        "sensor": sensor,
        "channel": channel,
        "kind": kind,
        "level": LEVEL_NAMES[min(st.active, 2)],
    }


def metric_unit(metric: str) -> str:
    """The unit of a canonical feature name (from its suffix)."""
    for suffix, unit in _UNITS:
        if metric.endswith(suffix):
            return unit
    return "1"


class Monitor:
    """Runs every configured channel's analysis.

    Args:
        config: the validated configuration.
        state: persisted state by key, as the store returned it.
        tuning: analysis settings (defaults: chosen in benchmarks/analytics).
    """

    def __init__(
        self,
        config: Config,
        *,
        state: Mapping[str, str] | None = None,
        tuning: Tuning | None = None,
    ) -> None:
        self._sensor_asset = {s.id: config.asset(s.asset) for s in config.sensors}
        self._asset_sensors = {
            a.id: [s.id for s in config.sensors if s.asset == a.id] for a in config.assets
        }
        self._tables = {a.id: zone_table(a.machine) for a in config.assets}
        self._saved = dict(state or {})
        self._channels: dict[tuple[str, str], _Channel] = {}
        self.tuning = tuning or Tuning()
        self.skipped_total = 0  # readings without a usable velocity (bad quality, missing)

    # ------------------------------------------------------------------ channel state

    def _new_history(self) -> Trend:
        t = self.tuning
        return Trend(model="exponential", bin_s=t.bin_s, window_bins=30, capacity=t.capacity)

    def _channel(self, reading: Reading) -> _Channel:
        key = (reading.sensor_id, reading.channel)
        ch = self._channels.get(key)
        if ch is not None:
            return ch
        asset = self._sensor_asset[reading.sensor_id]
        k = lambda kind: state_key(asset.id, reading.sensor_id, reading.channel, kind)  # noqa: E731
        sev, tr, model = (self._saved.pop(k(x), None) for x in ("severity", "trend", "model"))
        ch = _Channel(
            asset=asset,
            table=self._tables[asset.id],
            sensor=SensorRef(reading.sensor_id, reading.channel, reading.transport),
            severity=LifecycleState.from_dict(json.loads(sev)) if sev else LifecycleState(),
            trend=LifecycleState.from_dict(json.loads(tr)) if tr else LifecycleState(),
            hi=HealthIndex(asset.alerting.baseline_readings, self.tuning.health),
            history=self._new_history(),
        )
        data = json.loads(model) if model else {}
        if data:
            ch.hi.load(data["hi"])
            ch.history = Trend.from_dict(data["history"])
            ch.onset_s = data["onset_s"]
        self._channels[key] = ch
        return ch

    def _model_state(self, ch: _Channel) -> str:
        return json.dumps(
            {"hi": ch.hi.to_dict(), "history": ch.history.to_dict(), "onset_s": ch.onset_s},
            separators=(",", ":"),
        )

    def _features(self, ch: _Channel, reading: Reading) -> Mapping[str, float]:
        if reading.waveform is None:
            return reading.features
        rpm = ch.asset.machine.rpm
        b = ch.asset.bearing
        geometry = (
            None if b is None else BearingGeometry(b.balls, b.ball_mm, b.pitch_mm, b.contact_deg)
        )
        computed = waveform_features(
            reading.waveform.samples,
            reading.waveform.fs_hz,
            band_hz=velocity_band_hz(rpm),
            shaft_hz=rpm / 60.0,
            bearing=geometry,
        )
        return {**computed, **reading.features}  # a sensor's own values (temperature) win

    def _failure(self, ch: _Channel) -> tuple[str, float]:
        f = ch.asset.failure
        return f.metric, f.threshold if f.threshold is not None else ch.table.cd

    # ------------------------------------------------------------------ updates

    def update(self, reading: Reading) -> Update:
        """Analyse one reading; returns the drafts and state to persist together."""
        out = Update()
        if reading.sensor_id not in self._sensor_asset:
            raise KeyError(f"reading from unconfigured sensor {reading.sensor_id!r}")
        if reading.quality != "good":
            self.skipped_total += 1
            return out
        ch = self._channel(reading)
        feats = self._features(ch, reading)
        value = feats.get(SEVERITY_METRIC)
        if value is None or value != value:  # NaN check
            self.skipped_total += 1
            return out
        t_s = reading.timestamp.timestamp()
        alerting = ch.asset.alerting
        sev_before, tr_before = _snap(ch.severity), _snap(ch.trend)
        was_ready = ch.hi.ready

        # Severity: ISO zone of velocity RMS.
        zone = ch.table.zone(value)
        s = step(
            ch.severity,
            ZONE_LEVEL[zone],
            below_clear=value < ch.table.bc * (1.0 - alerting.hysteresis),
            debounce=alerting.debounce,
            now_s=t_s,
            holdoff_s=alerting.resend_holdoff_s,
        )

        # Trend: health index against its baseline level, failure metric history.
        hi = ch.hi.update(t_s, feats)
        metric, threshold = self._failure(ch)
        fm = feats.get(metric)
        if fm is not None:
            ch.history.update(t_s, fm)
        est = self._estimate(ch, t_s, threshold)
        level, below = 0, True
        if hi is not None and ch.hi.level is not None:
            if hi >= ch.hi.level:
                level = (
                    2
                    if isinstance(est, TrendEstimate)
                    and est.hours < (ch.asset.planning_horizon_hours)
                    else 1
                )
            below = hi < ch.hi.level * (1.0 - alerting.hysteresis)
        ts = step(
            ch.trend,
            level,
            below_clear=below,
            debounce=alerting.debounce,
            now_s=t_s,
            holdoff_s=alerting.resend_holdoff_s,
        )
        model_changed = False
        if ts.transition == "raised":
            ch.onset_s, ch.estimate_bin, model_changed = t_s, None, True
            est = self._estimate(ch, t_s, threshold)
        elif ts.transition == "cleared":
            ch.onset_s, ch.estimate_bin, model_changed = None, None, True
            est = self._estimate(ch, t_s, threshold)

        ch.view = ChannelView(
            ch.asset.id, ch.sensor.id, ch.sensor.channel, reading.timestamp, value, zone,
            ch.severity.active, hi, ch.trend.active, est,
        )  # fmt: skip
        if s.transition is not None:
            if s.transition == "raised":
                ch.severity.raised_at = format_ts(reading.timestamp)
            out.drafts.append(self._severity_draft(ch, reading, feats, zone, s.transition, s.level))
        if ts.transition is not None:
            if ts.transition == "raised":
                ch.trend.raised_at = format_ts(reading.timestamp)
            out.drafts.append(self._trend_draft(ch, reading, feats, hi, ts.transition, ts.level))

        key = lambda kind: state_key(ch.asset.id, ch.sensor.id, ch.sensor.channel, kind)  # noqa: E731
        if _snap(ch.severity) != sev_before:
            out.state[key("severity")] = json.dumps(ch.severity.to_dict(), sort_keys=True)
        if _snap(ch.trend) != tr_before:
            out.state[key("trend")] = json.dumps(ch.trend.to_dict(), sort_keys=True)
        if (
            model_changed
            or out.drafts
            or ch.hi.ready != was_ready
            or t_s - ch.persisted_s >= self.tuning.persist_every_s
        ):
            out.state[key("model")] = self._model_state(ch)
            ch.persisted_s = t_s
        return out

    def _estimate(self, ch: _Channel, now_s: float, threshold: float) -> TrendEstimate | NoEstimate:
        """The channel's time-to-failure estimate, recomputed at most once per bin."""
        b = math.floor(now_s / self.tuning.bin_s)
        if ch.estimate is not None and ch.estimate_bin == b:
            return ch.estimate
        if not ch.hi.ready:
            n = ch.hi.samples_seen
            est: TrendEstimate | NoEstimate = NoEstimate(
                f"learning the baseline ({n} of {ch.hi.learn_readings} readings)"
                if ch.hi.features
                else "the channel carries no health-index feature (accel RMS, hf or velocity)"
            )
        elif ch.onset_s is None:
            est = NoEstimate(
                "no degradation onset: the health index "
                f"({(ch.hi.value or 0.0):.3g}) is below its baseline alarm level "
                f"({ch.hi.level:.3g}); no trend to extrapolate"
            )
        else:
            t, v = ch.history.points()
            keep = t >= ch.onset_s - self.tuning.pre_onset_bins * self.tuning.bin_s
            prior = self.tuning.prior or self._prior(ch, threshold, v[keep])
            est = bayes_exponential(
                t[keep], v[keep], onset_s=ch.onset_s, now_s=now_s, threshold=threshold,
                prior=prior, tuning=self.tuning.posterior,
            )  # fmt: skip
        ch.estimate, ch.estimate_bin = est, b
        return est

    @staticmethod
    def _prior(ch: _Channel, threshold: float, values: np.ndarray) -> DegradationPrior:
        """Configured prior, or: reach the threshold in one planning horizon."""
        a = ch.asset.alerting
        if a.prior_rate_per_day is not None:
            return DegradationPrior(a.prior_rate_per_day, a.prior_log_sd)
        vals = values[values > 0.0]
        start = float(vals.mean()) if vals.shape[0] else threshold / math.e
        gap = max(math.log(threshold / start), 0.1)
        return DegradationPrior(gap / (ch.asset.planning_horizon_hours / 24.0), a.prior_log_sd)

    # ------------------------------------------------------------------ drafts

    def _estimate_fields(
        self, ch: _Channel
    ) -> tuple[Progression | None, TimeToFailure | None, str | None]:
        est = ch.estimate
        if isinstance(est, TrendEstimate):
            metric, threshold = self._failure(ch)
            return (
                Progression(round(est.rate_per_day, 6), f"{metric_unit(metric)} per day",
                            round(est.window_hours, 3)),
                TimeToFailure(round(est.hours, 3), round(est.lower_hours, 3),
                              round(est.upper_hours, 3), metric, threshold, est.model),
                None,
            )  # fmt: skip
        return None, None, est.reason if est is not None else "no reading analysed yet"

    def _draft(
        self, ch: _Channel, reading: Reading, feats: Mapping[str, float], kind: str,
        transition: str, severity: Severity, extra: dict[str, object],
    ) -> AlertDraft:  # fmt: skip
        progression, ttf, reason = self._estimate_fields(ch)
        return AlertDraft(
            asset=AssetRef(ch.asset.id, ch.asset.name, ch.asset.tier),
            sensor=ch.sensor,
            kind=kind,  # type: ignore[arg-type]
            state=transition,  # type: ignore[arg-type]
            detected_at=reading.timestamp,
            severity=severity,
            progression=progression,
            time_to_failure=ttf,
            no_estimate_reason=reason,
            evidence={
                "features": {k: round(v, 6) for k, v in feats.items() if math.isfinite(v)},
                **extra,
            },
        )

    def _severity_draft(
        self, ch: _Channel, reading: Reading, feats: Mapping[str, float], zone: str,
        transition: str, level: int,
    ) -> AlertDraft:  # fmt: skip
        h = ch.asset.alerting.hysteresis
        value = feats[SEVERITY_METRIC]
        if transition == "cleared":
            threshold, name = ch.table.bc * (1 - h), "info"
        else:
            threshold, name = (ch.table.cd if level >= 2 else ch.table.bc), LEVEL_NAMES[level]
        sev = Severity(name, zone, ch.table.standard, SEVERITY_METRIC, value, threshold)  # type: ignore[arg-type]
        return self._draft(ch, reading, feats, "severity", transition, sev, {})

    def _trend_draft(
        self, ch: _Channel, reading: Reading, feats: Mapping[str, float], hi: float | None,
        transition: str, level: int,
    ) -> AlertDraft:  # fmt: skip
        hi_level = ch.hi.level or 0.0
        zone = ch.table.zone(feats[SEVERITY_METRIC])
        extra: dict[str, object] = {
            "health_index": {
                "value": None if hi is None else round(hi, 6),
                "alarm_level": round(hi_level, 6),
                "features": list(ch.hi.features),
                "rule": f"EWMA mean ln(value / baseline median) > max(median + "
                f"{ch.hi.tuning.k_mad:g} x 1.4826 MAD, {ch.hi.tuning.min_level:g})",
            },
            "onset_at": None if ch.onset_s is None else format_ts(
                datetime.fromtimestamp(ch.onset_s, tz=reading.timestamp.tzinfo)
            ),
        }  # fmt: skip
        if transition == "escalated" and isinstance(ch.estimate, TrendEstimate):
            sev = Severity("critical", zone, "time to failure under the planning horizon",
                           "time_to_failure_hours", round(ch.estimate.hours, 3),
                           ch.asset.planning_horizon_hours)  # fmt: skip
        else:
            name = "info" if transition == "cleared" else LEVEL_NAMES[max(level, 1)]
            threshold = (
                hi_level * (1 - ch.asset.alerting.hysteresis)
                if transition == "cleared"
                else hi_level
            )
            sev = Severity(name, None, "learned baseline (health index)", HEALTH_METRIC,  # type: ignore[arg-type]
                           round(hi or 0.0, 6), round(threshold, 6))  # fmt: skip
        return self._draft(ch, reading, feats, "trend", transition, sev, extra)

    # ------------------------------------------------------------------ maintenance

    def maintenance(self, asset_id: str, at: datetime, note: str) -> Update:
        """A repair or maintenance event: reset the asset's baselines, trends and alerts.

        The record is kind "maintenance" with state "cleared": the repair resolves the
        asset's condition, and every alert still active on it is listed as closed in the
        evidence (one record, not one "cleared" per alert, so the portfolio sees one event
        that closes the detect -> confirm -> repair chain).

        Args:
            asset_id: the configured asset id.
            at: time of the event (UTC aware).
            note: free text from the technician or CMMS.

        Raises:
            KeyError: unknown asset.
        """
        if asset_id not in self._asset_sensors:
            raise KeyError(f"unknown asset {asset_id!r}")
        out = Update()
        closed: list[dict[str, object]] = []
        keys: set[tuple[str, str]] = {
            k for k, c in self._channels.items() if c.asset.id == asset_id
        }
        prefix = f"{asset_id}/"
        for k in [k for k in self._saved if k.startswith(prefix)]:
            _, sensor, channel, kind = k.split("/", 3)
            if kind in ("severity", "trend"):
                st = LifecycleState.from_dict(json.loads(self._saved[k]))
                if st.active and (sensor, channel) not in self._channels:
                    closed.append(_closed(sensor, channel, kind, st))
            keys.add((sensor, channel))
            del self._saved[k]
        transport = "modbus"
        for sensor, channel in sorted(keys):
            ch = self._channels.pop((sensor, channel), None)
            if ch is not None:
                transport = ch.sensor.transport
                for kind, st in (("severity", ch.severity), ("trend", ch.trend)):
                    if st.active:
                        closed.append(_closed(sensor, channel, kind, st))
            for kind in ("severity", "trend"):
                out.state[state_key(asset_id, sensor, channel, kind)] = json.dumps(
                    LifecycleState().to_dict(), sort_keys=True
                )
            out.state[state_key(asset_id, sensor, channel, "model")] = "{}"
        asset = self._sensor_asset[self._asset_sensors[asset_id][0]]
        out.drafts.append(
            AlertDraft(
                asset=AssetRef(asset.id, asset.name, asset.tier),
                sensor=SensorRef(self._asset_sensors[asset_id][0], "*", transport),
                kind="maintenance",
                state="cleared",
                detected_at=at,
                severity=None,
                no_estimate_reason="maintenance: baseline and trend restart from this event",
                evidence={
                    "note": note,
                    "closed_alerts": closed,
                    "reset_channels": [{"sensor": s, "channel": c} for s, c in sorted(keys)],
                },
            )
        )
        return out

    def current(
        self, sensor_id: str, channel: str
    ) -> tuple[Severity, Progression | None, TimeToFailure | None, str | None] | None:
        """A channel's severity, progression, time to failure (or the reason there is none)
        as of its last reading; None if the channel has produced no reading."""
        ch = self._channels.get((sensor_id, channel))
        if ch is None or ch.view is None:
            return None
        zone, level = ch.view.zone, ZONE_LEVEL[ch.view.zone]
        threshold = ch.table.cd if zone in ("C", "D") else ch.table.bc
        sev = Severity(
            LEVEL_NAMES[level], zone, ch.table.standard, SEVERITY_METRIC, ch.view.value, threshold
        )
        return (sev, *self._estimate_fields(ch))

    def views(self) -> list[ChannelView]:
        """The latest view of every channel that has produced a reading."""
        return [c.view for c in self._channels.values() if c.view is not None]
