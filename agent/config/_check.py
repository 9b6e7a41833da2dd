"""``edge-agent check``: validate a file, then print a summary or every issue."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from agent.config._data import entries
from agent.config._errors import ConfigIssue
from agent.config._loader import collect
from agent.config._models import Config
from agent.config._secrets import PLACEHOLDERS
from agent.config._urls import public_url
from agent.config._yaml import parse
from agent.config._zones import standard_label, zone_limits

EXIT_OK = 0
CREDENTIALS_DIR = "/etc/edge-agent/credentials"  # systemd/README.md: 0700, root
EXIT_INVALID = 2


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of checking one file: a config, or the issues that prevent one.

    Attributes:
        config: the loaded configuration, None when there are issues.
        issues: every problem found, sorted by position.
    """

    config: Config | None
    issues: tuple[ConfigIssue, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when the file can be used."""
        return self.config is not None and not self.issues


def check_file(path: Path, *, environ: Mapping[str, str] | None = None) -> CheckResult:
    """Load a configuration file without raising.

    Args:
        path: the YAML file.
        environ: environment for ``${VAR}`` expansion; defaults to ``os.environ``.
    """
    config, issues = collect(path, environ)
    return CheckResult(config, tuple(issues))


def _num(x: float) -> str:
    return f"{x:g}"


def _size(n: int) -> str:
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:.4g} {unit}"
    return f"{n} bytes"


def readable_by_others(path: Path | None) -> str | None:
    """A warning when a secret file is readable by group or others, else None."""
    if path is None:
        return None
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # unreadable files are reported as errors by the loader
    if mode & 0o077:
        return (
            f"warning: {path} is readable by other users (mode {mode & 0o777:04o}); "
            f"chmod 600 {path} so only the agent's user can read the secret"
        )
    return None


def _uplink_lines(config: Config) -> list[str]:
    lines = []
    for name, u in zip(config.uplink_names(), config.uplinks, strict=True):
        if u.http is not None or u.cmms is not None:
            h = u.http or u.cmms
            assert h is not None
            source = f" from {h.token_file}" if h.token_file else ""
            token = f"token set{source}" if h.token else "no token"
            what = f"batch {h.batch_size}"
            if u.cmms is not None:
                what = (
                    "work-order requests for raised and escalated alerts, due "
                    f"{_num(u.cmms.safety_margin_hours)} h before the earliest estimated failure"
                )
            if h.ca_file is not None:
                token += f", CA {h.ca_file}"
            if h.cert_file is not None:
                token += " and client certificate" if h.ca_file else ", client certificate"
            if u.http is not None and config.summaries is not None:
                # Derived from url unless summaries_url is given: shown, so a wrong guess is
                # seen here rather than as a failing uplink.
                what += f"; summaries to {public_url(u.http.summaries_endpoint())}"
            lines.append(f"  {name}: {public_url(h.url)} ({token}, {what})")
            secret = h.token_file
        else:
            assert u.mqtt is not None
            m = u.mqtt
            tls = "TLS" if m.tls is not None else "NO TLS"
            lines.append(
                f"  {name}: mqtt {m.host}:{m.port} ({tls}, QoS 1, topic {m.topic}, "
                f"batch {m.batch_size}"
                f"{'' if m.require_subscriber else ', PUBACK 0x10 no subscriber: delivered'})"
            )
            secret = m.password_file
        warning = readable_by_others(secret)
        if warning:
            lines.append(f"    {warning}")
    return lines


def summary(config: Config) -> str:
    """A short human description of what the agent will do with this configuration.

    Never contains a token (nor the password of a URL).

    Args:
        config: a loaded configuration.
    """
    gw = config.gateway
    lines = [f"gateway {gw.id}" + (f" (site {gw.site})" if gw.site else "")]
    lines.append(f"{len(config.assets)} asset{'s' if len(config.assets) != 1 else ''}:")
    for a in config.assets:
        z = zone_limits(a.machine)
        name = f' "{a.name}"' if a.name else ""
        failure = _num(a.failure.threshold) if a.failure.threshold else f"{_num(z.cd)} (C/D)"
        lines.append(
            f"  {a.id}{name}: tier {a.tier}, {standard_label(a.machine)}, "
            f"{_num(a.machine.rpm)} rpm; zones A/B {_num(z.ab)}, B/C {_num(z.bc)}, "
            f"C/D {_num(z.cd)} mm/s; failure at {a.failure.metric} {failure}"
        )
    lines.append(f"{len(config.sensors)} sensor{'s' if len(config.sensors) != 1 else ''}:")
    for s in config.sensors:
        if s.mqtt is not None:
            q = s.mqtt
            key = f", key {q.key or s.id} from {q.key_from}" if q.key_from else ""
            lines.append(
                f"  {s.id} on {s.asset}: mqtt {q.broker} topic {q.topic} (QoS {q.qos}{key}), "
                f"decoder {q.decoder}, channels {','.join(s.channels)}, stale after "
                f"{_num(q.stale_after_s)} s"
            )
            continue
        m = s.modbus
        assert m is not None
        where = f"bus {m.bus}" if m.bus is not None else f"modbus tcp {m.host}:{m.port}"
        lines.append(
            f"  {s.id} on {s.asset}: {where} device_id {m.device_id}, "
            f"profile {m.profile}, channels {','.join(s.channels)}, "
            f"every {_num(s.poll_interval_s)} s (timeout {_num(m.timeout_s)} s)"
        )
    lines += _bus_lines(config)
    lines += _broker_lines(config)
    if not config.uplinks:
        lines.append("no uplinks: alerts stay in the local store")
    else:
        lines.append(f"{len(config.uplinks)} uplink{'s' if len(config.uplinks) != 1 else ''}:")
    lines += _uplink_lines(config)
    if config.summaries is not None:
        sm = config.summaries
        which = ", ".join(sm.sensors) if sm.sensors is not None else "every sensor"
        lines.append(f"feature summaries every {_num(sm.interval_s)} s for {which}")
    st = config.store
    lines.append(f"store {st.path}, budget {_size(st.max_bytes)}")
    from agent.store._lock import world_writable  # here: the store is not config's
    from agent.store._sqlite import WAL_LIMIT_BYTES

    if st.max_bytes < WAL_LIMIT_BYTES:  # the budget counts the file's live pages only
        lines.append(
            f"  warning: the store's WAL beside the file takes up to {_size(WAL_LIMIT_BYTES)} "
            f"more, not counted in max_bytes: plan about {_size(st.max_bytes + WAL_LIMIT_BYTES)} "
            "of disk"
        )
    folder = _existing(st.path.parent)
    if (mode := world_writable(folder)) is not None:
        lines.append(
            f"  warning: store.path is in {folder}, a folder every local user may write "
            f"(mode {mode:04o}): another user can lock the store there first (the agent "
            "then refuses to start) or put files in its place; use a folder only the "
            "agent's user can write (/var/lib/edge-agent under the shipped systemd unit)"
        )

    hc = config.health
    exposed = " (exposed beyond this machine, read-only)" if hc.expose else ""
    lines.append(f"health http://{hc.host}:{hc.port}/healthz{exposed}")
    group = f", group {config.control.group}" if config.control.group else ""
    lines.append(f"control socket {config.control.socket} (maintenance; mode 0660{group})")
    return "\n".join(lines)


def _existing(folder: Path) -> Path:
    """The folder, or its nearest ancestor that exists (where the agent will create it)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def _broker_lines(config: Config) -> list[str]:
    """Each MQTT broker with its security, session and sensors."""
    if not config.mqtt:
        return []
    lines = [f"{len(config.mqtt)} MQTT broker{'s' if len(config.mqtt) != 1 else ''}:"]
    for b in config.mqtt:
        n = sum(1 for s in config.sensors if s.mqtt is not None and s.mqtt.broker == b.id)
        tls = "TLS" if b.tls is not None else "no TLS"
        if b.tls is not None and b.tls.cert_file is not None:
            tls += " with client certificate"
        user = f", user {b.username}" if b.username else ""
        lines.append(
            f"  {b.id}: mqtt{'s' if b.tls else ''}://{b.host}:{b.effective_port} (MQTT "
            f"{b.protocol}, {tls}{user}, {b.session} session, client id "
            f"{b.effective_client_id(config.gateway.id)}), {n} sensor{'s' if n != 1 else ''}"
        )
        warning = readable_by_others(b.password_file)
        if warning:
            lines.append(f"    {warning}")
    return lines


def _bus_lines(config: Config) -> list[str]:
    """Each bus with its devices and the poll plan's line utilisation."""
    if not config.buses:
        return []
    # Imported here: the capacity plan needs the register profiles (data files).
    from agent.sources import planned_utilisation
    from drivers.profiles import ProfileLibrary

    library = ProfileLibrary.load(config.profiles_dir)
    lines = [f"{len(config.buses)} bus{'es' if len(config.buses) != 1 else ''}:"]
    for b in config.buses:
        n = sum(1 for s in config.sensors if s.modbus is not None and s.modbus.bus == b.id)
        if b.rtu is not None:
            r = b.rtu
            what = f"rtu {r.port} {r.baudrate} baud {r.bytesize}{r.parity}{r.stop_bits}"
        else:
            assert b.tcp is not None
            t = b.tcp
            what = f"gateway {t.host}:{t.port} ({t.max_connections} connection"
            what += "s)" if t.max_connections != 1 else ")"
        use = planned_utilisation(config, b, library)
        if use is None:
            plan = "line utilisation unknown (set tcp.line_baudrate to plan it)"
        elif use < 1.0:
            plan = f"line utilisation {100 * use:.0f} % planned"
        else:
            plan = (
                f"WARNING: line over capacity, {100 * use:.0f} % planned: its devices will "
                "poll slower than configured (raise poll_interval_s, read fewer channels or "
                "split the line)"
            )
        lines.append(f"  {b.id}: {what}, {n} device{'s' if n != 1 else ''}; {plan}")
    return lines


def main_check(
    path: Path, out: TextIO, err: TextIO, *, environ: Mapping[str, str] | None = None
) -> int:
    """``edge-agent check -c FILE``: the summary on ``out`` and 0, or each issue on ``err`` and 2.

    Args:
        path: the YAML file.
        out: where the summary goes (stdout).
        err: where issues go, one per line (stderr).
        environ: environment for ``${VAR}`` expansion; defaults to ``os.environ``.
    """
    result = check_file(path, environ=environ)
    if result.config is None:
        for issue in result.issues:
            print(issue, file=err)
        return EXIT_INVALID
    print(summary(result.config), file=out)
    for warning in inline_secrets(path, environ) + placeholder_secrets(path, environ):
        print(warning, file=out)
    return EXIT_OK


def _secret_paths(data: object) -> list[tuple[tuple[str | int, ...], str]]:
    """Where a file may hold a secret inline (uplink tokens and passwords, brokers'), each
    with a name for its credential file (the uplink's or broker's name: systemd-dropin
    loads each file as a credential named after it, so two must not share one)."""
    if not isinstance(data, dict):
        return []
    paths: list[tuple[tuple[str | int, ...], str]] = []
    for i, up in entries(data, "uplinks"):
        own = up.get("name") if isinstance(up.get("name"), str) else None
        for kind, key in (("http", "token"), ("cmms", "token"), ("mqtt", "password")):
            paths.append((("uplinks", i, kind, key), f"{own or f'{kind}-uplink-{i}'}-{key}"))
    for i, broker in entries(data, "mqtt"):
        own = broker.get("id") if isinstance(broker.get("id"), str) else f"mqtt-{i}"
        paths.append((("mqtt", i, "password"), f"{own}-password"))
    return paths


def inline_secrets(path: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning per token or password written into the file itself while other users
    can read the file (the notes install it 0644: it is meant to hold no secret).

    A value from ``${VAR}`` (systemd's EnvironmentFile=, root's) is not in the file.
    """
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeError):
        return []
    if not mode & 0o044:
        return []
    data, smap, _ = parse(str(path), text, environ if environ is not None else os.environ)
    found = []
    for where, name in _secret_paths(data):
        node = smap.nodes.get(where)
        if node is None or node.template is not None or not node.raw:
            continue
        # The form that works under the unit: its DynamicUser cannot read the credentials
        # folder, systemd-dropin's LoadCredential= copies the file to $CREDENTIALS_DIRECTORY;
        # run by hand as root, the same line falls back to the file itself.
        msg = (
            f"warning: a {where[-1]} is written in this file, which other users can read "
            f"(mode {mode:04o}); put it alone in {CREDENTIALS_DIR}/{name} (chmod 600) and "
            f'write {where[-1]}_file: "${{CREDENTIALS_DIRECTORY:-{CREDENTIALS_DIR}}}/{name}" '
            "(then run systemd-dropin again), as systemd/README.md shows"
        )
        found.append(smap.issue(where, msg))
    return [str(issue) for issue in sorted(found)]


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def placeholder_secrets(path: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning per token or password that is still the example's placeholder, written
    as such or left as the default of an unset ${VAR} (the example's own lines): it passed
    check, and the backend refused every delivery with 401. A warning, not an error:
    the example must pass check as shipped."""
    env = environ if environ is not None else os.environ
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeError):
        return []
    data, smap, _ = parse(str(path), text, env)
    found = []
    for where, _name in _secret_paths(data):
        node = smap.nodes.get(where)
        if node is None or node.raw is None:
            continue
        block = data["uplinks"][where[1]] if where[0] == "uplinks" else data["mqtt"][where[1]]
        section = block.get(where[2]) if len(where) == 4 else block
        value = section.get(where[-1]) if isinstance(section, dict) else None
        if value not in PLACEHOLDERS:
            continue
        var = _VAR.search(node.template or "")
        unset = f" ({var.group(1)} is not set here)" if var else ""
        how = f"set {var.group(1)} in the agent's environment, or " if var else ""
        msg = (
            f"warning: the example's placeholder, not a real {where[-1]}{unset}: the far "
            f"end refuses every delivery with it; {how}write {where[-1]}_file: as "
            "systemd/README.md shows"
        )
        found.append(smap.issue(where, msg))
    return [str(issue) for issue in sorted(found)]
