"""Per asset/sensor/channel analysis: reading -> features -> severity and trend -> drafts.

For each channel the monitor runs two alert lifecycles (agent.analysis.lifecycle):
- "severity": the ISO zone of velocity RMS (C: warning, D: critical), only where the
  reading's velocity band is resolved (a 0.1 s snapshot does not resolve 10 Hz: no zone).
- "trend": early detection and time to failure. Level 1 (warning) when the health index
  (learned from the channel's own baseline) or velocity RMS (ISO 20816-1 alarm from the
  baseline) is above its level: that raise is the degradation onset. Level 2 (critical,
  an escalation) when the time to failure falls under the asset's planning horizon; back
  to level 1 (a revision, same episode) once the failure that critical predicted is
  overdue, the failure metric has not grown and the estimate is over the horizon again
  (a step then flat: a rebalanced or re-mounted machine, a load change; _revision).
Time to failure (agent.analysis.forecast): the asset's reliability prior (its class's life,
given its age) before the onset, fused with the Bayesian exponential trend of the failure
metric after it; without a prior the trend alone, and before the onset no estimate, with
the reason. Every draft carries the channel's current time to failure and its basis.

A running reading that jumps tenfold over the channel's last analysed one is analysed only
once the jump has lasted (agent.analysis.confirm): a burst of garbage raises nothing.

The monitor is pure and synchronous: the runtime feeds it readings and persists what it
returns (drafts and changed state) in one store transaction. Model state (baseline, binned
history) is written on transitions and otherwise at most once per persist interval of
reading time, so the write rate and the state size stay bounded.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from agent.analysis.basis import Basis, BasisChange, basis_change, basis_of
from agent.analysis.channel import (
    Channel,
    ChannelView,
    load_channel,
    model_state,
    reading_features,
    saved_basis,
    saved_states,
    snap,
    state_key,
)
from agent.analysis.confirm import JUMP_CONFIRM, JUMP_FACTOR, Held
from agent.analysis.degradation import DegradationPrior
from agent.analysis.drafts import (
    HEALTH_METRIC,
    SEVERITY_METRIC,
    current_severity,
    estimate_evidence,
    estimate_fields,
    maintenance_draft,
    metric_unit,
    revision_evidence,
    severity_draft,
    trend_draft,
)
from agent.analysis.features import VELOCITY_BAND_PERIODS
from agent.analysis.forecast import JUMP_SHARE, channel_estimate, still_fresh
from agent.analysis.health_index import HI_FEATURES, HealthIndex, HealthIndexTuning
from agent.analysis.lifecycle import LifecycleState, revise, step
from agent.analysis.lifetime import AssetLives
from agent.analysis.reliability import FleetLife
from agent.analysis.removed import (
    CLOSED_AT_START,
    CLOSED_BY_RELOAD,
    asset_ref,
    close_saved,
    closing_draft,
)
from agent.analysis.repair import reset_asset
from agent.analysis.severity import (
    ZONE_LEVEL,
    velocity_resolved,
    zone_table,
)
from agent.analysis.trend import NoEstimate, Trend
from agent.analysis.ttf import Estimate, PosteriorTuning
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
from drivers.reading import Reading, utc_now

log = logging.getLogger(__name__)

# The failure metric's level, to tell a failure that is late from one that is not coming
# (_grown): the geometric mean of this many bins (10 min at the default 60 s bin).
REVISE_BINS = 10
RELEARNED_BY_RELOAD = "cleared by a reload: baseline relearned after {}"
RELEARNED_AT_START = "closed at start: baseline relearned after {} while the agent was stopped"
RELEARNED_AT_STANDSTILL = "cleared: baseline relearned from the running machine: {}"
# The severity alert of readings that are now another sensor's (or another conversion's).
_JUDGED_AFRESH = {
    RELEARNED_BY_RELOAD: "cleared by a reload: {}; the new readings are judged afresh",
    RELEARNED_AT_START: (
        "closed at start: {} while the agent was stopped; the new readings are judged afresh"
    ),
}

__all__ = [
    "HEALTH_METRIC",
    "SEVERITY_METRIC",
    "ChannelView",
    "Monitor",
    "Tuning",
    "Update",
    "metric_unit",
    "state_key",
]


@dataclass(frozen=True, slots=True)
class Tuning:
    """Analysis settings that are not per-asset configuration (benchmark-chosen defaults).

    Attributes:
        health: health-index smoothing and alarm level.
        posterior: how the degradation posterior becomes a number.
        prior: growth-rate prior for every asset; None: from each asset's configuration.
        bin_s: trend history bin width, seconds of reading time (an asset's
            alerting.trend_bin_s overrides it).
        capacity: maximum bins kept per channel (older half thinned beyond it).
        persist_every_s: model state is written at most this often per channel.
    """

    health: HealthIndexTuning = field(default_factory=HealthIndexTuning)
    posterior: PosteriorTuning = field(default_factory=PosteriorTuning)
    prior: DegradationPrior | None = None  # growth rate; None: each asset's own
    bin_s: float = 60.0
    capacity: int = 256
    persist_every_s: float = 60.0


@dataclass(slots=True)
class Update:
    """What one reading produced: drafts to store, and state to store with them."""

    drafts: list[AlertDraft] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)
    lives: list[tuple[str, FleetLife]] = field(default_factory=list)  # (class, completed life)


def _closed(
    ch: Channel, kind: str, state: LifecycleState, asset: Asset, at: datetime, out: Update,
    reason: str, lead: str,
) -> LifecycleState:  # fmt: skip
    """Close the channel's open `kind` alert (`state`) now, with the reason: its readings no
    longer measure what it was raised on, so it is not left to clear later as a recovery.
    Returns the channel's new (idle) state for that kind."""
    out.drafts.append(
        closing_draft(asset_ref(asset, asset.id), ch.sensor, kind, state.active,
                      state.raised_at, at, reason, lead)
    )  # fmt: skip
    idle = LifecycleState()
    out.state[ch.key(kind)] = json.dumps(idle.to_dict(), sort_keys=True)
    return idle


class Monitor:
    """Runs every configured channel's analysis.

    Args:
        config: the validated configuration.
        state: persisted state by key, as the store returned it.
        tuning: analysis settings (defaults: chosen in benchmarks/analytics).
        fleet: completed lives by asset class, as the store returned them.
        persist: return the state to store with each update (False: replay, which
            keeps nothing).
        digests: sensor id -> its register profile's digest (agent.analysis.basis.
            source_digests): a profile file edited under the same name relearns.
    """

    def __init__(
        self,
        config: Config,
        *,
        state: Mapping[str, str] | None = None,
        tuning: Tuning | None = None,
        fleet: Mapping[str, Sequence[FleetLife]] | None = None,
        persist: bool = True,
        digests: Mapping[str, str] | None = None,
    ) -> None:
        self._index(config, digests)
        self._saved = dict(state or {})
        self.lives = AssetLives(config.assets, self._saved, fleet)
        self.persist = persist
        self._channels: dict[tuple[str, str], Channel] = {}
        self.tuning = tuning or Tuning()
        self.skipped_total = 0  # readings without a usable velocity (bad quality, missing)
        self.stopped_total = 0  # readings of a stopped machine (Channel.stopped)
        self.unconfirmed_total = 0  # readings of jumps that did not last (confirm.py)
        # Live readings' analysis time: the wall clock at the first one plus monotonic time
        # since, so an NTP step neither stretches nor shrinks a hold, a bin or a rate.
        self._mono_offset: float | None = None

    def _index(self, config: Config, digests: Mapping[str, str] | None) -> None:
        self._sensor_asset = {s.id: config.asset(s.asset) for s in config.sensors}
        self._channels_of = {s.id: s.channels for s in config.sensors}
        self._asset_sensors = {
            a.id: [s.id for s in config.sensors if s.asset == a.id] for a in config.assets
        }
        self._tables = {a.id: zone_table(a.machine) for a in config.assets}
        self._assets = {a.id: a for a in config.assets}
        digests = digests or {}
        self._basis = {
            s.id: basis_of(config.asset(s.asset), s, digests.get(s.id)) for s in config.sensors
        }
        rtu = {b.id for b in config.buses if b.rtu is not None}
        self._transports = {
            s.id: "mqtt" if s.mqtt else "modbus-rtu" if s.modbus.bus in rtu else "modbus"  # type: ignore[union-attr]
            for s in config.sensors
        }

    def knows(self, sensor_id: str) -> bool:
        """True when the sensor is in the configuration (a reload may have removed it)."""
        return sensor_id in self._sensor_asset

    def reconfigure(
        self,
        config: Config,
        at: datetime | None = None,
        *,
        digests: Mapping[str, str] | None = None,
    ) -> Update:
        """Take a reloaded configuration; returns the state to persist, and a "cleared"
        record for each alert a removed or moved channel leaves open, or a relearned
        baseline closes (at: their time).

        A channel that keeps its asset keeps what it learned; new thresholds, debounce,
        horizons, priors and failure threshold apply from its next reading. What a change
        invalidates is relearned, nothing more (agent.analysis.basis): a new failure
        metric, trend bin or bearing rebuilds the failure metric's history only (baseline
        and onset kept); a new speed or register profile / decoder, or a profile edited
        under the same name to read other values (`digests`), relearns the baseline,
        and closes the channel's open trend alert with a record that says so (a baseline
        learned from a degraded machine would otherwise clear it later, as if it had
        recovered); so does another physical sensor at the sensor id (a new Modbus address,
        MQTT broker, topic or key), which with another or edited profile / decoder also
        closes the open severity alert (judged on readings no longer this sensor's). The
        same applies to a channel not yet read since the start (its saved model). A
        channel removed, or moved to another asset, is saved and
        dropped (a later reload that brings it back resumes its model, or relearns what
        the configuration it comes back to invalidates); its open alerts are closed, since
        no reading will ever clear them there.
        """
        out = Update()
        at = at or utc_now()
        assets, transports = self._assets, self._transports  # as the alerts were raised
        self._index(config, digests)
        for key, ch in list(self._channels.items()):
            asset = self._sensor_asset.get(key[0])
            if asset is None or asset.id != ch.asset.id or key[1] not in self._channels_of[key[0]]:
                self._saved.update(saved := saved_states(ch))
                out.state.update(saved)
                transports[key[0]] = ch.sensor.transport
                del self._channels[key]
                continue
            self._rebase(ch, asset, self._basis[key[0]], at, out, RELEARNED_BY_RELOAD)
            # A baseline still being learned completes at the new length.
            ch.hi.learn_readings = asset.alerting.baseline_readings
            ch.asset, ch.table = asset, self._tables[asset.id]
            ch.estimate = ch.estimate_bin = None
        self.lives.reconfigure(config.assets, self._saved)
        self._close_left(out, {**self._assets, **assets}, transports, at, CLOSED_BY_RELOAD)
        self._rebase_saved(out, at, RELEARNED_BY_RELOAD)
        return out

    def _rebase(
        self, ch: Channel, asset: Asset, now: Basis, at: datetime, out: Update, why: str
    ) -> None:
        """Relearn what the channel's model lost by the change from the basis it was
        learned under to `now` (agent.analysis.basis), nothing more. A model saved without
        a basis (an older store) is kept as it is and learned on under `now`."""
        before, ch.basis = ch.basis, now
        change = BasisChange() if before is None else basis_change(before, now)
        if change.readings:
            self._judge_afresh(ch, asset, "; ".join(change.readings), at, out, why)
        if change.relearn is not None:
            self._relearn(ch, asset, change.relearn, at, out, why)
        elif change.history:
            ch.history = self._new_history(asset)
            out.state[ch.key("model")] = model_state(ch)

    def _rebase_saved(self, out: Update, at: datetime, why: str) -> None:
        """Load and rebase each saved channel still measured on its asset whose saved basis
        differs from the configuration's (edited while stopped, or before its first reading
        since the start): its open trend alert is closed now, not at its first reading (a
        replaced sensor that never answers would leave it open)."""
        for k in [k for k in self._saved if k.endswith("/model")]:
            parts = k.split("/")
            if len(parts) != 4:
                continue
            asset_id, sensor, channel, _ = parts
            asset = self._sensor_asset.get(sensor)
            if asset is None or asset.id != asset_id or channel not in self._channels_of[sensor]:
                continue  # not measured there (_close_left closes what it left open)
            now = self._basis[sensor]
            if (sensor, channel) in self._channels or saved_basis(self._saved[k]) in (None, now):
                continue
            ch = self._load(SensorRef(sensor, channel, self._transports[sensor]))
            self._rebase(ch, asset, now, at, out, why)

    def _judge_afresh(
        self, ch: Channel, asset: Asset, what: str, at: datetime, out: Update, why: str
    ) -> None:
        """The channel's readings are now another sensor's (or another conversion's): its
        open severity alert, judged on the old ones, is closed now with the reason, not
        later as a recovery (or kept open by the new sensor's readings as the same
        episode); the new readings raise their own after the usual debounce."""
        if ch.severity.active:
            reason, lead = _JUDGED_AFRESH[why].format(what), "judged again from the next readings"
            ch.severity = _closed(ch, "severity", ch.severity, asset, at, out, reason, lead)

    def _relearn(
        self, ch: Channel, asset: Asset, what: str, at: datetime, out: Update, why: str
    ) -> None:
        """Start the channel's baseline and history again; its open trend alert (measured
        against the old baseline) is closed now, with the reason (`why` formatted with
        what changed), not later as a recovery."""
        if ch.trend.active:
            lead = "no time to failure until the new baseline is learned"
            ch.trend = _closed(ch, "trend", ch.trend, asset, at, out, why.format(what), lead)
        ch.hi = HealthIndex(asset.alerting.baseline_readings, self.tuning.health)
        ch.history, ch.onset_s = self._new_history(asset), None
        out.state[ch.key("model")] = model_state(ch)

    def close_unconfigured(self, at: datetime | None = None) -> Update:
        """At start: a "cleared" record for each alert the persisted state has open for a
        channel the configuration no longer has on that asset, and its reset state; and
        for each channel whose saved model was learned under settings edited while the
        agent was stopped, what reconfigure() would relearn (a relearned baseline closes
        the open trend alert, saying so)."""
        out = Update()
        at = at or utc_now()
        self._close_left(out, self._assets, self._transports, at, CLOSED_AT_START)
        self._rebase_saved(out, at, RELEARNED_AT_START)
        return out

    def _close_left(
        self, out: Update, assets: Mapping[str, Asset], transports: Mapping[str, str],
        at: datetime | None, when: str,
    ) -> None:  # fmt: skip
        def placed(sensor: str) -> tuple[str, tuple[str, ...]] | None:
            a = self._sensor_asset.get(sensor)
            return None if a is None else (a.id, self._channels_of[sensor])

        out.drafts += close_saved(
            self._saved, out.state, placed, assets, transports, at or utc_now(), when
        )

    def _new_history(self, asset: Asset) -> Trend:
        t = self.tuning
        bin_s = asset.alerting.trend_bin_s or t.bin_s
        return Trend(model="exponential", bin_s=bin_s, window_bins=30, capacity=t.capacity)

    def _channel(self, reading: Reading, out: Update) -> Channel:
        ch = self._channels.get((reading.sensor_id, reading.channel))
        if ch is not None:
            return ch
        ch = self._load(SensorRef(reading.sensor_id, reading.channel, reading.transport))
        # The start (close_unconfigured) rebased saved models; this covers a caller that
        # did not make that call, and a model saved without a basis (it takes this one).
        asset, now = ch.asset, self._basis[reading.sensor_id]
        self._rebase(ch, asset, now, reading.timestamp, out, RELEARNED_AT_START)
        return ch

    def _load(self, sensor: SensorRef) -> Channel:
        """The channel of `sensor` on its configured asset, from its saved states if any."""
        asset = self._sensor_asset[sensor.id]
        ch = load_channel(
            self._saved,
            asset=asset,
            table=self._tables[asset.id],
            sensor=sensor,
            health=self.tuning.health,
            history=self._new_history(asset),
        )
        self._channels[(sensor.id, sensor.channel)] = ch
        return ch

    def update(self, reading: Reading) -> Update:
        """Analyse one reading; returns the drafts and state to persist together."""
        out = Update()
        if reading.sensor_id not in self._sensor_asset:
            raise KeyError(f"reading from unconfigured sensor {reading.sensor_id!r}")
        if reading.quality != "good":
            self.skipped_total += 1
            return out
        ch = self._channel(reading, out)
        self._relearn_standstill(ch, reading.timestamp, out)
        feats = reading_features(ch, reading)
        value = feats.get(SEVERITY_METRIC)
        if value is None or not math.isfinite(value):
            self.skipped_total += 1
            return out
        wall_s = reading.timestamp.timestamp()
        t_s = ch.now_s = self._analysis_time(reading, wall_s)  # the time records state
        if ch.stopped(value, feats):  # no measurement of the machine's condition (channel.py)
            self.stopped_total += 1
            self._dropped(ch, ch.gate.interrupt())
            shown = ch.view
            ch.set_view(
                ch.asset.id, ch.sensor.id, ch.sensor.channel, reading.timestamp, value, None,
                ch.severity.active, shown.health_index if shown else None, ch.trend.active,
                ch.estimate, (ch.severity.flaps, ch.trend.flaps), True, ch.learning(True),
                ch.gate.dropped_total,
            )  # fmt: skip
            began = ch.waiting_since_s is None
            warn = ch.wait(t_s, value)
            if warn:
                log.warning("%s", ch.waited())
            if warn or (began and ch.waiting_since_s is not None):  # a restart counts on
                out.state[ch.key("model")] = model_state(ch)
            return out
        # A tenfold jump is analysed only once it lasts (agent.analysis.confirm).
        metric, _ = ch.failure()
        watched = (SEVERITY_METRIC, *HI_FEATURES, metric)
        ready, dropped = ch.gate.offer(Held(reading, feats, value, t_s, wall_s), watched)
        self._dropped(ch, dropped)
        for held in ready:
            self._analyse(ch, held, out)
        return out

    def _dropped(self, ch: Channel, dropped: list[Held]) -> None:
        """Count a burst of jumping readings that did not last; the first one of a channel
        is logged (later ones are counted in unconfirmed_total)."""
        if not dropped:
            return
        self.unconfirmed_total += len(dropped)
        if ch.gate.warned:
            return
        ch.gate.warned = True
        name = ch.gate.dropped_on or SEVERITY_METRIC
        log.warning(
            "asset %s sensor %s channel %s: %d reading(s) from %s jumped to over %gx the "
            "channel's last analysed %s (%.4g) and fell back: taken as garbage, not analysed "
            "(a jump is analysed once it lasts %d readings; later bursts are counted in "
            "edge_channel_unconfirmed_readings_total, not logged)",
            ch.asset.id, ch.sensor.id, ch.sensor.channel, len(dropped),
            format_ts(dropped[0].reading.timestamp), JUMP_FACTOR, name,
            dropped[0].features.get(name, math.nan), JUMP_CONFIRM,
        )  # fmt: skip

    def _analyse(self, ch: Channel, held: Held, out: Update) -> None:
        """Analyse one running reading of the channel: severity, trend, state to persist."""
        reading, feats, value, t_s, wall_s = (
            held.reading, held.features, held.value, held.t_s, held.wall_s)  # fmt: skip
        ch.now_s = t_s
        waited = ch.waiting_since_s is not None
        if ch.ran():
            log.info(
                "asset %s sensor %s channel %s: the machine runs (velocity RMS %.3g mm/s); "
                "learning the baseline",
                ch.asset.id, ch.sensor.id, ch.sensor.channel, value,
            )  # fmt: skip
        if waited:  # the wait ended: a restart must not count it on
            out.state[ch.key("model")] = model_state(ch)
        ch.running_s = t_s
        alerting = ch.asset.alerting
        sev_before, tr_before = snap(ch.severity), snap(ch.trend)
        was_ready = ch.hi.ready

        # Severity: ISO zone of velocity RMS, where the waveform resolves the band (an
        # unresolved value is no measurement: it neither raises nor clears).
        resolved = velocity_resolved(feats)
        zone = ch.table.zone(value) if resolved else None
        ch.velocity_periods = None if resolved else feats.get(VELOCITY_BAND_PERIODS, 0.0)
        s = step(
            ch.severity,
            ZONE_LEVEL[zone] if zone else 0,
            below_clear=resolved and value < ch.table.bc * (1.0 - alerting.hysteresis),
            debounce=alerting.debounce,
            now_s=t_s,
            holdoff_s=alerting.resend_holdoff_s,
            clear_hold_s=alerting.clear_hold_s,
        )

        # Trend: health index against its baseline level, failure metric history.
        hi = ch.hi.update(t_s, feats)
        metric, _ = ch.failure()
        fm = feats.get(metric)
        if fm is not None:
            ch.history.update(t_s, fm)
        est = self._estimate(ch, t_s, wall_s)
        # Early detection: the health index over its learned level, or velocity RMS over
        # the ISO 20816-1 alarm from the machine's own baseline (baseline + 0.25 x B/C, at
        # most 1.25 x B/C), which fires well before zone C on a machine that ran smoothly.
        h = alerting.hysteresis
        hi_over = hi is not None and ch.hi.level is not None and hi >= ch.hi.level
        iso = ch.iso_alarm() if resolved else None
        iso_over = iso is not None and value >= iso
        # Unknown is never "below": a reading without the health-index features must not
        # clear an active trend alert (its detection time is the record that matters).
        below = (hi is not None and ch.hi.level is not None and hi < ch.hi.level * (1.0 - h)) and (
            iso is None or value < iso * (1.0 - h)
        )
        level = 0
        if hi_over or iso_over:
            ch.cause = "health_index" if hi_over else SEVERITY_METRIC
            told = ch.hours_now()  # as of this reading, as its record will say
            soon = told is not None and told < ch.asset.planning_horizon_hours
            level = 2 if soon else 1
        ts = step(
            ch.trend,
            level,
            below_clear=below,
            debounce=alerting.debounce,
            now_s=t_s,
            holdoff_s=alerting.resend_holdoff_s,
            clear_hold_s=alerting.clear_hold_s,
        )
        model_changed = False
        if ts.transition == "raised":
            ch.onset_s, ch.estimate_bin, model_changed = t_s, None, True
            est = self._estimate(ch, t_s, wall_s)
        elif ts.transition == "cleared":
            ch.onset_s, ch.estimate_bin, model_changed = None, None, True
            est = self._estimate(ch, t_s, wall_s)
        revision: dict[str, object] | None = None
        critical_before = ch.trend.critical_at  # a critical already sent in this episode
        if ts.transition in ("raised", "escalated") and ch.trend.active >= 2:
            _note_due(ch, t_s, reading.timestamp)
            ch.trend.critical_at = critical_before or format_ts(reading.timestamp)
        elif ts.transition is None:
            revision = _revision(ch, t_s)

        ch.set_view(
            ch.asset.id, ch.sensor.id, ch.sensor.channel, reading.timestamp, value, zone,
            ch.severity.active, hi, ch.trend.active, est, (ch.severity.flaps, ch.trend.flaps),
            False, ch.learning(False), ch.gate.dropped_total,
        )  # fmt: skip
        if s.transition is not None:
            if s.transition == "raised":
                ch.severity.raised_at = format_ts(reading.timestamp)
            out.drafts.append(severity_draft(ch, reading, feats, zone, s.transition, s.level))
        if ts.transition is not None:
            if ts.transition == "raised":
                ch.trend.raised_at = format_ts(reading.timestamp)
            again = critical_before if ts.level >= 2 else None
            out.drafts.append(
                trend_draft(ch, reading, feats, hi, ts.transition, ts.level, again=again)
            )
        elif revision is not None:  # the same episode, taken back to a warning (_revision)
            out.drafts.append(
                trend_draft(ch, reading, feats, hi, "escalated", 1, revision=revision)
            )

        if not self.persist:
            return
        out.state.update(self.lives.take_changes())
        if snap(ch.severity) != sev_before:
            out.state[ch.key("severity")] = json.dumps(ch.severity.to_dict(), sort_keys=True)
        if snap(ch.trend) != tr_before:
            out.state[ch.key("trend")] = json.dumps(ch.trend.to_dict(), sort_keys=True)
        if ch.persisted_s == -math.inf:  # spread the channels' periodic saves (no bursts)
            ch.persisted_s = t_s - (zlib.crc32(ch.key("model").encode()) % 997) / 997 * (
                self.tuning.persist_every_s)  # fmt: skip
        changed = model_changed or out.drafts or ch.hi.ready != was_ready
        if changed or t_s - ch.persisted_s >= self.tuning.persist_every_s:
            out.state[ch.key("model")] = model_state(ch)
            ch.persisted_s = t_s

    def _relearn_standstill(self, ch: Channel, at: datetime, out: Update) -> None:
        """A baseline whose velocity median is under the machine's running floor was learned
        while the machine stood (saved by a version without the floor, or the floor since
        raised by a reload): every running reading would be an alert against it. It is
        learned again from the running machine; a trend alert measured against it is
        closed, saying why."""
        base, floor = ch.hi.velocity_median, ch.asset.machine.running_above_mm_s
        if not ch.hi.ready or base is None or base >= floor:
            return
        what = (
            f"the baseline was learned at standstill (velocity RMS median {base:.3g} mm/s, "
            f"under machine.running_above_mm_s {floor:g} mm/s)"
        )
        self._relearn(ch, ch.asset, what, at, out, RELEARNED_AT_STANDSTILL)

    def _analysis_time(self, reading: Reading, wall_s: float) -> float:
        """Seconds on the clock durations are measured with: for a live reading (mono_s)
        monotonic time anchored to the wall clock once per process (holds, hold-offs, trend
        bins and rates, save cadence); otherwise the reading's own timestamp."""
        if reading.mono_s is None:
            return wall_s
        if self._mono_offset is None:
            self._mono_offset = wall_s - reading.mono_s
        return self._mono_offset + reading.mono_s

    def _estimate(self, ch: Channel, now_s: float, wall_s: float) -> Estimate | NoEstimate:
        """The channel's estimate: at most once per bin, far from failure less (still_fresh).
        The asset's age is wall time (installed_at is a date); the trend is analysis time."""
        b = math.floor(now_s / ch.history.bin_s)
        if ch.estimate is not None and (
            ch.estimate_bin == b or (still_fresh(ch, now_s) and not _prior_held(ch))
        ):
            return ch.estimate
        try:
            est = channel_estimate(
                ch, self.lives.life(ch.asset, wall_s), now_s, posterior=self.tuning.posterior,
                rate_prior=self.tuning.prior,
            )  # fmt: skip
        except (ArithmeticError, ValueError) as exc:  # never lose the alerts over it
            est = NoEstimate(f"time-to-failure model failed on this history: {exc}")
        ch.estimate, ch.estimate_bin, ch.estimate_s = est, b, now_s
        ch.estimate_metric = ch.history.last()
        return est

    def maintenance(
        self, asset_id: str, at: datetime, note: str, *, replaced: str | None = None
    ) -> Update:
        """A repair or maintenance event: reset the asset's baselines, trends and alerts.

        The record is kind "maintenance" with state "cleared": the repair resolves the
        asset's condition, and every alert still active on it is listed as closed in the
        evidence (one record, not one "cleared" per alert, so the portfolio sees one event
        that closes the detect -> confirm -> repair chain).

        Args:
            asset_id: the configured asset id.
            at: time of the event (UTC aware).
            note: free text from the technician or CMMS.
            replaced: the part was replaced: "failed" (a run to failure, or replaced for
                its degradation) or "healthy" (replaced while sound). Its completed life
                joins the fleet history of the asset's class, and its age restarts at 0.

        Raises:
            KeyError: unknown asset.
        """
        if asset_id not in self._asset_sensors:
            raise KeyError(f"unknown asset {asset_id!r}")
        out = Update()
        reset = reset_asset(asset_id, self._channels, self._saved)
        out.state.update(reset.state)
        keys, transport = reset.keys, reset.transport
        asset = self._assets[asset_id]
        # The record names one of the asset's sensors ("*" channel: all of them); an asset
        # a reload left without sensors names the one it had, or none.
        named = [*self._asset_sensors[asset_id], *(s for s, _ in keys), "*"][0]
        extra: dict[str, object] = {}
        if replaced is not None:
            extra, lives, state = self.lives.record_replacement(asset, at, replaced)
            out.lives.extend(lives)
            out.state.update(state)
        out.drafts.append(
            maintenance_draft(
                AssetRef(asset.id, asset.name, asset.tier),
                SensorRef(named, "*", transport),
                at,
                note,
                reset.closed,
                keys,
                extra,
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
        return (current_severity(ch), *estimate_fields(ch))

    def estimate_basis(self, sensor_id: str, channel: str) -> dict[str, object]:
        """The evidence a record carries about the channel's time to failure ({} if none)."""
        ch = self._channels.get((sensor_id, channel))
        return {} if ch is None else estimate_evidence(ch)

    def views(self) -> list[ChannelView]:
        """The latest view of every channel that has produced a reading."""
        return [v for c in self._channels.values() if (v := c.view) is not None]


# Over this share of an estimate's information from the reliability prior, after an onset,
# the estimate stands one bin only (_prior_held).
PRIOR_HELD_SHARE = 0.5


def _prior_held(ch: Channel) -> bool:
    """Whether the channel's estimate is one the reliability prior holds after an onset: it
    is then recomputed every bin, not only once 1 % of its lower bound has passed
    (still_fresh). That lower bound is the prior's (hundreds of hours: a stand of hours),
    while the trend that can take over grows with every bin: a staircase of 1.5x every 4 h
    was asked once per step, right after it (a step then flat), and its trend escalated only
    with the zone C severity warning. A degrading channel's estimate costs about 0.5 ms a
    bin; the prior alone (no onset) and an estimate the trend holds keep the longer stand."""
    est = ch.estimate
    return (
        ch.onset_s is not None
        and isinstance(est, Estimate)
        and est.terms.get("reliability_prior", 0.0) > PRIOR_HELD_SHARE
    )


def _note_due(ch: Channel, t_s: float, at: datetime) -> None:
    """A critical on the time to failure: keep when its estimate said the failure would
    come, so that a failure that does not come by then can take it back (_revision). The
    estimate as of this reading: the record's hours count from its detected_at."""
    est = ch.estimate_now()
    if isinstance(est, Estimate):
        # Overdue only past the upper bound: the point is about the remaining L10 (ttf.py),
        # so a failure that comes after it but inside the bounds is the forecast coming true
        # (FEMTO Bearing1_1 v: 0.48 h [0.33, 4.0], revised at 29 min, failed at 45). At most
        # the planning horizon, the critical's own claim: a bound mixing in the reliability
        # prior (36000 h) would otherwise hold it for years.
        latest = max(min(est.upper_hours, ch.asset.planning_horizon_hours), est.hours)
        ch.trend.due_s, ch.trend.due_hours = t_s + latest * 3600.0, est.hours
        ch.trend.due_upper_hours = latest
        ch.trend.escalated_at, ch.trend.due_level = format_ts(at), _recent_level(ch, peak=True)


def _recent_level(ch: Channel, *, peak: bool = False) -> float | None:
    """The failure metric over its last REVISE_BINS bins (None without any): their geometric
    mean, a level that noise or a value alternating between two readings hardly moves, or
    (peak) their highest bin."""
    v = ch.history.points()[1][-REVISE_BINS:]
    v = v[np.isfinite(v) & (v > 0.0)]
    if not v.shape[0]:
        return None
    return float(v.max()) if peak else float(np.exp(np.log(v).mean()))


def _grown(ch: Channel) -> bool:
    """Whether the failure metric has grown toward its threshold since the escalation: its
    recent level above the highest bin before the escalation by more than JUMP_SHARE of its
    log distance to the threshold (unknown counts as grown: the critical stays)."""
    then, now = ch.trend.due_level, _recent_level(ch)
    _, threshold = ch.failure()
    if then is None or now is None or not 0.0 < then < threshold:
        return True
    return math.log(now / then) > JUMP_SHARE * math.log(threshold / then)


def _revision(ch: Channel, t_s: float) -> dict[str, object] | None:
    """The evidence of a critical taken back (agent.analysis.lifecycle.revise), or None.

    A step then flat (a rebalanced or re-mounted machine, a load change) fits, right after
    the step, only a growth that reaches the threshold in seconds, and a failure's last
    minutes start with the same jump (FEMTO), so the critical is sent; once the predicted
    failure time has passed without failure (to the end of its upper bound), the metric
    has not grown and the estimate has been out of the horizon for the debounce, the record
    says it was revised and why, in the same episode.
    """
    st = ch.trend
    if st.active < 2 or st.due_s is None:  # almost every reading: nothing to revise
        st.revise_streak = 0
        return None
    hours, upper, escalated_at = st.due_hours, st.due_upper_hours, st.escalated_at
    told = ch.hours_now()  # as of this reading, as the revision's record says
    soon = told is not None and told < ch.asset.planning_horizon_hours
    grown = not soon and _grown(ch)
    debounce = ch.asset.alerting.debounce
    if not revise(st, soon=soon, grown=grown, now_s=t_s, debounce=debounce):
        return None
    return revision_evidence(ch, ch.estimate_now(), hours, escalated_at, upper)
