"""A stopped machine (velocity far below its running baseline) is no measurement: a weekend
stop neither clears a degraded machine's alerts nor raises them again as new at restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.analysis.monitor import Monitor
from agent.health_metrics import render_metrics
from drivers.reading import Reading
from tests.agent._configs import press_config

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def test_a_weekend_stop_neither_clears_nor_re_raises_the_alerts(tmp_path: Path) -> None:
    m = Monitor(press_config(tmp_path, baseline_readings=20))
    phases = [
        (40, 1.0, 0.05),  # healthy: the baseline (velocity, accel RMS) is learned
        (30, 3.2, 0.12),  # degraded: ISO zone C and the health index over its level
        (48 * 60, 0.02, 0.001),  # stopped for 48 h: ambient vibration only
        (30, 3.2, 0.12),  # restarted in the same condition
    ]
    records = []
    t = 0.0
    for n, velocity, accel in phases:
        for i in range(n):
            wobble = 1.0 + 0.03 * ((i * 7) % 5 - 2) / 2  # deterministic +/- 3 % noise
            feats = {"velocity_rms_mm_s": velocity * wobble, "accel_rms_g": accel * wobble}
            at = T0 + timedelta(seconds=t)
            records += [(d.kind, d.state) for d in m.update(Reading("m1", "z", at, feats)).drafts]
            t += 60.0
    raised = [r for r in records if r[1] == "raised"]
    assert sorted(raised) == [("severity", "raised"), ("trend", "raised")]
    assert not [r for r in records if r[1] == "cleared"]
    assert m.stopped_total == 48 * 60


def test_status_shows_the_stopped_machine_not_its_last_running_value(tmp_path: Path) -> None:
    """Status and /metrics show the stopped machine's own reading, no zone, marked stopped,
    not the last running value (3.2 mm/s, zone C) for the whole stop."""
    m = Monitor(press_config(tmp_path, baseline_readings=20))
    for i in range(60):
        v, a = (1.0, 0.05) if i < 30 else (3.2, 0.12) if i < 50 else (0.02, 0.001)
        m.update(Reading("m1", "z", T0 + timedelta(minutes=i), {"velocity_rms_mm_s": v,
                                                                 "accel_rms_g": a}))  # fmt: skip
    (view,) = m.views()
    assert (view.value, view.zone, view.stopped, view.active_level) == (0.02, None, True, 1)
    current = m.current("m1", "z")
    assert current is not None and current[0].zone is None
    assert "the machine is stopped" in current[0].standard
    snap = {"channels": [{"asset": "press-7", "sensor": "m1", "channel": "z",
                          "value": view.value, "zone": None, "active_level": 1,
                          "stopped": True}]}  # fmt: skip
    assert 'zone="stopped"' in render_metrics(snap).decode()


def test_a_slowed_machine_with_its_acceleration_rising_is_analysed_not_stopped(
    tmp_path: Path,
) -> None:
    """Before: a machine slowed down on its VFD (velocity RMS 15 % of its running baseline)
    whose bearing's acceleration rose to 5x its baseline was taken for a stopped machine:
    200 readings, no trend alert, status 'stopped'. Velocity alone says stopped; the
    acceleration says it runs, and worse than when healthy: the reading is analysed, and
    the health index raises its degradation onset. A real stop (both low) stays a stop."""
    m = Monitor(press_config(tmp_path, baseline_readings=20))
    records = []

    def run(n: int, velocity: float, accel: float, start: int) -> None:
        for i in range(start, start + n):
            wobble = 1.0 + 0.03 * ((i * 7) % 5 - 2) / 2
            feats = {"velocity_rms_mm_s": velocity * wobble, "accel_rms_g": accel * wobble}
            at = T0 + timedelta(seconds=60.0 * i)
            records.extend(
                (d.kind, d.state) for d in m.update(Reading("m1", "z", at, feats)).drafts
            )

    run(40, 1.0, 0.05, 0)  # healthy at full speed: the baseline is learned
    run(30, 0.02, 0.001, 40)  # stopped: no alert
    assert records == [] and m.stopped_total == 30
    run(200, 0.15, 0.25, 70)  # slowed, bearing failing
    assert ("trend", "raised") in records
    assert m.stopped_total == 30
    assert not m.views()[0].stopped
