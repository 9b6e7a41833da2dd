"""`edge-agent systemd-dropin`: the service may reach exactly what the configuration names."""

from __future__ import annotations

import grp
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import load_config
from agent.unitgen import DropinError, dropin

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "edge-agent.service"
REVIVE = REPO / "systemd" / "edge-agent-revive.timer"
GROUP = "daemon"  # any group but root's: udev gives serial ports "dialout"
GROUP_GID = grp.getgrnam(GROUP).gr_gid

CONFIG = """\
gateway: {{id: gw-u}}
assets:
  - id: a1
    machine: {{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}}
sensors:
  - {{id: s1, asset: a1, modbus: {{host: 10.0.0.21}}}}
  - {{id: s2, asset: a1, modbus: {{host: 10.0.0.21, device_id: 2}}}}
  - {{id: s3, asset: a1, modbus: {{host: 127.0.0.1, port: 5020}}}}
  - {{id: s4, asset: a1, modbus: {{host: "{sensor_name}"}}}}
uplinks:
  - http: {{url: "https://{uplink}/v1/alerts", token_file: token}}
store: {{path: /var/lib/edge-agent/outbox.db}}
{extra}
"""


def write(tmp_path: Path, *, sensor_name: str = "localhost", uplink: str = "192.0.2.7",
          extra: str = "") -> Path:  # fmt: skip
    (tmp_path / "token").write_text("t0k\n")
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(sensor_name=sensor_name, uplink=uplink, extra=extra))
    return path


def test_allow_list_names_each_address_once(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search plant.local\nnameserver 10.0.0.2\nnameserver 127.0.0.53\n")
    text = dropin(load_config(write(tmp_path)), base=tmp_path, resolv=resolv)
    allowed = re.findall(r"^IPAddressAllow=(.*)$", text, re.M)
    # 10.0.0.21 once for two sensors; loopback is in the unit already; a host name brings
    # the DNS server (not the local stub resolver, which is loopback).
    assert allowed == ["10.0.0.21", "192.0.2.7", "10.0.0.2"]
    assert f"LoadCredential=token:{tmp_path / 'token'}" in text
    assert "SupplementaryGroups" not in text
    assert text.splitlines()[2] == "[Service]"


def test_an_unresolvable_host_writes_nothing(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, sensor_name="sensor-7.invalid"))
    with pytest.raises(DropinError, match=r"cannot resolve sensor-7\.invalid"):
        dropin(config, base=tmp_path)


def test_exposed_health_resets_the_deny_list(tmp_path: Path) -> None:
    extra = "health: {host: 0.0.0.0, expose: true}"
    text = dropin(load_config(write(tmp_path, extra=extra)), base=tmp_path)
    assert "IPAddressDeny=\n" in text and "IPAddressAllow" not in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_unit_with_a_control_group_stays_at_most_1_5(tmp_path: Path) -> None:
    """The worst case: an operators' group (one more group, and chown allowed back)."""
    text = dropin(load_config(write(tmp_path, extra="control: {group: daemon}")), base=tmp_path)
    assert "SupplementaryGroups=daemon\nSystemCallFilter=@chown" in text
    assert _exposure(tmp_path, text) <= 1.5


def _exposure(tmp_path: Path, text: str) -> float:
    """systemd-analyze's rating of the unit with this drop-in."""
    merged = tmp_path / "edge-agent.service"
    # The drop-in's [Service] lines, where systemd would merge them (not under [Install]).
    body = text.replace("[Service]\n", "", 1)
    merged.write_text(UNIT.read_text().replace("\n[Install]", f"\n{body}\n[Install]"))
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(merged)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Unknown key" not in out.stderr, out.stderr
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert m is not None, out.stdout
    return float(m.group(1))


def _settings(path: Path) -> dict[tuple[str, str], list[str]]:
    """A unit file's settings: (section, key) -> its values in order (a key may repeat)."""
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault((section, key), []).append(value)
    return out


def _seconds(span: str) -> float:
    """A systemd time span as these files write it: "5", "30s", "10min"."""
    m = re.fullmatch(r"(\d+)(s|min)?", span)
    assert m is not None, span
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_a_restart_loop_is_bounded_and_the_agent_still_comes_back() -> None:
    """A cause that outlives a restart (the store's disk hung: the agent exits 74 at each
    stop) restarted it every 5 s for ever: systemd's default start limit (5 in 10 s) never
    trips at that pace. Now the loop stops after StartLimitBurst starts, and the revive
    timer (pulled in by the unit, stopped with it) starts the agent again once the limit's
    interval has passed: it never stays down for good. systemd 252 (Debian 12) knows no
    RestartSteps=/RestartMaxDelaySec=, so the unit uses neither."""
    unit, timer = _settings(UNIT), _settings(REVIVE)
    assert unit[("Service", "Restart")] == ["on-failure"]
    restart_s = _seconds(unit[("Service", "RestartSec")][0])
    assert restart_s == 5  # a crash or a watchdog kill is back as soon as before
    burst = int(unit[("Unit", "StartLimitBurst")][0])
    window_s = _seconds(unit[("Unit", "StartLimitIntervalSec")][0])
    # Starts that fail at once come every RestartSec: the limit trips within its interval.
    assert burst * restart_s < window_s
    assert "edge-agent-revive.timer" in " ".join(unit[("Unit", "Wants")]).split()
    assert timer[("Timer", "Unit")] == ["edge-agent.service"]
    assert timer[("Unit", "PartOf")] == ["edge-agent.service"]  # `systemctl stop` holds
    assert ("Install", "WantedBy") not in timer  # it runs only with the agent
    tick_s = _seconds(timer[("Timer", "OnUnitActiveSec")][0])
    # A start refused within the interval is tried again a tick later: down at most about
    # interval + tick after the cause went away, and never for good.
    assert 0 < tick_s <= window_s and window_s + tick_s <= 20 * 60
    assert _seconds(timer[("Timer", "OnActiveSec")][0]) == tick_s
    known_to_252 = {key for _, key in unit} & {"RestartSteps", "RestartMaxDelaySec"}
    assert known_to_252 == set()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_the_unit_and_its_revive_timer_verify_without_a_word(tmp_path: Path) -> None:
    """`systemd-analyze verify` (this machine's systemd) takes both files as they are: no
    unknown key, no bad value, the timer's unit found. The agent's path points at a stub,
    as verify checks that the commands are executable."""
    stub = tmp_path / "edge-agent"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    for src in (UNIT, REVIVE):
        text = src.read_text().replace("/opt/edge-agent/bin/edge-agent", str(stub))
        (tmp_path / src.name).write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / UNIT.name), str(tmp_path / REVIVE.name)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_a_cmms_uplink_is_allowed_with_its_token(tmp_path: Path) -> None:
    (tmp_path / "cmms").mkdir()
    (tmp_path / "cmms" / "cmms-token").write_text("c0k\n")
    extra = (
        "  - cmms: {url: 'https://192.0.2.9:8443/api/v1/work-orders', "
        "token_file: cmms/cmms-token}\n"
    )
    path = write(tmp_path)
    path.write_text(path.read_text().replace("store:", extra + "store:", 1))
    text = dropin(load_config(path), base=tmp_path, resolv=tmp_path / "none")
    allowed = re.findall(r"^IPAddressAllow=(.*)$", text, re.M)
    assert allowed == ["10.0.0.21", "192.0.2.7", "192.0.2.9"]
    assert "# uplink 1 (cmms)\nIPAddressAllow=192.0.2.9\n" in text
    assert f"LoadCredential=cmms-token:{tmp_path / 'cmms' / 'cmms-token'}" in text
    assert "# uplink 1 (cmms) token: the service reads it as $CREDENTIALS_DIRECTORY/cmms-token" in (
        text
    )


def test_a_summaries_url_on_another_host_is_allowed_too(tmp_path: Path) -> None:
    """Before, only the uplink's url was allowed: with IPAddressDeny=any, every summary
    sent to its own summaries_url host failed, and the uplink stayed failing."""
    path = write(tmp_path)
    text = path.read_text().replace(
        "token_file: token}",
        'token_file: token, summaries_url: "https://198.51.100.4/ingest/summaries"}',
    )
    path.write_text(text + "summaries: {interval_s: 60}\n")
    text = dropin(load_config(path), base=tmp_path, resolv=tmp_path / "none")
    allowed = re.findall(r"^IPAddressAllow=(.*)$", text, re.M)
    assert allowed == ["10.0.0.21", "192.0.2.7", "198.51.100.4"]
    assert "# uplink 0 (http) summaries\nIPAddressAllow=198.51.100.4\n" in text


def test_two_secret_files_with_one_name_are_refused(tmp_path: Path) -> None:
    """systemd names a credential after its file: two files called `token` would clash."""
    (tmp_path / "cmms").mkdir()
    (tmp_path / "cmms" / "token").write_text("c0k\n")
    extra = "  - cmms: {url: 'https://192.0.2.9/api/v1/work-orders', token_file: cmms/token}\n"
    path = write(tmp_path)
    path.write_text(path.read_text().replace("store:", extra + "store:", 1))
    clash = r"uplink 0 \(http\) and uplink 1 \(cmms\) read different secret files named token "
    with pytest.raises(DropinError, match=clash + r".*rename one of them"):
        dropin(load_config(path), base=tmp_path)


def test_an_input_brokers_password_file_is_loaded_as_a_credential(tmp_path: Path) -> None:
    """check sends an inline broker password to /etc/edge-agent/credentials (0700 root),
    which the service's dynamic user cannot read: only a credential reaches it."""
    (tmp_path / "broker-pass").write_text("s3cret\n")
    extra = "mqtt:\n  - {id: plant, host: 10.0.0.5, username: gw-u, password_file: broker-pass}\n"
    text = dropin(load_config(write(tmp_path, extra=extra)), base=tmp_path)
    assert f"LoadCredential=broker-pass:{tmp_path / 'broker-pass'}" in text
    assert "# mqtt broker plant password: the service reads it as" in text


def test_an_input_broker_and_an_uplink_with_one_secret_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "token").write_text("s3cret\n")
    extra = "mqtt:\n  - {id: plant, host: 10.0.0.5, username: gw-u, password_file: b/token}\n"
    with pytest.raises(DropinError, match=r"uplink 0 \(http\) and mqtt broker plant read"):
        dropin(load_config(write(tmp_path, extra=extra)), base=tmp_path)


@pytest.fixture
def serial_port() -> Iterator[str]:
    """A real character device standing in for /dev/ttyUSB0 (a pty), as udev leaves a
    serial port: group dialout (here: a non-root group), mode 0660."""
    leader, follower = os.openpty()
    path = os.ttyname(follower)
    try:
        os.chown(path, -1, GROUP_GID)
        os.chmod(path, 0o660)
    except PermissionError:
        pytest.skip("giving a pty to another group needs root")
    yield path
    os.close(follower)
    os.close(leader)


def _rtu(port: str) -> str:
    return f"buses:\n  - {{id: rs485-1, rtu: {{port: {port}}}}}\n"


def test_an_rtu_bus_gets_its_serial_port_and_group(tmp_path: Path, serial_port: str) -> None:
    # Before: nothing about the port. The unit's PrivateDevices=yes hid it and the dynamic
    # user could not open a root:dialout 0660 port: "cannot open ...: Permission denied".
    text = dropin(load_config(write(tmp_path, extra=_rtu(serial_port))), base=tmp_path)
    assert f"# bus rs485-1: serial port {serial_port} ({serial_port}, group {GROUP})" in text
    lines = text.splitlines()
    assert "PrivateDevices=no" in lines and "DevicePolicy=closed" in lines
    # The driver's class (not the node): a USB adapter that comes back as ttyUSB1 stays in.
    assert "DeviceAllow=char-pts rw" in lines
    assert f"SupplementaryGroups={GROUP}" in lines


def test_a_serial_port_not_plugged_in_is_allowed_by_its_path(tmp_path: Path) -> None:
    port = "/dev/serial/by-id/usb-FTDI_FT232R_A10K1234-if00-port0"
    text = dropin(load_config(write(tmp_path, extra=_rtu(port))), base=tmp_path)
    assert "(not present now: run systemd-dropin again once it is)" in text
    assert f"DeviceAllow={port} rw" in text.splitlines()
    assert "SupplementaryGroups=dialout" in text.splitlines()


def test_a_port_not_plugged_in_gets_no_group_this_system_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: SupplementaryGroups=dialout whatever the system; where no dialout group
    # exists (Arch names it uucp) systemd refuses to start the service (216/GROUP).
    import agent.unitgen as unitgen

    port = "/dev/serial/by-id/usb-FTDI_FT232R_A10K1234-if00-port0"
    config = load_config(write(tmp_path, extra=_rtu(port)))
    missing = ("edge-agent-test-no-such-group", "edge-agent-test-no-such-either")
    monkeypatch.setattr(unitgen, "SERIAL_GROUPS", missing)
    lines = dropin(config, base=tmp_path).splitlines()
    assert not [ln for ln in lines if ln.startswith("SupplementaryGroups=")]
    assert f"DeviceAllow={port} rw" in lines
    (said,) = [ln for ln in lines if ln.startswith("# bus rs485-1")]
    assert "no edge-agent-test-no-such-group or edge-agent-test-no-such-either group" in said
    assert "plug it in and run systemd-dropin again" in said
    # The first serial group that exists is the one taken (here: any real group).
    monkeypatch.setattr(unitgen, "SERIAL_GROUPS", (missing[0], GROUP))
    assert f"SupplementaryGroups={GROUP}" in dropin(config, base=tmp_path).splitlines()


def test_a_serial_port_only_root_may_open_is_refused(tmp_path: Path, serial_port: str) -> None:
    os.chmod(serial_port, 0o600)
    config = load_config(write(tmp_path, extra=_rtu(serial_port)))
    with pytest.raises(DropinError, match=r"can be opened by root only; .*GROUP=\"dialout\""):
        dropin(config, base=tmp_path)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_unit_with_a_serial_port_and_a_control_group_stays_at_most_1_5(
    tmp_path: Path, serial_port: str
) -> None:
    extra = _rtu(serial_port) + "control: {group: daemon}"
    text = dropin(load_config(write(tmp_path, extra=extra)), base=tmp_path)
    assert _exposure(tmp_path, text) <= 1.5


def test_a_link_local_sensor_is_allowed_without_its_zone(tmp_path: Path) -> None:
    # Before: IPAddressAllow=fe80::12%eth0, which systemd ignores ("Address prefix is
    # invalid, ignoring assignment"): the sensor stayed cut off by IPAddressDeny=any.
    path = write(tmp_path, sensor_name="fe80::12%eth0")
    text = dropin(load_config(path), base=tmp_path, resolv=tmp_path / "none")
    assert "# sensor s4\nIPAddressAllow=fe80::12\n" in text


def test_an_ipv4_mapped_sensor_is_allowed_as_its_ipv4_address(tmp_path: Path) -> None:
    # A socket connected to ::ffff:10.0.0.8 sends IPv4 packets (an AF_INET listener accepts
    # it from 10.0.0.8), which systemd's firewall matches against IPv4 entries only: the
    # drop-in's IPAddressAllow=::ffff:a00:8 never matched and the sensor stayed cut off.
    path = write(tmp_path, sensor_name="::ffff:10.0.0.8")
    text = dropin(load_config(path), base=tmp_path, resolv=tmp_path / "none")
    assert "# sensor s4\nIPAddressAllow=10.0.0.8\n" in text
    assert "::ffff:" not in text


def test_a_built_in_serial_port_is_allowed_by_its_own_driver_name(tmp_path: Path) -> None:
    """ttyS ports (the RS-485 of most industrial gateways) share major 4 with the virtual
    consoles; /proc/devices lists '4 /dev/vc/0' first, and the drop-in said
    DeviceAllow=char-/dev/vc/0 for /dev/ttyS1."""
    if "4 ttyS" not in Path("/proc/devices").read_text():
        pytest.skip("no ttyS driver on this kernel")
    node = tmp_path / "ttyS1"
    try:
        os.mknod(node, 0o660 | stat.S_IFCHR, os.makedev(4, 65))
        os.chown(node, -1, GROUP_GID)
        os.chmod(node, 0o660)  # mknod applies the umask
    except PermissionError:
        pytest.skip("making a device node needs root")
    text = dropin(load_config(write(tmp_path, extra=_rtu(str(node)))), base=tmp_path)
    assert "DeviceAllow=char-ttyS rw" in text.splitlines()
    assert "/dev/vc/0" not in text
