"""A reload that changes how a sensor is written but not what it measures keeps its open
episodes (no clear, no new raise); one that changes what it measures closes them, saying
why (agent.analysis.basis). Real Monitor and SQLite store."""

from __future__ import annotations

from pathlib import Path

from agent.analysis.monitor import Monitor
from tests.agent.analysis.test_monitor_reconfigure import degraded_config as config
from tests.agent.analysis.test_monitor_reconfigure import vib
from tests.agent.analysis.test_monitor_restart_basis import (
    AT,
    _digests,
    _from,
    _profile_file,
    store,
    store_at,
)


async def _open_episodes(tmp_path: Path, profile: str, folder: Path) -> Monitor:
    """Baseline learned through `profile`, then zone C and a degraded machine: the severity
    and trend alerts of m1/z are open."""
    cfg = config(tmp_path, {"sensors.0.modbus.profile": profile})
    async with store_at(tmp_path) as ob:
        m = Monitor(cfg, digests=_digests(cfg, folder))
        for i in range(32):
            await store(ob, m.update(vib(i, 1.0, 1.0) if i < 12 else vib(i, 2.0, 5.0)))
    ch = m._channels[("m1", "z")]
    assert ch.severity.active and ch.trend.active
    return m


async def test_a_profile_renamed_with_the_same_content_keeps_the_open_episodes(
    tmp_path: Path,
) -> None:
    """Before: plant-vt copied unchanged as plant-vt-2 and the sensor pointed at the copy
    closed its open severity and trend alerts ('modbus.profile plant-vt -> modbus.profile
    plant-vt-2'), and the same fault was raised again as new episodes. A copy that reads
    other values (velocity scale x10) still closes them, saying so."""
    folder = _profile_file(tmp_path / "profiles")
    (folder / "plant-vt-2.yaml").write_text(
        (folder / "plant-vt.yaml").read_text().replace("name: plant-vt", "name: plant-vt-2")
    )
    m = await _open_episodes(tmp_path, "plant-vt", folder)
    ch = m._channels[("m1", "z")]
    opened = (ch.severity.raised_at, ch.trend.raised_at)
    renamed = config(tmp_path, {"sensors.0.modbus.profile": "plant-vt-2"})
    assert m.reconfigure(renamed, AT, digests=_digests(renamed, folder)).drafts == []
    ch = m._channels[("m1", "z")]
    assert (ch.severity.raised_at, ch.trend.raised_at) == opened and ch.hi.ready
    assert ("severity", "raised") not in _from(m, 0, 5, 5.0)  # the same episode goes on

    (folder / "plant-vt-3.yaml").write_text(
        (folder / "plant-vt.yaml")
        .read_text()
        .replace("name: plant-vt", "name: plant-vt-3")
        .replace("scale: 0.001, unit: mm/s", "scale: 0.01, unit: mm/s")
    )
    other = config(tmp_path, {"sensors.0.modbus.profile": "plant-vt-3"})
    drafts = m.reconfigure(other, AT, digests=_digests(other, folder)).drafts
    assert sorted((d.kind, d.state) for d in drafts) == [
        ("severity", "cleared"),
        ("trend", "cleared"),
    ]
    assert all(
        "modbus.profile plant-vt-2 -> modbus.profile plant-vt-3" in d.evidence["reason"]
        for d in drafts
    )
