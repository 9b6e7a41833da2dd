"""What a reload would change, decided before anything is touched (agent.reload_plan)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.reload_plan import ReloadPlan, plan_reload
from drivers.profiles import ProfileLibrary
from tests.agent._configs import press_config

LIBRARY = ProfileLibrary.load(None)


def base(tmp_path: Path) -> dict[str, Any]:
    """press-7 with m1 (own TCP endpoint) and m2, m3 on a gateway bus; one http uplink."""
    data = press_config(tmp_path).model_dump(mode="json", by_alias=True, exclude_none=True)
    data["buses"] = [{"id": "line-1", "tcp": {"host": "127.0.0.1", "port": 5021}}]
    data["sensors"] += [
        {"id": f"m{n}", "asset": "press-7", "modbus": {"bus": "line-1", "device_id": n}}
        for n in (2, 3)
    ]
    data["uplinks"] = [{"name": "portfolio", "http": {"url": "https://p.example/v1/alerts",
                                                      "token": "t1"}}]  # fmt: skip
    return data


def plan(old: dict[str, Any], new: dict[str, Any]) -> ReloadPlan:
    return plan_reload(Config.model_validate(old), Config.model_validate(new), LIBRARY, LIBRARY)


def test_the_same_file_changes_nothing(tmp_path: Path) -> None:
    p = plan(base(tmp_path), base(tmp_path))
    assert p.empty and not p.refused and not (p.start or p.stop or p.uplinks_start)


def test_a_new_gateway_id_or_store_path_refuses_the_whole_reload(tmp_path: Path) -> None:
    new = base(tmp_path)
    new["gateway"]["id"] = "gw-other"
    new["store"]["path"] = str(tmp_path / "elsewhere.db")
    new["sensors"].pop()  # would be applied, but nothing is when anything is refused
    p = plan(base(tmp_path), new)
    assert [r.split(" ", 1)[0] for r in p.refused] == ["gateway.id", "store.path"]
    assert all("systemctl restart edge-agent" in r for r in p.refused)
    assert not (p.stop or p.start or p.changes)


def test_sensors_by_id_transport_restarts_analysis_alone_polls_on(tmp_path: Path) -> None:
    new = base(tmp_path)
    new["sensors"][0]["modbus"]["port"] = 5030  # m1: how it is read
    new["assets"][0]["alerting"] = {"debounce": 5}  # every sensor of press-7: analysis only
    new["sensors"].append({"id": "m9", "asset": "press-7", "modbus": {"host": "127.0.0.1"}})
    del new["sensors"][2]  # m3
    p = plan(base(tmp_path), new)
    assert (sorted(p.stop), sorted(p.start), p.reanalyse) == (["m1", "m3"], ["m1", "m9"], ["m2"])
    lines = "\n".join(p.changes)
    assert "sensor m1 restarted" in lines and "sensor m3 removed" in lines
    assert (
        "sensor m2 polls on; asset press-7's new settings apply, its learned baseline is kept"
        in lines
    )


def test_a_changed_bus_is_rebuilt_with_all_its_sensors(tmp_path: Path) -> None:
    new = base(tmp_path)
    new["buses"][0]["tcp"]["settle_s"] = 0.2
    p = plan(base(tmp_path), new)
    assert p.buses_retired == ["line-1"]
    assert sorted(p.stop) == sorted(p.start) == ["m2", "m3"]  # m1 has its own endpoint


def test_speed_change_relearns_the_baseline(tmp_path: Path) -> None:
    new = base(tmp_path)
    new["assets"][0]["machine"]["rpm"] = 990
    lines = "\n".join(plan(base(tmp_path), new).changes)
    assert (
        "its baseline on asset press-7 is relearned (machine.rpm 1480 -> 990); its open "
        "trend alerts are cleared by the reload, saying why" in lines
    )


def test_a_new_failure_metric_keeps_the_baseline(tmp_path: Path) -> None:
    """Before, the plan said the baseline is relearned (and the monitor did it)."""
    new = base(tmp_path)
    new["assets"][0]["failure"] = {"metric": "accel_rms_g", "threshold": 2.0}
    lines = "\n".join(plan(base(tmp_path), new).changes)
    assert (
        "its time-to-failure history on asset press-7 starts again (failure.metric "
        "velocity_rms_mm_s -> accel_rms_g); its learned baseline and onset are kept" in lines
    )
    assert "relearned" not in lines


def test_uplinks_by_name_a_rotated_token_rebuilds_one(tmp_path: Path) -> None:
    old = base(tmp_path)
    old["uplinks"].append({"name": "broker", "mqtt": {"host": "127.0.0.1", "tls": None}})
    new = copy.deepcopy(old)
    new["uplinks"][0]["http"]["token"] = "t2"
    p = plan(old, new)
    assert (p.uplinks_stop, p.uplinks_start) == (["portfolio"], ["portfolio"])
    assert "delivery position in the store is kept" in p.changes[0]
    assert "t2" not in "".join(p.changes)  # never a secret in the log


def test_require_subscriber_turned_off_rebuilds_that_mqtt_uplink_only(tmp_path: Path) -> None:
    old = base(tmp_path)
    old["uplinks"].append({"name": "broker", "mqtt": {"host": "127.0.0.1", "tls": None}})
    new = copy.deepcopy(old)
    new["uplinks"][1]["mqtt"]["require_subscriber"] = False
    p = plan(old, new)
    assert (p.uplinks_stop, p.uplinks_start) == (["broker"], ["broker"])
    assert not (p.start or p.stop or p.refused or p.mqtt)


def test_uplinks_removed_or_renamed_say_what_they_leave_in_the_store(tmp_path: Path) -> None:
    old = base(tmp_path)
    old["uplinks"].append({"name": "broker", "mqtt": {"host": "127.0.0.1", "tls": None}})
    new = copy.deepcopy(old)
    new["uplinks"][0]["name"] = "main"  # same settings under a new name
    del new["uplinks"][1]
    p = plan(old, new)
    assert p.uplinks_gone == {"portfolio": "main", "broker": None}
    assert (sorted(p.uplinks_stop), p.uplinks_start) == (["broker", "portfolio"], ["main"])
    assert [c.split(":")[0] for c in p.changes] == [
        "uplink portfolio renamed main",
        "uplink broker removed",
    ]
    assert "sent when an uplink named broker is configured again" in p.changes[1]
    p.count_left({"portfolio": 0, "broker": 7})  # the store's count as it unregisters them
    assert "the 7 item(s) it had not received stay in the store" in p.changes[1]
    assert "the 0 item(s)" in p.changes[0]


def test_naming_the_single_unnamed_uplink_by_its_kind_changes_nothing(tmp_path: Path) -> None:
    old = base(tmp_path)
    del old["uplinks"][0]["name"]  # named http by its kind
    new = copy.deepcopy(old)
    new["uplinks"][0]["name"] = "http"  # as the check asks when a second one is added
    p = plan(old, new)
    assert p.empty and not (p.uplinks_stop or p.uplinks_start)


def test_control_socket_needs_a_restart_health_moves(tmp_path: Path) -> None:
    new = base(tmp_path)
    new["control"] = {"socket": str(tmp_path / "other.sock")}
    new["health"] = {"port": 9999}
    p = plan(base(tmp_path), new)
    assert p.health and p.changes == ["health endpoint moves to 127.0.0.1:9999"]
    assert len(p.needs_restart) == 1 and "control socket" in p.needs_restart[0]


def test_another_device_at_the_sensor_id_relearns_its_baseline(tmp_path: Path) -> None:
    """Before, the plan (and the monitor) kept the old device's baseline for a new one."""
    new = base(tmp_path)
    new["sensors"][1]["modbus"]["device_id"] = 9  # m2: another device on line-1
    lines = "\n".join(plan(base(tmp_path), new).changes)
    assert (
        "sensor m2 restarted: how it is read changed; its baseline on asset press-7 is "
        "relearned (sensor replaced: modbus bus line-1 device_id 2 -> modbus bus line-1 "
        "device_id 9); its open severity and trend alerts are cleared by the reload, saying why"
        in lines
    )


def test_a_profile_file_edited_under_the_same_name_relearns_the_baseline(tmp_path: Path) -> None:
    """Before: the pollers were rebuilt with the corrected scale (values x10) while "its
    analysis state is kept": every reading judged against a baseline of the old values."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    shipped = Path(__file__).resolve().parents[2] / "drivers" / "profiles" / "banner-qm30vt2.yaml"
    text = shipped.read_text().replace("name: banner-qm30vt2", "name: plant-vt")
    data = base(tmp_path)
    data["profiles_dir"] = str(folder)
    for s in data["sensors"]:
        s["modbus"]["profile"] = "plant-vt"
    (folder / "plant-vt.yaml").write_text(text)
    before = ProfileLibrary.load(folder)
    fixed = text.replace("scale: 0.001, unit: mm/s", "scale: 0.01, unit: mm/s")
    (folder / "plant-vt.yaml").write_text(fixed)
    after = ProfileLibrary.load(folder)
    cfg = Config.model_validate(data)
    p = plan_reload(cfg, cfg, before, after)
    assert sorted(p.start) == ["m1", "m2", "m3"]
    assert all(
        "its baseline on asset press-7 is relearned (modbus.profile plant-vt edited: it reads "
        "other values)" in line
        for line in p.changes
    ), p.changes
    # Its description edited only: the pollers are rebuilt, the baseline is kept.
    (folder / "plant-vt.yaml").write_text(fixed.replace("model: Banner QM30VT2", "model: VT2"))
    p = plan_reload(cfg, cfg, after, ProfileLibrary.load(folder))
    assert sorted(p.start) == ["m1", "m2", "m3"]
    assert all(line.endswith("its analysis state is kept") for line in p.changes), p.changes


def test_a_host_name_rewritten_as_an_address_is_said_to_be_unresolved(tmp_path: Path) -> None:
    """A device configured by its DNS name and then by its IP address counts as another
    (names are not resolved: DNS and DHCP move); the line said 'sensor replaced' alone,
    to an integrator who had only rewritten the host. Two addresses need no such word."""
    lines = []
    for before, after in (("vt-press7.example", "10.0.0.5"), ("10.0.0.4", "10.0.0.5")):
        old, new = base(tmp_path), base(tmp_path)
        old["sensors"][0]["modbus"]["host"] = before
        new["sensors"][0]["modbus"]["host"] = after
        (line,) = plan(old, new).changes
        lines.append(line)
    assert (
        "sensor replaced: modbus tcp vt-press7.example:5020 device_id 1 -> modbus tcp "
        "10.0.0.5:5020 device_id 1 (host names are not resolved: one device under its name "
        "and its address counts as two)" in lines[0]
    ), lines[0]
    assert "not resolved" not in lines[1] and "sensor replaced" in lines[1]
