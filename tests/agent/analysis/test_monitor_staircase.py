"""A machine whose vibration rises 1.5x every 4 hours is degrading: with a reliability prior
the trend alert escalates (time to failure under the planning horizon) before the velocity
reaches ISO zone C, not only with the severity alert at zone C, four hours from zone D."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.analysis.monitor import Monitor
from agent.config import Config
from drivers.reading import Reading
from tests.agent.analysis.test_monitor_step import PRIOR

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
BC = 2.8  # mm/s, ISO 10816-3 group 2 rigid: zone C from here (D from 4.5)


def config(tmp_path: Path) -> Config:
    """Press 7 with a reliability prior (Weibull 20000 h, age 5000 h), 60 s trend bins."""
    machine = {"standard": "iso10816-3", "group": 2, "foundation": "rigid", "rpm": 1480}
    return Config.model_validate(
        {
            "gateway": {"id": "gw-t"},
            "assets": [{"id": "press-7", "tier": 1, "machine": machine, "reliability": PRIOR}],
            "sensors": [{"id": "m1", "asset": "press-7", "modbus": {"host": "127.0.0.1"}}],
            "store": {"path": str(tmp_path / "o.db")},
        }
    )  # fmt: skip


def level(minute: int) -> float:
    """0.8 mm/s, then x1.5 every 4 h from 2 h on: 1.2, 1.8, 2.7 (zone B), 4.05 (C) at 14 h."""
    return 0.8 * 1.5 ** (0 if minute < 120 else (minute - 120) // 240 + 1)


def test_a_staircase_of_1_5x_every_4_h_escalates_before_zone_c(tmp_path: Path) -> None:
    """Before: the estimate, held by the reliability prior at about 3000 h, stood for 1 % of
    its lower bound (hours) after each step, so the trend's growth seen between the steps
    was never asked: the trend escalated at 14 h, with the zone C severity warning."""
    m = Monitor(config(tmp_path))
    rng = random.Random(2)
    seen: list[tuple[int, str, str, float]] = []
    for minute in range(15 * 60):
        v = level(minute) * (1.0 + 0.03 * rng.gauss(0.0, 1.0))
        feats = {"velocity_rms_mm_s": v, "accel_rms_g": 0.05 * v, "hf_accel_rms_g": 0.02 * v,
                 "kurtosis": 3.0}  # fmt: skip
        r = Reading("m1", "z", T0 + timedelta(minutes=minute), feats, mono_s=60.0 * minute)
        seen += [(minute, d.kind, d.state, v) for d in m.update(r).drafts]
    trend = [
        (minute, v) for minute, kind, state, v in seen if (kind, state) == ("trend", "escalated")
    ]
    severity = [minute for minute, kind, _, _ in seen if kind == "severity"]
    assert trend, seen
    minute, v = trend[0]
    assert v < BC and minute < severity[0], seen  # zone B, before any severity alert
