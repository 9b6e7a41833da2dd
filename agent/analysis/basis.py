"""What a settings change invalidates in a channel's learned state (a live reload).

A channel learns two things, from different inputs:
- the baseline (health index over accel RMS / HF accel RMS, else velocity RMS, and the
  velocity median behind the ISO 20816-1 alarm): learned from how the machine vibrates at
  its speed, as this sensor reports it. A new speed or a new register profile / decoder
  (another device, other scaling) makes it meaningless; nothing else does.
- the failure metric's binned history (time to failure): the failure metric's values in
  bins of trend_bin_s. A new metric, bin width or bearing geometry (the envelope features
  depend on it) makes it meaningless; the baseline and the degradation onset stay.

Relearning a baseline while the machine is degraded would learn the degradation as normal,
and the open trend alert would later clear as if the machine had recovered. So a relearn
closes that alert at once, with a record that says a reload did it and why
(agent.analysis.monitor `reconfigure`).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import Asset, Sensor

__all__ = ["BasisChange", "basis_change", "reading_source"]


@dataclass(frozen=True, slots=True)
class BasisChange:
    """What a channel must relearn after a settings change; each a human line per cause.

    Attributes:
        baseline: causes that invalidate the baseline (empty: it is kept).
        history: causes that invalidate the failure metric's history (and not the
            baseline); a relearned baseline rebuilds the history too.
    """

    baseline: tuple[str, ...] = ()
    history: tuple[str, ...] = ()

    @property
    def relearn(self) -> str | None:
        """What changed, for a record ("machine.rpm 1480 -> 990"); None: nothing."""
        return "; ".join(self.baseline) or None


def reading_source(sensor: Sensor) -> str:
    """What turns the device's data into features: its register profile or its decoder."""
    if sensor.mqtt is not None:
        return f"mqtt.decoder {sensor.mqtt.decoder}"
    assert sensor.modbus is not None
    return f"modbus.profile {sensor.modbus.profile}"


def _was(name: str, before: object, after: object) -> str:
    return f"{name} {before} -> {after}"


def basis_change(before: Asset, after: Asset, src_before: str, src_after: str) -> BasisChange:
    """What a channel on asset `before`, read through `src_before` (reading_source), must
    relearn under `after` read through `src_after`. Thresholds, zones, debounce, holds,
    horizons, priors and `failure.threshold` invalidate nothing; `alerting.baseline_readings`
    applies to a baseline still being learned and to the next one (after a repair)."""
    baseline: list[str] = []
    if before.machine.rpm != after.machine.rpm:
        baseline.append(_was("machine.rpm", f"{before.machine.rpm:g}", f"{after.machine.rpm:g}"))
    if src_before != src_after:
        baseline.append(f"{src_before} -> {src_after}")
    history: list[str] = []
    if before.failure.metric != after.failure.metric:
        history.append(_was("failure.metric", before.failure.metric, after.failure.metric))
    if before.alerting.trend_bin_s != after.alerting.trend_bin_s:
        bins = (before.alerting.trend_bin_s, after.alerting.trend_bin_s)
        history.append(_was("alerting.trend_bin_s", *bins))
    if before.bearing != after.bearing:
        history.append("bearing geometry changed")
    return BasisChange(tuple(baseline), tuple(history))
