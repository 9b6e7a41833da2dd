"""Run systemd/README.md's install commands in a throwaway root and check what they made.

The commands run as written, with /etc and /opt moved under a temporary root; those that
need a running systemd or change the machine's users (systemctl, groupadd, usermod) are
left out and listed. Then, as systemd would run the service:

- file modes and owners are checked (config 0644, credentials 0700/0600, unit 0644);
- `edge-agent check` runs as an unprivileged uid without supplementary groups (the
  dynamic user), with the token handed over in a credentials directory;
- `edge-agent run` runs as that uid with the unit's LimitNOFILE, a /proc like the unit's
  (ProtectProc=invisible, ProcSubset=pid) and a notify socket: it must say READY=1, ping
  the watchdog, serve /healthz, take a maintenance event through its control socket (mode
  0660) from root, answer the notes' `status`, reload its configuration on SIGHUP and
  through `edge-agent reload` (as root), run the unit's ExecReload= as the service's uid
  (what `systemctl reload` does): it must succeed, and with a broken file fail with the
  file:line:column of the problem while the agent runs on; and exit 0 on SIGTERM;
- `systemd-analyze security --offline=yes` rates the unit with its drop-in, and
  `systemd-analyze verify` checks the unit and its revive timer (mode 0644 too), when the
  tool exists.

Usage: tools/check_install_notes.py [--venv DIR] [--json]
  --venv DIR  reuse an installed virtualenv instead of running the notes' venv and pip
              lines (the test suite does this; CI runs the notes' own install).
Prints a JSON report with --json; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NOTES = REPO / "systemd" / "README.md"
UID = GID = 61_234  # in systemd's DynamicUser range, unused here
NEEDS_SYSTEMD = ("systemctl", "journalctl", "groupadd", "usermod", "cd")
MAX_EXPOSURE = 1.5


def notes_commands() -> list[str]:
    """The first ```sh block of the notes, one command per line, comments dropped."""
    text = NOTES.read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    if block is None:
        raise SystemExit(f"{NOTES}: no ```sh block")
    lines = [ln.strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def in_root(cmd: str, root: Path) -> str:
    return cmd.replace("/opt/", f"{root}/opt/").replace("/etc/", f"{root}/etc/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_edit(config: Path, root: Path, port: int) -> None:
    """What the integrator does at "edit it now": real hosts and this machine's paths."""
    text = config.read_text()
    text = text.replace("portfolio.example", "localhost:9")  # nothing listens there
    text = text.replace("host: broker.example", "host: localhost")  # nor on MQTT's 8883
    text = text.replace("cmms.example", "localhost:9")  # nor a CMMS
    text = text.replace("/var/lib/edge-agent", f"{root}/var/lib/edge-agent")
    text = text.replace("port: 9108", f"port: {port}")
    text = text.replace("/run/edge-agent/control.sock", f"{root}/run/edge-agent/control.sock")
    config.write_text(text)


def needs_service(cmd: str) -> bool:
    """Commands that talk to the running service (run while it runs, in run_service)."""
    return " status " in cmd


def run_notes(root: Path, venv: Path | None, port: int) -> list[str]:
    skipped = []
    for cmd in notes_commands():
        # The integrator pastes the backend's token where the notes say so (`check`
        # refuses the placeholder itself).
        cmd = cmd.replace("PASTE-THE-TOKEN-HERE", "t0k-from-the-backend")
        first = cmd.split()[0]
        if needs_service(cmd):
            continue
        if first in NEEDS_SYSTEMD or (venv and ("-m venv" in cmd or "/bin/pip " in cmd)):
            skipped.append(cmd)
            continue
        subprocess.run(
            ["bash", "-euo", "pipefail", "-c", in_root(cmd, root)],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PATH": f"/usr/bin:/bin:{os.environ.get('PATH', '')}"},
        )
        if cmd.startswith("install -m 0644 config/example.yaml"):
            site_edit(root / "etc/edge-agent/config.yaml", root, port)
    return skipped


def modes(root: Path) -> dict[str, str]:
    paths = {
        "config": "etc/edge-agent/config.yaml",
        "credentials": "etc/edge-agent/credentials",
        "token": "etc/edge-agent/credentials/portfolio-token",
        "unit": "etc/systemd/system/edge-agent.service",
        "revive_timer": "etc/systemd/system/edge-agent-revive.timer",
        "dropin": "etc/systemd/system/edge-agent.service.d/site.conf",
    }
    out = {}
    for name, rel in paths.items():
        st = (root / rel).stat()
        out[name] = f"{st.st_mode & 0o7777:04o} {st.st_uid}:{st.st_gid}"
    return out


def as_service(root: Path) -> tuple[list[str], dict[str, str]]:
    """The command prefix and environment of the service's dynamic user, with its credential."""
    creds = root / "run/credentials/edge-agent.service"
    creds.mkdir(parents=True)
    shutil.copy(root / "etc/edge-agent/credentials/portfolio-token", creds / "portfolio-token")
    for p in (creds, creds / "portfolio-token"):
        os.chown(p, UID, GID)
    (creds / "portfolio-token").chmod(0o400)
    creds.chmod(0o500)
    for d in ("var/lib/edge-agent", "run/edge-agent"):  # StateDirectory=, RuntimeDirectory=
        (root / d).mkdir(parents=True)
        os.chown(root / d, UID, GID)
    # ProtectProc=invisible and ProcSubset=pid: a /proc of its own, with only processes.
    setup = "set -e; mount -t proc -o subset=pid,hidepid=invisible proc /proc; "
    python = (root / "opt/edge-agent/bin/python3").resolve()
    if python.is_relative_to("/root"):
        # This machine's Python lives under /root (0700), which the uid cannot enter; a
        # gateway's is /usr/bin/python3. Show the uid the interpreter and nothing else.
        setup += _REVEAL_PYENV
    prefix = [
        *("unshare", "--mount", "--pid", "--fork", "bash", "-c", setup + 'exec "$@"', "bash"),
        *("setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups"),
    ]
    env = {"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(creds), "LANG": "C.UTF-8"}
    return prefix, env


_REVEAL_PYENV = (
    "d=$(mktemp -d); mount --bind /root/.pyenv $d; "
    "mount -t tmpfs -o mode=0755 tmpfs /root; mkdir /root/.pyenv; "
    "mount --bind $d /root/.pyenv; "
)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """SIGTERM to the agent itself (PID 1 of its namespace), as systemd's KillSignal does
    (or SIGHUP, as `kill -HUP` does)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    os.kill(int(children[0]) if children else proc.pid, sig)


def unit_value(root: Path, key: str) -> str:
    unit = (root / "etc/systemd/system/edge-agent.service").read_text()
    m = re.search(rf"^{key}=(.*)$", unit, re.M)
    return m.group(1).strip() if m else ""


def break_config(config: Path) -> tuple[str, str]:
    """Misspell the first sensor's poll_interval_s (as an operator might); the original
    text and the FILE:LINE:COL the refusal must name."""
    text = config.read_text()
    lines = text.splitlines(keepends=True)
    for n, line in enumerate(lines):
        if line.lstrip().startswith("poll_interval_s:"):
            col = len(line) - len(line.lstrip()) + 1
            lines[n] = line.replace("poll_interval_s:", "poll_intervall_s:", 1)
            config.write_text("".join(lines))
            return text, f"{config}:{n + 1}:{col}:"
    raise SystemExit(f"{config}: no poll_interval_s to misspell")


def exec_reload(
    root: Path, prefix: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """The unit's ExecReload= as systemd runs it for `systemctl reload`: as the service's
    dynamic uid, without groups, with its credentials."""
    cmd = shlex.split(in_root(unit_value(root, "ExecReload"), root))
    return subprocess.run(
        [*prefix, *cmd], env=env, capture_output=True, text=True, timeout=90, check=False
    )


def said(proc: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    return proc.returncode, (proc.stdout.strip() + "\n" + proc.stderr.strip()).strip()


def run_service(root: Path, prefix: list[str], env: dict[str, str], port: int) -> dict[str, Any]:
    """Start `edge-agent run` as systemd would; collect notify messages, health, control."""
    notify_path = root / "run/notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        os.chmod(notify_path, 0o666)
        notify.settimeout(0.5)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        limit = min(int(unit_value(root, "LimitNOFILE")), hard)
        agent = root / "opt/edge-agent/bin/edge-agent"
        config = root / "etc/edge-agent/config.yaml"
        proc = subprocess.Popen(
            [*prefix, str(agent), "run", "-c", str(config)],
            env={**env, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
        )
        messages: list[str] = []
        health: Any = None
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline and "WATCHDOG=1" not in messages:
                try:
                    messages.append(notify.recv(4096).decode())
                except TimeoutError:
                    if proc.poll() is not None:
                        break
            url = f"http://127.0.0.1:{port}/healthz"
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    health = json.load(resp)
            except urllib.error.HTTPError as exc:  # 503: degraded (sensors unreachable)
                health = json.load(exc)
            except OSError as exc:
                health = f"{url}: {exc}"
            sock = root / "run/edge-agent/control.sock"
            sock_mode = f"{sock.stat().st_mode & 0o777:04o}" if sock.exists() else "missing"
            maint = subprocess.run(
                [str(agent), "maintenance", "-c", str(config), "--asset", "press-7"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            stop(proc, signal.SIGHUP)  # kill -HUP still reloads (the outcome in the log)
            reload = subprocess.run(
                [str(agent), "reload", "-c", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            reloaded = exec_reload(root, prefix, env)  # systemctl reload
            good, where = break_config(config)
            try:
                refused = exec_reload(root, prefix, env)
            finally:
                config.write_text(good)
            status = [
                subprocess.run(
                    ["bash", "-c", in_root(cmd, root)], capture_output=True, text=True, timeout=60
                )
                for cmd in notes_commands()
                if needs_service(cmd)
            ]
        finally:
            stop(proc)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
    return {
        "notify": messages,
        "healthz_gateway": health.get("gateway") if isinstance(health, dict) else health,
        "control_socket_mode": sock_mode,
        "maintenance": (maint.returncode, maint.stdout.strip() or maint.stderr.strip()),
        "reload": (reload.returncode, reload.stdout.strip() or reload.stderr.strip()),
        "reloaded_by_sighup": "requested by SIGHUP: nothing changed" in err.decode(),
        "exec_reload": said(reloaded),
        "exec_reload_by_service_uid": f"requested by uid {UID}" in err.decode(),
        "exec_reload_broken": [*said(refused), where],
        "status": [(p.returncode, p.stdout.strip() or p.stderr.strip()) for p in status],
        "exit_code": proc.returncode,
        "log_errors": [ln for ln in err.decode().splitlines() if '"level": "ERROR"' in ln],
    }


def exposure(root: Path) -> float | None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return None
    merged = root / "edge-agent.service"
    unit = (root / "etc/systemd/system/edge-agent.service").read_text()
    dropin = (root / "etc/systemd/system/edge-agent.service.d/site.conf").read_text()
    body = dropin.replace("[Service]\n", "", 1)  # merged where systemd would put it
    merged.write_text(unit.replace("\n[Install]", f"\n{body}\n[Install]"))
    out = subprocess.run(
        [tool, "security", "--offline=yes", str(merged)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    return float(m.group(1)) if m else None


def verify(root: Path) -> tuple[int, str] | None:
    """`systemd-analyze verify` of the installed unit and its revive timer (as files, so
    no running systemd is needed; the agent's path as installed under the root): its exit
    status and what it said (an unknown key, a bad value, a missing unit). None without
    the tool."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return None
    here = root / "verify"
    here.mkdir()
    for name in ("edge-agent.service", "edge-agent-revive.timer"):
        text = (root / "etc/systemd/system" / name).read_text()
        (here / name).write_text(text.replace("/opt/", f"{root}/opt/"))
    out = subprocess.run(
        [tool, "verify", str(here / "edge-agent.service"), str(here / "edge-agent-revive.timer")],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.returncode, (out.stdout + out.stderr).strip()


def _same_agent(root: Path) -> bool:
    """ExecReload= names ExecStart='s program and configuration file."""
    start = shlex.split(unit_value(root, "ExecStart"))
    reload = shlex.split(unit_value(root, "ExecReload"))
    return reload == [start[0], "reload", *start[2:]] and start[1] == "run"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: the notes install root-owned files", file=sys.stderr)
        return 2
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="edge-notes-", dir="/tmp"))
    try:
        root.chmod(0o755)
        (root / "etc/systemd/system").mkdir(parents=True)  # what a systemd machine has
        if args.venv is not None:
            (root / "opt").mkdir()
            (root / "opt/edge-agent").symlink_to(args.venv.resolve())
        skipped = run_notes(root, args.venv, port)
        prefix, env = as_service(root)
        config = root / "etc/edge-agent/config.yaml"
        agent = root / "opt/edge-agent/bin/edge-agent"
        check = subprocess.run(
            [*prefix, str(agent), "check", "-c", str(config)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        report: dict[str, Any] = {
            "skipped": skipped,
            "modes": modes(root),
            "check_as_service_user": [check.returncode, check.stderr.strip()],
            "dropin": (root / "etc/systemd/system/edge-agent.service.d/site.conf").read_text(),
            "service": run_service(root, prefix, env, port),
            "exposure": exposure(root),
            "verify": verify(root),
            "reload_matches_start": _same_agent(root),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    svc = report["service"]
    failures = [
        what
        for what, ok in (
            ("config mode", report["modes"]["config"] == "0644 0:0"),
            ("credentials mode", report["modes"]["credentials"] == "0700 0:0"),
            ("token mode", report["modes"]["token"] == "0600 0:0"),
            ("revive timer mode", report["modes"]["revive_timer"] == "0644 0:0"),
            (
                "systemd-analyze verify: unit and timer, nothing said",
                report["verify"] is None or tuple(report["verify"]) == (0, ""),
            ),
            ("check as the service user", report["check_as_service_user"][0] == 0),
            ("READY=1", "READY=1" in svc["notify"]),
            ("WATCHDOG=1", "WATCHDOG=1" in svc["notify"]),
            ("/healthz", svc["healthz_gateway"] == "gw-01"),
            ("control socket 0660", svc["control_socket_mode"] == "0660"),
            ("maintenance", svc["maintenance"][0] == 0),
            ("reload (edge-agent reload)", svc["reload"][0] == 0),
            ("reload (SIGHUP)", svc["reloaded_by_sighup"]),
            ("ExecReload= reloads ExecStart='s file", report["reload_matches_start"]),
            (
                "ExecReload= as the service user",
                svc["exec_reload"][0] == 0 and svc["exec_reload_by_service_uid"],
            ),
            (
                "ExecReload= refuses a broken file with FILE:LINE:COL",
                svc["exec_reload_broken"][0] != 0
                and svc["exec_reload_broken"][2] in svc["exec_reload_broken"][1],
            ),
            ("status", bool(svc["status"]) and all(code == 0 for code, _ in svc["status"])),
            ("clean exit", svc["exit_code"] == 0),
            ("exposure", report["exposure"] is None or report["exposure"] <= MAX_EXPOSURE),
        )
        if not ok
    ]
    report["failures"] = failures
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for what in failures:
            print(f"FAILED: {what}", file=sys.stderr)
        tool = "not available" if report["exposure"] is None else report["exposure"]
        print(f"install notes: {len(failures)} failure(s); systemd-analyze exposure: {tool}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
