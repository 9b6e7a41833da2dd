"""`edge-agent systemd-dropin`: the per-site part of the service's sandbox, from the config.

The shipped unit denies every IP address but loopback's; this drop-in allows exactly the
sensors, uplinks (the portfolio backend, the broker, the CMMS) and (when a host is a name)
DNS servers the configuration names, loads each uplink's token or password file and each
input broker's password file as a systemd credential (named after the file), opens the
sandbox to the serial ports of RTU buses (the unit's PrivateDevices=yes hides them, and the
dynamic user is in no group that may open them), and lets the agent give its control socket
to the configured group. Host names are resolved now: run it again after a configuration or
DNS change, then
`systemctl daemon-reload`.
"""

from __future__ import annotations

import grp
import os
import socket
import stat
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from agent.config import Config, HttpUplink, MqttUplink
from agent.netaddr import ip_of, is_loopback

RESOLV_CONF = Path("/etc/resolv.conf")
PROC_DEVICES = Path("/proc/devices")
# The group of serial ports on Debian and most distributions, for a port that is not
# plugged in when the drop-in is written.
# The groups udev gives serial ports (Debian/Ubuntu/Fedora: dialout; Arch: uucp): for a port
# not plugged in yet, the first of them that exists here.
SERIAL_GROUPS = ("dialout", "uucp")


class DropinError(Exception):
    """A host the configuration names cannot be turned into an address."""


def _hosts(config: Config) -> list[tuple[str, str]]:
    """(host, what needs it) for every remote endpoint in the configuration."""
    out = [(s.modbus.host, f"sensor {s.id}") for s in config.sensors if s.modbus and s.modbus.host]
    out += [(b.tcp.host, f"bus {b.id}") for b in config.buses if b.tcp is not None]
    out += [(b.host, f"mqtt broker {b.id}") for b in config.mqtt]
    for i, u in enumerate(config.uplinks):
        block = u.settings
        host = block.host if isinstance(block, MqttUplink) else urlsplit(block.url).hostname
        if host:
            out.append((host, f"uplink {i} ({u.kind})"))
        # Feature summaries may go to a host of their own.
        summaries = block.summaries_url if isinstance(block, HttpUplink) else None
        if summaries and (host := urlsplit(summaries).hostname):
            out.append((host, f"uplink {i} ({u.kind}) summaries"))
    return out


def _resolve(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise DropinError(f"cannot resolve {host}") from None
    return sorted({str(info[4][0]) for info in infos})


def _firewall_form(address: str) -> str:
    """An address as systemd's IP firewall matches it. Without a "%eth0" zone (a link-local
    address needs one to be reached, systemd takes none: "Address prefix is invalid,
    ignoring assignment"); an IPv4-mapped one (::ffff:10.0.0.5) as its IPv4 address: the
    packets to it are IPv4, matched against IPv4 entries only."""
    ip = ip_of(address.split("%", 1)[0])
    if ip is None:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped if mapped is not None else ip)


def _nameservers(resolv: Path) -> list[str]:
    try:
        lines = resolv.read_text().splitlines()
    except OSError:
        return []
    found = [ln.split()[1] for ln in lines if ln.startswith("nameserver") and len(ln.split()) > 1]
    return [a for a in found if ip_of(a) is not None and not is_loopback(a)]


def _allow(addresses: Iterable[str], why: str) -> list[str]:
    return [f"# {why}"] + [f"IPAddressAllow={a}" for a in addresses]


def _secret_files(config: Config) -> list[tuple[Path, str, str]]:
    """(file, who reads it, what it holds) for every secret file: the uplinks' tokens and
    passwords, and the input brokers' passwords (check's warning about an inline password
    sends both to /etc/edge-agent/credentials, which the service's user cannot read)."""
    out: list[tuple[Path, str, str]] = []
    for i, u in enumerate(config.uplinks):
        block = u.settings
        mqtt = isinstance(block, MqttUplink)
        secret = block.password_file if isinstance(block, MqttUplink) else block.token_file
        if secret is not None:
            out.append((Path(secret), f"uplink {i} ({u.kind})", "password" if mqtt else "token"))
    out += [
        (b.password_file, f"mqtt broker {b.id}", "password")
        for b in config.mqtt
        if b.password_file is not None
    ]
    return out


def _credentials(config: Config, base: Path) -> list[str]:
    """LoadCredential= for each secret file (once per file)."""
    lines: list[str] = []
    loaded: dict[str, tuple[Path, str]] = {}  # credential name -> (file, first reader)
    for secret, who, what in _secret_files(config):
        source = (base / secret).absolute()
        if source.name in loaded:
            first, other = loaded[source.name]
            if first == source:
                continue
            raise DropinError(
                f"{other} and {who} read different secret files named {source.name} "
                f"({first}, {source}); a systemd credential is named after its file: "
                "rename one of them"
            )
        loaded[source.name] = (source, who)
        lines += [
            f"# {who} {what}: the service reads it as $CREDENTIALS_DIRECTORY/{source.name}",
            f"LoadCredential={source.name}:{source}",
        ]
    return lines


def _char_driver(major: int, devices: Path, node: str) -> str | None:
    """The character-device driver name of a major number (/proc/devices), e.g. ttyUSB.

    Several drivers can share a major: 4 is "/dev/vc/0", "tty" and "ttyS"; the one whose
    name begins the device node's (ttyS1) is the port's (systemd allows the whole major
    either way, but the drop-in should name the serial driver, not the consoles)."""
    try:
        lines = devices.read_text().split("Block devices:")[0].splitlines()
    except OSError:
        return None
    names = [p[1] for p in (ln.split() for ln in lines) if len(p) == 2 and p[0] == str(major)]
    own = [n for n in names if node.startswith(n)]
    return max(own, key=len) if own else (names[0] if names else None)


def _serial_port(port: str, devices: Path) -> tuple[str, str | None, str]:
    """(DeviceAllow= specifier, group that may open it, what was found) for a serial port.

    The driver class (char-ttyUSB) rather than the one node: a USB adapter that comes
    back as ttyUSB1 after a replug stays allowed. A port absent now is allowed by its
    path (systemd looks it up when the service starts) with the usual serial group, if
    this system has one: SupplementaryGroups= naming a group that does not exist stops
    the service from starting at all (status 216/GROUP), sensors and uplinks with it.
    """
    try:
        st = os.stat(port)
    except OSError:
        group = next((g for g in SERIAL_GROUPS if _group_exists(g)), None)
        if group is None:
            return port, None, (
                f"not present now, and no {' or '.join(SERIAL_GROUPS)} group here, so no "
                "group is added: plug it in and run systemd-dropin again (it takes the "
                "port's own group)"
            )  # fmt: skip
        return port, group, "not present now: run systemd-dropin again once it is"
    real = os.path.realpath(port)
    rw = stat.S_IRGRP | stat.S_IWGRP
    if st.st_gid == 0 or st.st_mode & rw != rw:
        # The service's dynamic user can only get in through a group: never root's.
        raise DropinError(
            f"serial port {port} ({real}, mode {stat.S_IMODE(st.st_mode):04o}, group "
            f"{_group_name(st.st_gid)}) can be opened by root only; give it a group that may "
            'read and write it (a udev rule with GROUP="dialout", MODE="0660")'
        )
    driver = (
        _char_driver(os.major(st.st_rdev), devices, os.path.basename(real))
        if stat.S_ISCHR(st.st_mode)
        else None
    )
    spec = f"char-{driver}" if driver else port
    group = _group_name(st.st_gid)
    return spec, group, f"{real}, group {group}"


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _serial(config: Config, devices: Path) -> list[str]:
    """PrivateDevices=no with a device allow-list and the ports' groups, for RTU buses."""
    lines: list[str] = []
    specs: list[str] = []
    groups: list[str] = []
    for bus in config.buses:
        if bus.rtu is None:
            continue
        spec, group, found = _serial_port(bus.rtu.port, devices)
        lines.append(f"# bus {bus.id}: serial port {bus.rtu.port} ({found})")
        specs += [spec] if spec not in specs else []
        groups += [group] if group is not None and group not in groups else []
    if not lines:
        return []
    return [
        *lines,
        "# PrivateDevices=yes would hide the ports: only these devices (and /dev/null...)",
        "PrivateDevices=no",
        "DevicePolicy=closed",
        *(f"DeviceAllow={spec} rw" for spec in specs),
        *(f"SupplementaryGroups={group}" for group in groups),
    ]


def dropin(
    config: Config, *, base: Path, resolv: Path = RESOLV_CONF, devices: Path = PROC_DEVICES
) -> str:
    """The drop-in file's text.

    Args:
        config: the validated configuration.
        base: the configuration file's directory (relative token files are relative to it).
        resolv: where the DNS servers are listed.
        devices: the kernel's list of device drivers (for the serial ports' class).

    Raises:
        DropinError: a host name does not resolve (nothing is printed: a partial
            allow-list would cut a sensor off without saying so), two secret files
            would be the same credential, or a serial port only root may open.
    """
    lines = [
        f"# Generated by `edge-agent systemd-dropin` for gateway {config.gateway.id} on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "# Run it again after changing hosts in the configuration, then systemctl daemon-reload.",
        "[Service]",
    ]
    if config.health.expose:
        lines.append(
            "# health.expose: true serves /healthz to any address: no IP allow-list "
            "(IPAddressDeny=any in the unit is reset here)."
        )
        lines.append("IPAddressDeny=")
    else:
        allowed: set[str] = set()
        names = False
        for host, what in _hosts(config):
            if ip_of(host) is not None:
                found, why = [_firewall_form(host)], what
            else:
                names = True
                found, why = (
                    [_firewall_form(a) for a in _resolve(host)],
                    f"{what}: {host} resolves to",
                )
            new = [a for a in found if a not in allowed and not is_loopback(a)]
            allowed.update(new)
            if new:
                lines += _allow(new, why)
        if names and (servers := _nameservers(resolv)):
            lines += _allow(servers, f"DNS servers from {resolv}")
    lines += _credentials(config, base)
    lines += _serial(config, devices)
    if config.control.group:
        group = config.control.group
        lines += [
            f"# control socket for group {group} (control.group): the agent is a member and",
            "# gives the socket to it (chown, the only call of @privileged it needs)",
            f"SupplementaryGroups={group}",
            "SystemCallFilter=@chown",
        ]
    return "\n".join(lines) + "\n"
