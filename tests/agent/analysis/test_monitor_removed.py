"""A sensor that leaves its asset (a reload removes it or moves it, or a restart finds its
state with a configuration that no longer has it there) closes the alerts it had open.

Real Monitor, SensorFaultTracker and SQLite store; the backend's case grouping
(simulators.cases) reads the stored records, as the backend would.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.analysis.monitor import Monitor, Update
from agent.config import Config
from agent.sensor_faults import SensorFaultTracker, SensorHealth
from agent.store import Outbox
from drivers.reading import Reading
from simulators.backend_config import BackendConfig
from simulators.cases import build_portfolio
from tests.agent._configs import press_config

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[3] / "agent" / "schemas" / "alert-v1.json").read_text()
)
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
KINDS = {"severity", "trend", "sensor_fault"}


def config(tmp_path: Path, m1_on: str | None) -> Config:
    """press-7 and fan-3; m2 on press-7, m1 on `m1_on` (None: not configured)."""
    data = press_config(tmp_path, baseline_readings=10, debounce=2).model_dump(
        mode="json", by_alias=True
    )
    data["assets"].append({**data["assets"][0], "id": "fan-3", "name": "Fan 3", "tier": 2})
    m1 = data["sensors"][0]
    m2 = {**m1, "id": "m2", "modbus": {**m1["modbus"], "device_id": 2}}
    data["sensors"] = [m2] + ([{**m1, "asset": m1_on}] if m1_on else [])
    return Config.model_validate(data)


async def store(ob: Outbox, *updates: Update) -> None:
    for u in updates:
        await ob.append(u.drafts, u.state)


async def records(ob: Outbox) -> list[dict[str, Any]]:
    return [r["record"] for r in reversed(await ob.recent(1000))]


async def raise_on_press(tmp_path: Path, ob: Outbox) -> tuple[Monitor, SensorFaultTracker]:
    """m1 on press-7 raises zone C (and, over its baseline, a trend) on channel z, then its
    poller's breaker opens."""
    cfg = config(tmp_path, "press-7")
    m, faults = Monitor(cfg), SensorFaultTracker(cfg, breaker_failures=3)
    for i, v in enumerate([1.0] * 10 + [3.1] * 2):
        r = Reading("m1", "z", T0 + timedelta(seconds=i), {"velocity_rms_mm_s": v})
        await store(ob, m.update(r))
    down = SensorHealth("m1", "backoff", 3, "timeout after 0.5 s", T0)
    await store(ob, faults.update(down, T0 + timedelta(seconds=13)))
    opened = {(r["kind"], r["state"]) for r in await records(ob)}
    assert opened == {(k, "raised") for k in KINDS}
    return m, faults


def closed_on_press(recs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for rec in recs:
        jsonschema.validate(rec, SCHEMA)
    return {
        r["kind"]: r
        for r in recs
        if r["state"] == "cleared" and r["asset"]["id"] == "press-7" and r["sensor"]["id"] == "m1"
    }


def press_cases(recs: list[dict[str, Any]]) -> list[str]:
    cases = build_portfolio(recs, [], BackendConfig()).cases
    return [c["state"] for c in cases if c["asset"]["id"] == "press-7"]


@pytest.mark.parametrize(
    ("m1_on", "why"),
    [(None, "sensor removed from the configuration"), ("fan-3", "sensor moved to asset fan-3")],
    ids=["removed", "moved"],
)
async def test_a_reload_closes_what_the_sensor_left_open(
    tmp_path: Path, m1_on: str | None, why: str
) -> None:
    async with Outbox(tmp_path / "o.db", gateway_id="gw-t", max_bytes=1 << 30) as ob:
        m, faults = await raise_on_press(tmp_path, ob)
        assert press_cases(await records(ob)) == ["open"]
        new = config(tmp_path, m1_on)
        await store(ob, m.reconfigure(new), faults.reconfigure(new))
        recs = await records(ob)
        closed = closed_on_press(recs)
        assert set(closed) == KINDS
        for rec in closed.values():
            assert why in rec["evidence"]["reason"]
            assert "by a reload" in rec["evidence"]["reason"]
            assert rec["sensor"]["channel"] == ("all" if rec["kind"] == "sensor_fault" else "z")
        assert press_cases(recs) == ["cleared"]  # the backend's case resolves
        state = await ob.load_state()
        assert json.loads(state["press-7/m1/z/severity"])["active"] == 0
        assert json.loads(state["press-7/m1/z/trend"])["active"] == 0
        assert json.loads(state["press-7/m1/all/sensor_fault"])["raised"] is False
        # Nothing closes twice: a later reload finds nothing open there.
        await store(ob, m.reconfigure(new), faults.reconfigure(new))
        assert len(await records(ob)) == len(recs)


@pytest.mark.parametrize(
    ("m1_on", "why"),
    [(None, "sensor removed from the configuration"), ("fan-3", "sensor moved to asset fan-3")],
    ids=["removed", "moved"],
)
async def test_a_restart_with_an_edited_configuration_closes_them(
    tmp_path: Path, m1_on: str | None, why: str
) -> None:
    async with Outbox(tmp_path / "o.db", gateway_id="gw-t", max_bytes=1 << 30) as ob:
        await raise_on_press(tmp_path, ob)
    # Restart with the edited file: the persisted state is all the agent knows.
    async with Outbox(tmp_path / "o.db", gateway_id="gw-t", max_bytes=1 << 30) as ob:
        new, saved, at = config(tmp_path, m1_on), await ob.load_state(), T0 + timedelta(hours=1)
        m, faults = Monitor(new, state=saved), SensorFaultTracker(new, state=saved)
        await store(ob, m.close_unconfigured(at), faults.close_unconfigured(at))
        recs = await records(ob)
        closed = closed_on_press(recs)
        assert set(closed) == KINDS
        for rec in closed.values():
            assert why in rec["evidence"]["reason"] and "at start" in rec["evidence"]["reason"]
            assert rec["detected_at"] == "2026-11-23T09:00:00.000Z"
        assert press_cases(recs) == ["cleared"]
        state = await ob.load_state()
    async with Outbox(tmp_path / "o.db", gateway_id="gw-t", max_bytes=1 << 30) as ob:
        m, faults = Monitor(new, state=state), SensorFaultTracker(new, state=state)
        assert not m.close_unconfigured(at).drafts and not faults.close_unconfigured(at).drafts


async def test_a_channel_dropped_from_the_sensor_closes_only_its_own(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db", gateway_id="gw-t", max_bytes=1 << 30) as ob:
        m, faults = await raise_on_press(tmp_path, ob)
        data = config(tmp_path, "press-7").model_dump(mode="json", by_alias=True)
        data["sensors"][1]["channels"] = ["x"]
        new = Config.model_validate(data)
        await store(ob, m.reconfigure(new), faults.reconfigure(new))
        closed = closed_on_press(await records(ob))
        assert set(closed) == {"severity", "trend"}  # m1 still answers: its fault stays
        reason = "channel z removed from the sensor's configuration by a reload"
        assert all(r["evidence"]["reason"] == reason for r in closed.values())


async def test_a_restart_with_the_same_configuration_closes_nothing(tmp_path: Path) -> None:
    """The common case: the agent restarts (an update, a power cut) with the file it ran
    with; every alert it had open stays open, and the next reading continues its episode."""
    async with Outbox(tmp_path / "o.db", gateway_id="gw-t", max_bytes=1 << 30) as ob:
        await raise_on_press(tmp_path, ob)
        before = await records(ob)
    async with Outbox(tmp_path / "o.db", gateway_id="gw-t", max_bytes=1 << 30) as ob:
        same, saved = config(tmp_path, "press-7"), await ob.load_state()
        m, faults = Monitor(same, state=saved), SensorFaultTracker(same, state=saved)
        at = T0 + timedelta(hours=1)
        assert not m.close_unconfigured(at).drafts
        assert not faults.close_unconfigured(at).drafts
        r = Reading("m1", "z", at, {"velocity_rms_mm_s": 3.1})
        assert not m.update(r).drafts  # still zone C: the same episode, nothing new
        assert len(await records(ob)) == len(before)
