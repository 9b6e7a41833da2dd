"""A reload's new configuration reaches the running monitor without losing what it learned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.analysis.monitor import Monitor
from agent.config import Config
from drivers.reading import Reading
from tests.agent._configs import press_config

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def cfg(tmp_path: Path, **machine: Any) -> Config:
    data = press_config(tmp_path, baseline_readings=10, debounce=2).model_dump(
        mode="json", by_alias=True
    )
    data["assets"][0]["machine"].update(machine)
    return Config.model_validate(data)


def feed(m: Monitor, values: list[float], start: int) -> list[tuple[str, str]]:
    out = []
    for i, v in enumerate(values, start=start):
        r = Reading("m1", "z", T0 + timedelta(seconds=i),
                    {"velocity_rms_mm_s": v, "kurtosis": 3.0 + 0.01 * (i % 3)})  # fmt: skip
        out += [(d.kind, d.state) for d in m.update(r).drafts]
    return out


def health_index(m: Monitor) -> float | None:
    return next(v.health_index for v in m.views() if v.sensor_id == "m1")


def test_new_thresholds_apply_and_the_baseline_is_kept(tmp_path: Path) -> None:
    m = Monitor(cfg(tmp_path))
    feed(m, [1.0] * 12, 0)
    assert health_index(m) is not None  # learned
    limits = {"standard": "limits", "limits": {"ab": 2.0, "bc": 5.0, "cd": 9.0}, "rpm": 1480}
    data = cfg(tmp_path).model_dump(mode="json", by_alias=True)
    data["assets"][0]["machine"] = limits
    m.reconfigure(Config.model_validate(data))
    # 3.1 mm/s was zone C (B/C 2.8) and is zone B under the new limits: no alert.
    assert ("severity", "raised") not in feed(m, [3.1] * 3, 12)
    assert health_index(m) is not None  # not back to learning


def test_a_new_speed_relearns_but_keeps_the_open_alert(tmp_path: Path) -> None:
    m = Monitor(cfg(tmp_path))
    assert feed(m, [1.0] * 10 + [3.1] * 2, 0).count(("severity", "raised")) == 1
    update = m.reconfigure(cfg(tmp_path, rpm=990))
    assert "press-7/m1/z/model" in update.state  # the reset model is stored
    drafts = feed(m, [3.2] * 3, 12)
    assert health_index(m) is None  # learning again from the new speed
    assert ("severity", "raised") not in drafts  # still the same open alert


def test_a_removed_sensor_is_saved_and_resumes_when_it_returns(tmp_path: Path) -> None:
    m = Monitor(cfg(tmp_path))
    feed(m, [1.0] * 12, 0)
    data = cfg(tmp_path).model_dump(mode="json", by_alias=True)
    data["sensors"][0]["id"] = "m2"
    gone = m.reconfigure(Config.model_validate(data))
    assert not m.knows("m1") and not m.views()
    assert {"press-7/m1/z/severity", "press-7/m1/z/trend", "press-7/m1/z/model"} <= set(gone.state)
    m.reconfigure(cfg(tmp_path))
    feed(m, [1.0], 12)
    assert health_index(m) is not None  # resumed, not relearned
