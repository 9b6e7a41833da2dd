"""Per-channel analysis state of the Monitor: lifecycles, health index, trend history.

One Channel per (sensor, channel). Its lifecycle states are persisted as their own store
keys ("severity", "trend") and the model (health index, binned history, onset, and the
basis it was learned under) as "model"; state_key() names them, load_channel() rebuilds a
Channel from what the store returned.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import deque
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime

from agent.analysis.basis import Basis
from agent.analysis.bearing import BearingGeometry
from agent.analysis.confirm import JumpGate
from agent.analysis.features import waveform_features
from agent.analysis.health_index import HealthIndex, HealthIndexTuning
from agent.analysis.lifecycle import LifecycleState
from agent.analysis.severity import ZoneTable, iso_alarm_level, velocity_band_hz
from agent.analysis.trend import NoEstimate, Trend
from agent.analysis.ttf import Estimate, aged
from agent.config import Asset
from agent.records import SensorRef
from drivers.reading import Reading

__all__ = [
    "STOPPED_SHARE",
    "WAIT_WARN_S",
    "Channel",
    "ChannelView",
    "load_channel",
    "model_state",
    "reading_features",
    "saved_basis",
    "saved_states",
    "snap",
    "state_key",
]


# A velocity RMS below this share of the channel's learned running baseline is a stopped
# machine (or a sensor unplugged, reading zeros): a running machine does not vibrate at a
# fifth of its healthy level, and ambient vibration at standstill is far lower still (its
# acceleration features too: a slowed machine whose acceleration rises is running). Such a
# reading says nothing about the machine's condition: it neither raises nor clears an alert
# and is left out of the trend, so a weekend stop neither closes an open alert (to raise it
# again as new on Monday) nor puts a step into the history that reads as explosive growth.
# Under the asset's machine.running_above_mm_s (default 0.05 mm/s, near sensor noise) a
# reading is a stop too, and before a baseline exists that floor alone decides: a baseline
# is learned only from readings of the running machine. Learned at standstill (a gateway
# commissioned during a planned stop, a relearn after maintenance before the restart), the
# first healthy running readings were 50x "the baseline": a trend warning, then a critical
# with minutes to failure, on a healthy machine.
STOPPED_SHARE = 0.2

# A channel without a baseline whose readings have all been under the running floor for
# this long (reading time: a day covers a weekend stop's first day and a night shift's
# stop) is logged once as a warning: a machine that runs below the floor, a sensor on the
# wrong machine, or one reporting m/s as mm/s (1000x too low) is otherwise never learned
# and never watched, and only status said so. WAIT_SEEN readings' velocity are kept for
# the median the warning names. The wait's start is saved with the model: a gateway
# restarted nightly (a power cycle, an update) would otherwise never reach a day.
WAIT_WARN_S = 24 * 3600.0
WAIT_SEEN = 255


@dataclass(frozen=True, slots=True)
class ChannelView:
    """The latest state of one channel, for status displays and health."""

    asset_id: str
    sensor_id: str
    channel: str
    at: datetime
    value: float
    zone: str | None  # None: the velocity band is not resolved, or the machine is stopped
    active_level: int
    health_index: float | None = None
    trend_level: int = 0
    estimate: Estimate | NoEstimate | None = None
    flaps: tuple[int, int] = (0, 0)  # (severity, trend) returns within the clear hold
    stopped: bool = False  # the reading said the machine is stopped (STOPPED_SHARE)
    # None once the baseline is learned; else how far its learning is, or that it waits for
    # the machine to run (a stopped machine's readings never form it).
    learning: str | None = None
    # Readings of tenfold jumps that fell back before they lasted (agent.analysis.confirm).
    unconfirmed: int = 0


@dataclass(slots=True)
class Channel:
    """Mutable analysis state of one sensor channel."""

    asset: Asset
    table: ZoneTable
    sensor: SensorRef
    severity: LifecycleState
    trend: LifecycleState
    hi: HealthIndex
    history: Trend
    onset_s: float | None = None
    # The settings the model was learned under (agent.analysis.basis); None: a model saved
    # by a version that did not record it, kept as it is.
    basis: Basis | None = None
    estimate: Estimate | NoEstimate | None = None
    estimate_bin: int | None = None
    estimate_s: float = -math.inf  # reading time the estimate was computed at
    estimate_metric: float | None = None  # the failure metric's newest bin mean then
    now_s: float = -math.inf  # analysis time of the latest reading (estimate_s's clock)
    # ...and of the latest running one: a stopped machine does not wear, so its estimate
    # counts down to here, not through the stop (the next running reading recomputes it).
    running_s: float = -math.inf
    persisted_s: float = -math.inf
    # The latest view's fields; the ChannelView itself is made when someone looks (a
    # status page, a draft), not for each of thousands of readings a second.
    view_fields: tuple[object, ...] | None = None
    _view: ChannelView | None = None
    cause: str = "health_index"  # what raised the trend alert: health_index or velocity
    # Periods of the velocity band's low edge in the last waveform, when too few for ISO
    # severity (None: the velocity RMS was a measurement).
    velocity_periods: float | None = None
    # Before the baseline: analysis time of the first of the readings under the running
    # floor since the last running one (None: not waiting), their latest velocities, and
    # whether the long wait was logged. waited_before_s: how long earlier processes saw it
    # wait, counted on from this process's next reading under the floor (saved as a length,
    # not a start: a wall clock stepped between two runs moves neither, and the hours the
    # gateway was off are not counted as readings).
    waiting_since_s: float | None = None
    waiting_seen: deque[float] = field(default_factory=lambda: deque(maxlen=WAIT_SEEN))
    waiting_warned: bool = False
    waited_before_s: float = 0.0
    # Readings that jump tenfold wait here for confirmation (agent.analysis.confirm).
    gate: JumpGate = field(default_factory=JumpGate)
    # Analysis time of the last reading before flagged ones (garbage, saturated: not
    # analysed) began; None: none since. Time they cover is no time below a clear level.
    unanalysed_from_s: float | None = None

    @property
    def view(self) -> ChannelView | None:
        """The latest state of this channel (None before its first analysed reading)."""
        if self._view is None and self.view_fields is not None:
            self._view = ChannelView(*self.view_fields)  # type: ignore[arg-type]
        return self._view

    def set_view(self, *fields: object) -> None:
        """Record the latest view's fields (ChannelView's, in order)."""
        self.view_fields, self._view = fields, None

    def estimate_now(self) -> Estimate | NoEstimate | None:
        """The estimate as of the latest reading, the time its records and views state: the
        one computed earlier in the bin less the running time since (agent.analysis.ttf.aged).
        """
        est = self.estimate
        if not isinstance(est, Estimate) or not math.isfinite(self.estimate_s):
            return est
        return aged(est, self._gone_s())

    def hours_now(self) -> float | None:
        """estimate_now()'s hours alone (None without an estimate), for the decisions
        taken at every reading: a copy of the estimate each time would cost more."""
        est = self.estimate
        if not isinstance(est, Estimate):
            return None
        gone_s = self._gone_s()
        return max(est.hours - gone_s / 3600.0, 0.0) if gone_s > 0.0 else est.hours

    def _gone_s(self) -> float:
        """Running time since the estimate was computed (to the latest running reading)."""
        return min(self.now_s, self.running_s) - self.estimate_s

    def iso_alarm(self) -> float | None:
        """ISO 20816-1 velocity alarm from the learned baseline, None while learning."""
        base = self.hi.velocity_median
        return None if base is None else iso_alarm_level(base, self.table.bc)

    def stop_below(self) -> float:
        """The velocity RMS (mm/s) under which a reading is of a stopped machine: the
        asset's running_above_mm_s, and once a baseline is learned at least STOPPED_SHARE
        of its velocity median."""
        floor = self.asset.machine.running_above_mm_s
        base = self.hi.velocity_median if self.hi.ready else None
        return floor if base is None else max(floor, STOPPED_SHARE * base)

    def stopped(self, velocity_mm_s: float, features: Mapping[str, float]) -> bool:
        """Whether a reading says the machine is not running (or the sensor is off it): its
        velocity RMS under stop_below(), and once a baseline is learned its acceleration
        features not above theirs. A machine slowed down (a VFD at low speed) shows little
        velocity, but a failing bearing's acceleration stays high: that reading is
        analysed, not taken for a stop. Before the baseline there is nothing to compare
        the acceleration with: a reading under the floor is a stop and is not learned."""
        if velocity_mm_s >= self.stop_below():
            return False
        return not self.hi.above_baseline(features)

    def learning(self, stopped: bool) -> str | None:
        """What the baseline's learning waits for (None once learned), for status."""
        hi = self.hi
        if hi.ready:
            return None
        seen = f"{hi.samples_seen} of {hi.learn_readings} readings"
        if not stopped:
            return f"learning the baseline ({seen})"
        floor = self.asset.machine.running_above_mm_s
        return (
            f"learning the baseline: waiting for the machine to run (velocity RMS under "
            f"machine.running_above_mm_s {floor:g} mm/s; {seen})"
        )

    def wait(self, now_s: float, velocity_mm_s: float) -> bool:
        """Count a stopped reading before the baseline; True once, when all readings have
        been under the floor for WAIT_WARN_S (the caller logs the warning and saves the
        model state, as when a wait begins: waiting_since_s is None before)."""
        if self.hi.ready:
            return False
        if self.waiting_since_s is None:
            self.waiting_since_s, self.waited_before_s = now_s - self.waited_before_s, 0.0
            self.waiting_seen.clear()
        self.waiting_seen.append(velocity_mm_s)
        if self.waiting_warned or now_s - self.waiting_since_s < WAIT_WARN_S:
            return False
        self.waiting_warned = True
        return True

    def ran(self) -> bool:
        """A running reading ends the wait; True if the long wait had been logged (the
        caller logs that learning starts)."""
        warned = self.waiting_warned
        self.waiting_since_s, self.waiting_warned, self.waited_before_s = None, False, 0.0
        return warned

    def unwait(self) -> None:
        """Forget the wait: the channel learns afresh (a relearn), and waits afresh."""
        self.ran()
        self.waiting_seen.clear()

    def waited(self) -> str:
        """The long wait, for the warning: how long, the median velocity, the setting."""
        since = self.waiting_since_s
        hours = (self.now_s - since) / 3600.0 if since is not None else 0.0
        median = statistics.median(self.waiting_seen) if self.waiting_seen else 0.0
        floor = self.asset.machine.running_above_mm_s
        return (
            f"asset {self.asset.id} sensor {self.sensor.id} channel {self.sensor.channel}: "
            f"no baseline learned after {hours:.1f} h of readings all under "
            f"machine.running_above_mm_s {floor:g} mm/s (velocity RMS median "
            f"{median:.3g} mm/s): the channel is not watched. If the machine runs at this "
            f"level, set machine.running_above_mm_s under it; check that the sensor is on "
            f"this machine and reports velocity in mm/s (m/s reads 1000x too low)"
        )

    def key(self, kind: str) -> str:
        """This channel's store key of one persisted state."""
        return state_key(self.asset.id, self.sensor.id, self.sensor.channel, kind)

    def failure(self) -> tuple[str, float]:
        """(failure metric, failure threshold); the threshold defaults to the C/D boundary."""
        f = self.asset.failure
        return f.metric, f.threshold if f.threshold is not None else self.table.cd


def state_key(asset_id: str, sensor_id: str, channel: str, kind: str) -> str:
    """The store key of one persisted state ("severity", "trend" or "model")."""
    return f"{asset_id}/{sensor_id}/{channel}/{kind}"


def snap(s: LifecycleState) -> tuple[object, ...]:
    """The fields of a lifecycle state that decide whether it must be persisted."""
    return (s.active, s.streak_level, s.streak, s.clear_streak, s.raised_at, s.cleared_at_s,
            s.below_since_s, s.flaps)  # fmt: skip


def load_channel(
    saved: MutableMapping[str, str],
    *,
    asset: Asset,
    table: ZoneTable,
    sensor: SensorRef,
    health: HealthIndexTuning,
    history: Trend,
) -> Channel:
    """Build a channel, consuming its persisted states from saved (if any).

    Args:
        saved: persisted state by key; this channel's keys are popped.
        asset: the channel's configured asset.
        table: the asset's zone table.
        sensor: the sensor reference (id, channel, transport).
        health: health-index tuning.
        history: an empty trend history (used when nothing was persisted).
    """
    k = lambda kind: state_key(asset.id, sensor.id, sensor.channel, kind)  # noqa: E731
    sev, tr, model = (saved.pop(k(x), None) for x in ("severity", "trend", "model"))
    ch = Channel(
        asset=asset,
        table=table,
        sensor=sensor,
        severity=LifecycleState.from_dict(json.loads(sev)) if sev else LifecycleState(),
        trend=LifecycleState.from_dict(json.loads(tr)) if tr else LifecycleState(),
        hi=HealthIndex(asset.alerting.baseline_readings, health),
        history=history,
    )
    # The alert states above are what must survive; a model state this version cannot read
    # (older format, damaged) costs a relearned baseline, never a forgotten alert.
    try:
        data = json.loads(model) if model else {}
        if data:
            hi = HealthIndex(asset.alerting.baseline_readings, health)
            hi.load(data["hi"])
            ch.history, ch.hi = Trend.from_dict(data["history"]), hi
            ch.onset_s = data["onset_s"]
            ch.basis = Basis.from_dict(data.get("basis"))
            waited = data.get("waited_s")
            if not hi.ready and isinstance(waited, int | float) and 0 <= waited < math.inf:
                ch.waited_before_s = float(waited)
                ch.waiting_warned = data.get("waiting_warned") is True
    except (ValueError, KeyError, TypeError):
        ch.history, ch.hi = history, HealthIndex(asset.alerting.baseline_readings, health)
    return ch


def saved_basis(model: str) -> Basis | None:
    """The basis a saved model state was learned under; None: none recorded (an older
    store, a reset or unreadable model)."""
    try:
        data = json.loads(model)
    except ValueError:
        return None
    return Basis.from_dict(data.get("basis")) if isinstance(data, dict) else None


def saved_states(ch: Channel) -> dict[str, str]:
    """Everything the channel would persist (lifecycles and model), by store key."""
    return {
        ch.key("severity"): json.dumps(ch.severity.to_dict(), sort_keys=True),
        ch.key("trend"): json.dumps(ch.trend.to_dict(), sort_keys=True),
        ch.key("model"): model_state(ch),
    }


def model_state(ch: Channel) -> str:
    """The channel's model state (health index, history, onset, basis; the wait for the
    machine to run, while there is one) as compact JSON."""
    basis = None if ch.basis is None else ch.basis.to_dict()
    state = {"hi": ch.hi.to_dict(), "history": ch.history.to_dict(), "onset_s": ch.onset_s,
             "basis": basis}  # fmt: skip
    waited = ch.waited_before_s if ch.waiting_since_s is None else ch.now_s - ch.waiting_since_s
    if ch.waiting_since_s is not None or waited > 0:
        state |= {"waited_s": max(waited, 0.0), "waiting_warned": ch.waiting_warned}
    return json.dumps(state, separators=(",", ":"))


def reading_features(ch: Channel, reading: Reading) -> Mapping[str, float]:
    """The reading's features; a waveform's computed for the channel's machine."""
    if reading.waveform is None:
        return reading.features
    rpm = ch.asset.machine.rpm
    b = ch.asset.bearing
    geometry = None if b is None else BearingGeometry(b.balls, b.ball_mm, b.pitch_mm, b.contact_deg)
    computed = waveform_features(
        reading.waveform.samples,
        reading.waveform.fs_hz,
        band_hz=velocity_band_hz(rpm),
        shaft_hz=rpm / 60.0,
        bearing=geometry,
    )
    return {**computed, **reading.features}  # a sensor's own values (temperature) win
