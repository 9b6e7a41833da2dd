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
  (a step then flat: a rebalanced or re-mounted machine, a load change;
  agent.analysis.revision).
Time to failure (agent.analysis.forecast): the asset's reliability prior (its class's life,
given its age) before the onset, fused with the Bayesian exponential trend of the failure
metric after it; without a prior the trend alone, and before the onset no estimate, with
the reason. Every draft carries the channel's current time to failure and its basis.

A running reading that jumps tenfold over the channel's last analysed one is analysed only
once the jump has lasted (agent.analysis.confirm): a burst of garbage raises nothing.

Modules by concern: agent.analysis.channel (per-channel state and learning), confirm (a
jump's confirmation), analyse (one reading through severity and trend, lifecycle.py the
debounce and flap hysteresis), estimating (when the time to failure is recomputed),
revision (taking back a critical), relearn (what a changed basis relearns and closes),
outcome (Tuning, Update); the monitor routes readings, configuration and maintenance.

The monitor is pure and synchronous: the runtime feeds it readings and persists what it
returns (drafts and changed state) in one store transaction. Model state (baseline, binned
history) is written on transitions and otherwise at most once per persist interval of
reading time, so the write rate and the state size stay bounded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime

from agent.analysis.analyse import analyse, log_dropped, log_recurring, note_stopped
from agent.analysis.basis import Resolved, basis_of, device, names_to_compare
from agent.analysis.channel import (
    Channel,
    ChannelView,
    load_channel,
    reading_features,
    saved_basis,
    saved_states,
    state_key,
)
from agent.analysis.confirm import WATCHED, Held
from agent.analysis.drafts import (
    HEALTH_METRIC,
    SEVERITY_METRIC,
    current_severity,
    estimate_evidence,
    estimate_fields,
    maintenance_draft,
    metric_unit,
)
from agent.analysis.health_index import HI_FEATURES
from agent.analysis.lifetime import AssetLives
from agent.analysis.outcome import Tuning, Update
from agent.analysis.relearn import (
    RELEARNED_AT_START,
    RELEARNED_BY_RELOAD,
    new_history,
    rebase,
    relearn_standstill,
)
from agent.analysis.reliability import FleetLife
from agent.analysis.removed import (
    CLOSED_AT_START,
    CLOSED_BY_RELOAD,
    close_saved,
)
from agent.analysis.repair import reset_asset
from agent.analysis.severity import velocity_resolved, zone_table
from agent.config import Asset, Config
from agent.records import (
    AssetRef,
    Progression,
    SensorRef,
    Severity,
    TimeToFailure,
)
from drivers.reading import Reading, utc_now

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
        resolved: the Modbus host names looked up now (agent.host_names; see host_names):
            a device written by its name, then by its address, is the same device.
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
        resolved: Resolved | None = None,
    ) -> None:
        self._index(config, digests)
        self.resolved = resolved
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

    def host_names(self, config: Config | None = None) -> set[str]:
        """The Modbus host names to look up before reconfigure() or close_unconfigured()
        compares a sensor's devices (running, saved, and as configured) with the ones
        configured now, or as `config` would configure them (agent.host_names): only those
        of a device whose host alone is written otherwise (basis.names_to_compare)."""
        after = {s.id: device(s) for s in config.sensors} if config is not None else {
            sid: b.device for sid, b in self._basis.items()}  # fmt: skip
        pairs = [(b.device, after[sid]) for sid, b in self._basis.items() if sid in after]
        pairs += [(ch.basis.device, after[key[0]]) for key, ch in self._channels.items()
                  if ch.basis is not None and key[0] in after]  # fmt: skip
        for k, v in self._saved.items():
            parts = k.split("/")
            ok = len(parts) == 4 and parts[3] == "model" and parts[1] in after
            if ok and (b := saved_basis(v)) is not None:
                pairs.append((b.device, after[parts[1]]))
        return names_to_compare(pairs)

    def knows(self, sensor_id: str) -> bool:
        """True when the sensor is in the configuration (a reload may have removed it)."""
        return sensor_id in self._sensor_asset

    def reconfigure(
        self,
        config: Config,
        at: datetime | None = None,
        *,
        digests: Mapping[str, str] | None = None,
        resolved: Resolved | None = None,
    ) -> Update:
        """Take a reloaded configuration (`resolved`: its host names as looked up now,
        host_names); returns the state to persist, and a "cleared"
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
        if resolved is not None:
            self.resolved = resolved
        for key, ch in list(self._channels.items()):
            asset = self._sensor_asset.get(key[0])
            if asset is None or asset.id != ch.asset.id or key[1] not in self._channels_of[key[0]]:
                self._saved.update(saved := saved_states(ch))
                out.state.update(saved)
                transports[key[0]] = ch.sensor.transport
                del self._channels[key]
                continue
            rebase(ch, asset, self._basis[key[0]], at, out, RELEARNED_BY_RELOAD, self.tuning,
                   self.resolved)  # fmt: skip
            # A baseline still being learned completes at the new length.
            ch.hi.learn_readings = asset.alerting.baseline_readings
            ch.asset, ch.table = asset, self._tables[asset.id]
            ch.estimate = ch.estimate_bin = None
        self.lives.reconfigure(config.assets, self._saved)
        self._close_left(out, {**self._assets, **assets}, transports, at, CLOSED_BY_RELOAD)
        self._rebase_saved(out, at, RELEARNED_BY_RELOAD)
        return out

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
            rebase(ch, asset, now, at, out, why, self.tuning, self.resolved)

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

    def _channel(self, reading: Reading, out: Update) -> Channel:
        ch = self._channels.get((reading.sensor_id, reading.channel))
        if ch is not None:
            return ch
        ch = self._load(SensorRef(reading.sensor_id, reading.channel, reading.transport))
        # The start (close_unconfigured) rebased saved models; this covers a caller that
        # did not make that call, and a model saved without a basis (it takes this one).
        asset, now = ch.asset, self._basis[reading.sensor_id]
        rebase(ch, asset, now, reading.timestamp, out, RELEARNED_AT_START, self.tuning,
               self.resolved)  # fmt: skip
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
            history=new_history(asset, self.tuning),
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
            ch = self._channels.get((reading.sensor_id, reading.channel))
            if ch is not None and ch.unanalysed_from_s is None and math.isfinite(ch.now_s):
                ch.unanalysed_from_s = ch.now_s  # the clear hold does not run through it
            return out
        ch = self._channel(reading, out)
        relearn_standstill(ch, reading.timestamp, out, self.tuning)
        feats = reading_features(ch, reading)
        value = feats.get(SEVERITY_METRIC)
        if value is None or not math.isfinite(value):
            self.skipped_total += 1
            return out
        wall_s = reading.timestamp.timestamp()
        t_s = ch.now_s = self._analysis_time(reading, wall_s)  # the time records state
        now = Held(reading, feats, value, t_s, wall_s)
        if ch.stopped(value, feats):  # no measurement of the machine's condition (channel.py)
            self.stopped_total += 1
            self._dropped(ch, ch.gate.interrupt())
            note_stopped(ch, now, out, tuning=self.tuning, persist=self.persist)
            return out
        # A tenfold jump is analysed only once it lasts (agent.analysis.confirm).
        # (a velocity RMS that does not resolve its band is no measurement: not judged)
        watched = WATCHED if velocity_resolved(feats) else HI_FEATURES
        ready, dropped = ch.gate.offer(now, watched)
        self._dropped(ch, dropped)
        if ch.gate.recurring_since is not None:
            log_recurring(ch)
        for held in ready:
            analyse(ch, held, out, lives=self.lives, tuning=self.tuning, persist=self.persist)
        return out

    def _dropped(self, ch: Channel, dropped: Sequence[Held]) -> None:
        """Count a burst of jumping readings that did not last (the first one of a channel
        is logged)."""
        if dropped:
            self.unconfirmed_total += len(dropped)
            log_dropped(ch, dropped)

    def _analysis_time(self, reading: Reading, wall_s: float) -> float:
        """Seconds on the clock durations are measured with: for a live reading (mono_s)
        monotonic time anchored to the wall clock once per process (holds, hold-offs, trend
        bins and rates, save cadence); otherwise the reading's own timestamp."""
        if reading.mono_s is None:
            return wall_s
        if self._mono_offset is None:
            self._mono_offset = wall_s - reading.mono_s
        return self._mono_offset + reading.mono_s

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
