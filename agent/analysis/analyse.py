"""One running reading of a channel through its analysis: severity, trend, state to persist.

Severity is the ISO zone of velocity RMS where the reading resolves its band; the trend is
the health index against its learned level, or velocity RMS against the ISO 20816-1 alarm
from the baseline, escalated when the time to failure falls under the planning horizon and
revised when a critical's failure did not come (agent.analysis.revision). What the channel
changed is returned as the state to store with the drafts, model state at most once per
persist interval. The log is the monitor's (agent.analysis.monitor), as before the split.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Sequence

from agent.analysis.channel import Channel, model_state, snap
from agent.analysis.confirm import JUMP_CONFIRM, JUMP_FACTOR, RECUR_BURSTS, RECUR_READINGS, Held
from agent.analysis.drafts import SEVERITY_METRIC, severity_draft, trend_draft
from agent.analysis.estimating import estimate
from agent.analysis.features import VELOCITY_BAND_PERIODS
from agent.analysis.lifecycle import step
from agent.analysis.lifetime import AssetLives
from agent.analysis.outcome import Tuning, Update
from agent.analysis.revision import note_due, revision
from agent.analysis.severity import ZONE_LEVEL, velocity_resolved
from agent.records import format_ts

__all__ = ["analyse", "log_dropped", "log_recurring", "note_stopped"]

log = logging.getLogger("agent.analysis.monitor")


def note_stopped(ch: Channel, held: Held, out: Update, *, tuning: Tuning, persist: bool) -> None:
    """A reading of a stopped machine: no measurement of its condition (Channel.stopped).
    The view shows it (no zone, alerts as they were); a long wait before a baseline is
    logged once, and (persist) its length saved with the model state as it begins, is
    logged, and every tuning.persist_every_s (a restart counts on)."""
    reading, value = held.reading, held.value
    shown = ch.view
    ch.set_view(
        ch.asset.id, ch.sensor.id, ch.sensor.channel, reading.timestamp, value, None,
        ch.severity.active, shown.health_index if shown else None, ch.trend.active,
        ch.estimate, (ch.severity.flaps, ch.trend.flaps), True, ch.learning(True),
        ch.gate.dropped_total,
    )  # fmt: skip
    began = ch.waiting_since_s is None
    warn = ch.wait(held.t_s, value)
    if warn:
        log.warning("%s", ch.waited())
    due = held.t_s - ch.persisted_s >= tuning.persist_every_s
    if persist and (warn or due or (began and ch.waiting_since_s is not None)):
        out.state[ch.key("model")] = model_state(ch)
        ch.persisted_s = held.t_s


def log_dropped(ch: Channel, dropped: Sequence[Held]) -> None:
    """Log the first burst of jumping readings of a channel that did not last (later ones
    are counted, not logged)."""
    if not dropped or ch.gate.warned:
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


def log_recurring(ch: Channel) -> None:
    """Log, once per channel, that its tenfold jumps recur and are analysed from now on."""
    gate = ch.gate
    if gate.recurring_since != gate.seen or gate.recur_warned:
        return
    gate.recur_warned = True
    log.warning(
        "asset %s sensor %s channel %s: %d bursts of tenfold jumps fell back within %d "
        "readings: they recur (an intermittent fault, or a sensor to check), so they are "
        "analysed from now on, until %d readings in a row have not jumped",
        ch.asset.id, ch.sensor.id, ch.sensor.channel, RECUR_BURSTS, RECUR_READINGS,
        RECUR_READINGS,
    )  # fmt: skip


def unhold(ch: Channel, gap_s: float) -> None:
    """Flagged readings (a railed, saturated or garbled sensor) covered gap_s seconds: no
    reading said the machine was below its clear level then, so an alert's clear hold does
    not count them (3 readings under the level around 2 h of a railed sensor cleared a zone D
    alert as if it had held 30 min)."""
    if gap_s > 0.0:
        for state in (ch.severity, ch.trend):
            if state.below_since_s is not None:
                state.below_since_s += gap_s


def analyse(
    ch: Channel, held: Held, out: Update, *, lives: AssetLives, tuning: Tuning, persist: bool
) -> None:
    """Analyse one running reading of the channel: severity, trend, and (persist) the state
    to store with what it produced (`lives`: the assets' ages and their changes to store)."""
    reading, feats, value, t_s, wall_s = (
        held.reading, held.features, held.value, held.t_s, held.wall_s)  # fmt: skip
    ch.now_s = t_s
    waited = ch.waiting_since_s is not None or ch.waited_before_s > 0
    if ch.ran():
        log.info(
            "asset %s sensor %s channel %s: the machine runs (velocity RMS %.3g mm/s); "
            "learning the baseline",
            ch.asset.id, ch.sensor.id, ch.sensor.channel, value,
        )  # fmt: skip
    if waited:  # the wait ended: a restart must not count it on
        out.state[ch.key("model")] = model_state(ch)
    ch.running_s = t_s
    if ch.unanalysed_from_s is not None:
        unhold(ch, t_s - ch.unanalysed_from_s)
        ch.unanalysed_from_s = None
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
    est = estimate(ch, lives, tuning, t_s, wall_s)
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
        est = estimate(ch, lives, tuning, t_s, wall_s)
    elif ts.transition == "cleared":
        ch.onset_s, ch.estimate_bin, model_changed = None, None, True
        est = estimate(ch, lives, tuning, t_s, wall_s)
    revised: dict[str, object] | None = None
    critical_before = ch.trend.critical_at  # a critical already sent in this episode
    if ts.transition in ("raised", "escalated") and ch.trend.active >= 2:
        note_due(ch, t_s, reading.timestamp)
        ch.trend.critical_at = critical_before or format_ts(reading.timestamp)
    elif ts.transition is None:
        revised = revision(ch, t_s)

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
        out.drafts.append(trend_draft(ch, reading, feats, hi, ts.transition, ts.level, again=again))
    elif revised is not None:  # the same episode, taken back to a warning (revision)
        out.drafts.append(trend_draft(ch, reading, feats, hi, "escalated", 1, revision=revised))

    if not persist:
        return
    out.state.update(lives.take_changes())
    if snap(ch.severity) != sev_before:
        out.state[ch.key("severity")] = json.dumps(ch.severity.to_dict(), sort_keys=True)
    if snap(ch.trend) != tr_before:
        out.state[ch.key("trend")] = json.dumps(ch.trend.to_dict(), sort_keys=True)
    if ch.persisted_s == -math.inf:  # spread the channels' periodic saves (no bursts)
        ch.persisted_s = t_s - (zlib.crc32(ch.key("model").encode()) % 997) / 997 * (
            tuning.persist_every_s)  # fmt: skip
    changed = model_changed or out.drafts or ch.hi.ready != was_ready
    if changed or t_s - ch.persisted_s >= tuning.persist_every_s:
        out.state[ch.key("model")] = model_state(ch)
        ch.persisted_s = t_s
