"""A reload's new configuration reaches the running monitor without losing what it learned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

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


def two_assets(tmp_path: Path, on: str, *, m2: bool = False) -> Config:
    """press-7 and fan-3, sensor m1 on `on` (and m2 on press-7)."""
    data = cfg(tmp_path).model_dump(mode="json", by_alias=True)
    fan = {**data["assets"][0], "id": "fan-3", "name": "Fan 3"}
    data["assets"].append(fan)
    data["sensors"][0]["asset"] = on
    if m2:
        other = {**data["sensors"][0], "id": "m2", "asset": "press-7"}
        other["modbus"] = {**other["modbus"], "device_id": 2}
        data["sensors"].append(other)
    return Config.model_validate(data)


@pytest.mark.parametrize("m2", [False, True], ids=["press-7 left bare", "press-7 keeps m2"])
def test_a_repair_of_the_asset_a_sensor_left_leaves_its_new_asset_alone(
    tmp_path: Path, m2: bool
) -> None:
    """m1 raised zone C on press-7, then a reload moved it to fan-3 where it raised zone C
    again. The reload closed press-7's alerts (no reading of m1 could clear them there), so
    a repair of press-7 has none of m1's left to close; fan-3's stay open (no second
    "raised" for the same condition), and its learned baseline stays."""
    m = Monitor(two_assets(tmp_path, "press-7", m2=m2))
    on_press = feed(m, [1.0] * 10 + [3.1] * 2, 0)
    assert ("severity", "raised") in on_press
    moved = m.reconfigure(two_assets(tmp_path, "fan-3", m2=m2)).drafts
    assert sorted((d.asset.id, d.sensor.id, d.kind, d.state) for d in moved) == sorted(
        ("press-7", "m1", kind, "cleared") for kind, state in on_press if state == "raised"
    )
    assert feed(m, [1.0] * 10 + [3.1] * 2, 12).count(("severity", "raised")) == 1
    (draft,) = m.maintenance("press-7", T0 + timedelta(seconds=30), "bearing replaced").drafts
    assert draft.asset.id == "press-7"
    assert draft.evidence["closed_alerts"] == []
    assert ("severity", "raised") not in feed(m, [3.2] * 3, 40)  # fan-3's is still open
    assert health_index(m) is not None  # fan-3's baseline was not reset
