"""A reload that changes how a sensor is written but not what it measures keeps its open
episodes (no clear, no new raise); one that changes what it measures closes them, saying
why (agent.analysis.basis). Real Monitor and SQLite store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.analysis.basis import Resolved, source_digests
from agent.analysis.monitor import Monitor
from agent.config import Config
from agent.reload_plan import plan_reload
from drivers.profiles import ProfileLibrary
from tests.agent.analysis.test_monitor_reconfigure import degraded_config as config
from tests.agent.analysis.test_monitor_reconfigure import vib
from tests.agent.analysis.test_monitor_restart_basis import (
    AT,
    ROOT,
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


RESOLVED = {"plc-7.plant": frozenset({"10.0.0.21"})}  # as agent.host_names looked it up


async def restart(tmp_path: Path, cfg: Config, resolved: Resolved) -> tuple[Monitor, list[Any]]:
    """A new process on the saved state with `cfg`, its host names looked up (as
    agent.runtime does): the monitor and the records its start stored."""
    async with store_at(tmp_path) as ob:
        m = Monitor(cfg, state=await ob.load_state(), resolved=resolved)
        return m, await store(ob, m.close_unconfigured(AT))


async def _episodes_by_name(tmp_path: Path, by_name: Any) -> tuple[Monitor, tuple[Any, Any]]:
    """A Monitor of the device written by its name (plc-7.plant) whose severity and trend
    episodes are open, and when each was raised."""
    async with store_at(tmp_path) as ob:
        m = Monitor(by_name)
        for i in range(32):
            await store(ob, m.update(vib(i, 1.0, 1.0) if i < 12 else vib(i, 2.0, 5.0)))
    ch = m._channels[("m1", "z")]
    opened = (ch.severity.raised_at, ch.trend.raised_at)
    assert all(opened)
    return m, opened


async def test_a_device_by_its_name_then_its_address_keeps_the_open_episodes(
    tmp_path: Path,
) -> None:
    """Before: host plc-7.plant rewritten as 10.0.0.21, the address it resolves to, closed
    the open severity and trend alerts as a replaced sensor, at a reload and at a restart
    with the file edited while stopped. Another address still closes them, saying what the
    name resolves to."""
    by_name = config(tmp_path, {"sensors.0.modbus.host": "plc-7.plant"})
    m, opened = await _episodes_by_name(tmp_path, by_name)
    by_address = config(tmp_path, {"sensors.0.modbus.host": "10.0.0.21"})
    # At a restart with the file edited while the agent was stopped.
    restarted, recs = await restart(tmp_path, by_address, resolved=RESOLVED)
    assert recs == []
    assert ("severity", "raised") not in _from(restarted, 0, 5, 5.0)
    # At a live reload, and back to the name.
    assert m.reconfigure(by_address, AT, resolved=RESOLVED).drafts == []
    assert m.reconfigure(by_name, AT, resolved=RESOLVED).drafts == []
    ch = m._channels[("m1", "z")]
    assert (ch.severity.raised_at, ch.trend.raised_at) == opened and ch.hi.ready
    other = config(tmp_path, {"sensors.0.modbus.host": "10.0.0.22"})
    drafts = m.reconfigure(other, AT, resolved=RESOLVED).drafts
    assert sorted(d.kind for d in drafts) == ["severity", "trend"]
    assert all("(plc-7.plant resolves to 10.0.0.21)" in d.evidence["reason"] for d in drafts)


SAME_MEASUREMENT = {
    "IPv6 loopback": {"sensors.0.modbus.host": "::1"},
    "name with a trailing dot": {"sensors.0.modbus.host": "LocalHost."},
    "poll interval": {"sensors.0.poll_interval_s": 2.0},
    "timeout": {"sensors.0.modbus.timeout_s": 0.2},
    "asset display name": {"assets.0.name": "Press 7 main motor"},
    "thresholds": {"assets.0.alerting.debounce": 4},
}


@pytest.mark.parametrize("edit", SAME_MEASUREMENT.values(), ids=SAME_MEASUREMENT)
async def test_a_reload_that_measures_the_same_keeps_every_open_episode(
    tmp_path: Path, edit: dict[str, Any]
) -> None:
    """What the sensor measures is unchanged: the open severity and trend episodes go on,
    no clear and no new raise, and the reload's line says the analysis state is kept."""
    m = await _open_episodes(tmp_path, "banner-qm30vt2", ROOT / "drivers" / "profiles")
    ch = m._channels[("m1", "z")]
    opened = (ch.severity.raised_at, ch.trend.raised_at)
    old = config(tmp_path, {"sensors.0.modbus.profile": "banner-qm30vt2"})
    new = config(tmp_path, {"sensors.0.modbus.profile": "banner-qm30vt2", **edit})
    library = ProfileLibrary.load(None)
    lines = plan_reload(old, new, library, library).changes
    assert not any("relearned" in ln or "cleared" in ln for ln in lines), lines
    assert m.reconfigure(new, AT, digests=source_digests(new, library)).drafts == []
    ch = m._channels[("m1", "z")]
    assert (ch.severity.raised_at, ch.trend.raised_at) == opened and ch.hi.ready
    assert ("severity", "raised") not in _from(m, 0, 5, 5.0)


async def test_a_name_that_did_not_resolve_keeps_the_open_episodes(tmp_path: Path) -> None:
    """Before: with DNS down or slow (plc-7.plant not answered within the lookup's 2 s),
    the device rewritten from its name to its address had its open severity and trend
    alerts closed as a replaced sensor ('plc-7.plant did not resolve') and raised again as
    new episodes: on a bad DNS day, every rewritten device's fault twice at the backend.
    Unknown is no replacement: kept, at a reload and at a restart."""
    by_name = config(tmp_path, {"sensors.0.modbus.host": "plc-7.plant"})
    m, opened = await _episodes_by_name(tmp_path, by_name)
    by_address = config(tmp_path, {"sensors.0.modbus.host": "10.0.0.21"})
    restarted, recs = await restart(tmp_path, by_address, resolved={})
    assert recs == []
    assert ("severity", "raised") not in _from(restarted, 0, 5, 5.0)
    assert m.reconfigure(by_address, AT, resolved={}).drafts == []
    ch = m._channels[("m1", "z")]
    assert (ch.severity.raised_at, ch.trend.raised_at) == opened and ch.hi.ready


async def test_only_a_host_written_otherwise_is_looked_up(tmp_path: Path) -> None:
    """Before: every Modbus host name of the configuration and of the saved models was
    looked up at each start and reload, so with the DNS server down every start of a
    gateway whose devices are written by name waited the lookup's 2 s (and logged each
    name as not resolved), though no device was rewritten. Now only the names of a
    device whose host alone changed between its saved or running basis and the file."""
    by_name = config(tmp_path, {"sensors.0.modbus.host": "plc-7.plant"})
    async with store_at(tmp_path) as ob:
        m = Monitor(by_name)
        for i in range(32):
            await store(ob, m.update(vib(i, 1.0, 1.0) if i < 12 else vib(i, 2.0, 5.0)))
        saved = await ob.load_state()
    by_address = config(tmp_path, {"sensors.0.modbus.host": "10.0.0.21"})
    assert Monitor(by_name, state=saved).host_names() == set()
    assert Monitor(by_address, state=saved).host_names() == {"plc-7.plant"}
    assert m.host_names(by_name) == set()
    assert m.host_names(by_address) == {"plc-7.plant"}
    other_port = config(tmp_path, {"sensors.0.modbus.port": 5021})
    assert m.host_names(other_port) == set()  # another device whatever the name says
