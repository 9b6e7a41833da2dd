"""A sensor frozen at a low value does not clear its machine's alert: its stuck readings
are flagged (drivers.stuck) and the monitor never takes them as the machine's state."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.analysis.monitor import Monitor
from drivers.reading import Reading
from drivers.stuck import StuckRule, StuckWatch
from tests.agent._configs import press_config

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def feats(v: float) -> dict[str, float]:
    return {"velocity_rms_mm_s": v, "accel_rms_g": 0.05 * v, "hf_accel_rms_g": 0.02 * v}


def run(m: Monitor, watch: StuckWatch | None, values: list[float]) -> list[tuple[int, str]]:
    """One reading a minute through the stuck watch (None: none); (index, state) of the
    severity drafts."""
    out = []
    for i, v in enumerate(values):
        readings = [Reading("m1", "z", T0 + timedelta(minutes=i), feats(v), mono_s=60.0 * i)]
        if watch is not None:
            readings, _ = watch.check(readings)
        for r in readings:
            out += [(i, d.state) for d in m.update(r).drafts if d.kind == "severity"]
    return out


def plan() -> list[float]:
    """An hour healthy and 20 min in zone D (live: no two readings equal), then 3 h frozen
    at the last healthy value a gateway cached (1.0 mm/s, zone A)."""
    live = [1.0 + 0.01 * math.sin(i * 1.7) for i in range(60)]
    live += [6.0 + 0.05 * math.sin(i * 1.3) for i in range(20)]
    return live + [1.0] * 180


def test_a_frozen_zone_a_value_never_clears_a_zone_d_alert(tmp_path: Path) -> None:
    """With the default rule: raised in zone D, never cleared by 3 h of one cached value.
    Without a stuck watch the same stream cleared the alert within the hold."""
    cfg = press_config(tmp_path, baseline_readings=30)
    with_watch = run(Monitor(cfg), StuckWatch(StuckRule()), plan())
    assert [s for _, s in with_watch][:1] == ["raised"]
    assert "cleared" not in [s for _, s in with_watch], with_watch
    without = run(Monitor(press_config(tmp_path, baseline_readings=30)), None, plan())
    assert "cleared" in [s for _, s in without]


def _gateway(m: Monitor, watch: StuckWatch, measurements: list[float]) -> list[str]:
    """A gateway that refreshes every 10 minutes, polled every 5 s: each measurement is
    served to 120 polls. The severity drafts' states."""
    out = []
    for i in range(120 * len(measurements)):
        t = 5.0 * i
        at = T0 + timedelta(seconds=t)
        readings, _ = watch.check([Reading("m1", "z", at, feats(measurements[i // 120]), mono_s=t)])
        for r in readings:
            out += [d.state for d in m.update(r).drafts if d.kind == "severity"]
    return out


def test_one_cached_measurement_of_a_slow_gateway_does_not_clear_an_alert(
    tmp_path: Path,
) -> None:
    """4 h healthy and 1 h in zone D through a gateway refreshing every 10 minutes; then
    the sensor dies and the gateway serves its last measurement (zone A) for 3 h: the
    alert stays open (the freeze is judged only after the gateway's learned wait, but a
    measurement served again past the rule's floor is not analysed meanwhile). Fresh
    zone A measurements instead clear it. Before, the one cached measurement, analysed
    poll after poll, met the 30 min clear hold."""
    healthy = [1.0 + 0.01 * math.sin(k * 1.7) for k in range(24)]
    zone_d = [6.0 + 0.05 * math.sin(k * 1.3) for k in range(6)]
    cfg = press_config(tmp_path, baseline_readings=30)
    frozen = _gateway(Monitor(cfg), StuckWatch(StuckRule()), [*healthy, *zone_d, *[1.0] * 18])
    assert frozen == ["raised"]
    fresh = [1.0 + 0.01 * math.sin(k * 0.9) for k in range(18)]
    cfg = press_config(tmp_path, baseline_readings=30)
    live = _gateway(Monitor(cfg), StuckWatch(StuckRule()), [*healthy, *zone_d, *fresh])
    assert live == ["raised", "cleared"]
