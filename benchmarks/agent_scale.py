"""The agent at plant scale: N sensors at 1 Hz, one TCP endpoint each, as a user runs it.

For each N (default 500, 1000, 2000): one ``edge-sim modbus --endpoints N`` process serves
a healthy QM30VT2 on N ports; the agent runs as ``edge-agent run`` (its own process) on a
generated configuration (N sensors on N/20 assets, an SQLite store in a temporary folder,
no uplink). Measured, all from outside the agent:

- ``check_s``: wall time of ``edge-agent check -c FILE`` (the whole CLI, start-up included);
- ``healthz_after_s``: from starting ``edge-agent run`` until GET /healthz answers;
- over a window after a warm-up: the agent's CPU share of one core (/proc utime+stime),
  peak RSS, readings analysed and dropped per second (/healthz ``pipeline`` counters);
- ``stop_s``: SIGTERM to exit, and the exit code.

Prints one JSON object. ``--py-spy FILE`` records a py-spy profile of the agent during the
window of the largest N (py-spy must be installed; it is not a dependency).
``--compare REF`` also runs the agent of git ref REF (exported to a temporary folder, run
with the same interpreter, simulator and generated configuration), alternating with this
checkout's for each N and each of ``--repeat`` rounds, so both are measured side by side.

    python benchmarks/agent_scale.py [--sensors 500 1000 2000] [--window 60] [--warmup 20]
        [--compare main] [--repeat 2]

``--plant`` runs instead one plant of 1998 Modbus sensors on 3 hosts (every 10th answering
garbage) and MQTT sensors, through a third of the hosts dying and coming back and the
backend down then back (benchmarks/_plant.py), with ``--compare`` side by side:

    python benchmarks/agent_scale.py --plant [--mqtt-sensors 100] [--window 20]
        [--backend-down-s 120] [--compare 8658f1f] [--repeat 1]

``--outage-tick`` prints instead the CPU time of one evaluation of the outage groups (the
sensor watch's, once a second) in process, for plant shapes from 3 hosts of 666 devices to
4000 hosts of one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import free_port  # noqa: E402

MAX_SENSORS = 4000
HEALTHZ_TIMEOUT_S = 15.0  # a /healthz of thousands of sensors on a loaded machine
CLK_TCK = os.sysconf("SC_CLK_TCK")


def write_config(path: Path, ports: list[int], health_port: int, store: Path) -> None:
    lines = ["gateway: {id: bench}", "assets:"]
    n_assets = max(1, len(ports) // 20)
    for a in range(n_assets):
        lines.append(
            f"  - {{id: a{a}, machine: {{standard: iso10816-3, group: 2, foundation: rigid, "
            "rpm: 1480}}"
        )
    lines.append("sensors:")
    for i, port in enumerate(ports):
        lines.append(
            f"  - {{id: s{i}, asset: a{i % n_assets}, "
            f"modbus: {{host: 127.0.0.1, port: {port}, device_id: 1, timeout_s: 0.5}}}}"
        )
    lines.append(f'store: {{path: "{store}", max_bytes: 1GiB}}')
    lines.append(f"health: {{port: {health_port}}}")
    path.write_text("\n".join(lines) + "\n")


def cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def healthz(port: int, timeout_s: float = 2.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout_s) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:  # 503 while degraded still carries the body
        return json.loads(exc.read())
    except OSError:
        return None


def start_sim(n: int) -> tuple[subprocess.Popen[str], list[int]]:
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "modbus", "--endpoints", str(n),
         "--device", "1:healthy"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=REPO,
    )  # fmt: skip
    assert sim.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = sim.stdout.readline()
        if line.startswith("READY "):
            return sim, json.loads(line[6:])["ports"]
        if not line and sim.poll() is not None:
            break
    sim.kill()
    raise RuntimeError("simulator did not start")


def export_ref(ref: str, into: Path) -> Path:
    """The agent's source at git ref ``ref``, exported (not checked out) under ``into``."""
    dest = into / "agent-src"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref], cwd=REPO, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def run_case(
    n: int, window_s: float, warmup_s: float, py_spy: str | None, src: Path = REPO
) -> dict[str, Any]:
    """One agent run at ``n`` sensors; ``src`` is the checkout whose agent runs."""
    tmp = Path(tempfile.mkdtemp(prefix="edge-scale-"))
    sim, ports = start_sim(n)
    agent = None
    try:
        health_port = free_port()
        cfg = tmp / "agent.yaml"
        write_config(cfg, ports, health_port, tmp / "outbox.db")
        agent_cli = [sys.executable, "-m", "agent.cli"]
        t0 = time.monotonic()
        check = subprocess.run(
            [*agent_cli, "check", "-c", str(cfg)], capture_output=True, text=True, cwd=src
        )
        check_s = time.monotonic() - t0
        if check.returncode != 0:
            raise RuntimeError(check.stderr[-2000:])
        t0 = time.monotonic()
        with (tmp / "agent.log").open("w") as log:
            agent = subprocess.Popen(
                [*agent_cli, "run", "-c", str(cfg), "--log-level", "WARNING"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, cwd=src,
            )  # fmt: skip
        healthz_after = None
        while time.monotonic() - t0 < 120:
            if healthz(health_port) is not None:
                healthz_after = time.monotonic() - t0
                break
            time.sleep(0.1)
        time.sleep(warmup_s)
        before = healthz(health_port, HEALTHZ_TIMEOUT_S) or {}
        c0, w0 = cpu_s(agent.pid), time.monotonic()
        spy = None
        if py_spy:
            spy = subprocess.Popen(
                ["py-spy", "record", "-p", str(agent.pid), "-o", py_spy, "-d", str(int(window_s)),
                 "-r", "50", "-f", "speedscope"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        rss_peak, samples = 0.0, 0
        while time.monotonic() - w0 < window_s:
            time.sleep(1.0)
            rss_peak = max(rss_peak, rss_mb(agent.pid))
            samples += 1
        c1, w1 = cpu_s(agent.pid), time.monotonic()
        asked = time.monotonic()
        after = healthz(health_port, HEALTHZ_TIMEOUT_S) or {}
        healthz_s = time.monotonic() - asked
        if spy is not None:
            spy.wait(timeout=60)
        pb, pa = before.get("pipeline", {}), after.get("pipeline", {})
        span = w1 - w0
        states: dict[str, int] = {}
        for s in after.get("sensors", []):
            states[s["state"]] = states.get(s["state"], 0) + 1

        def total(snapshot: dict[str, Any], key: str) -> int:
            return sum(s.get(key) or 0 for s in snapshot.get("sensors", []))

        t_stop = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        try:
            code = agent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            agent.kill()
            code = "killed after 60 s"
        stop_s = time.monotonic() - t_stop
        expected = 2 * n  # two channels per sensor at 1 Hz
        analysed = (pa.get("readings_total", 0) - pb.get("readings_total", 0)) / span
        return {
            "sensors": n,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "check_s": round(check_s, 2),
            "healthz_after_s": None if healthz_after is None else round(healthz_after, 2),
            "window_s": round(span, 1),
            "cpu_share_of_one_core": round((sum(c1) - sum(c0)) / span, 3),
            "cpu_user_system": [round((c1[0] - c0[0]) / span, 3), round((c1[1] - c0[1]) / span, 3)],
            "rss_peak_mb": round(rss_peak, 1),
            "readings_expected_per_s": expected,
            "readings_analysed_per_s": round(analysed, 1),
            "readings_dropped_per_s": round(
                (pa.get("readings_dropped_total", 0) - pb.get("readings_dropped_total", 0)) / span,
                2,
            ),
            "readings_dropped_total": pa.get("readings_dropped_total"),
            "queue_size": pa.get("queue_size"),
            "sensor_states": states,
            # Ticks the pollers skipped (a poll overran its interval: a starved process)
            # and failed polls, within the window.
            "missed_ticks": total(after, "missed_ticks") - total(before, "missed_ticks"),
            "poll_errors": total(after, "errors_total") - total(before, "errors_total"),
            "loop_lag_max_s": pa.get("loop_lag_max_s"),
            "healthz_answer_s": round(healthz_s, 2),
            "stop_s": round(stop_s, 2),
            "exit_code": code,
        }
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        sim.send_signal(signal.SIGTERM)
        try:
            sim.wait(timeout=20)
        except subprocess.TimeoutExpired:
            sim.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sensors", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--window", type=float, default=60.0, help="measurement window, s")
    parser.add_argument("--warmup", type=float, default=20.0, help="after /healthz answers, s")
    parser.add_argument("--py-spy", help="record a py-spy profile of the largest case here")
    parser.add_argument("--compare", help="git ref whose agent runs beside this one")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per N (with --compare)")
    parser.add_argument("--plant", action="store_true", help="the plant scenario (_plant.py)")
    parser.add_argument("--mqtt-sensors", type=int, default=100, help="with --plant")
    parser.add_argument("--backend-down-s", type=float, default=120.0, help="with --plant")
    parser.add_argument(
        "--outage-tick", action="store_true", help="per-tick cost of the outage groups"
    )
    args = parser.parse_args()
    if args.outage_tick:
        from benchmarks._plant import outage_tick_cost

        print(json.dumps({"benchmark": "agent_scale --outage-tick", "cases": outage_tick_cost()}))
        return
    if args.plant:
        plant(args)
        return
    sizes = [min(max(1, n), MAX_SENSORS) for n in args.sensors]
    variants: list[tuple[str, Path]] = [("this", REPO)]
    keep = Path(tempfile.mkdtemp(prefix="edge-scale-src-"))
    try:
        if args.compare:
            variants.append((args.compare, export_ref(args.compare, keep)))
        cases = []
        for n in sizes:
            for r in range(max(1, args.repeat)):
                # Alternate which runs first, so a drift in the machine's load does not
                # always favour the same variant.
                order = variants if r % 2 == 0 else variants[::-1]
                for name, src in order:
                    spy = args.py_spy if args.py_spy and n == max(sizes) and r == 0 else None
                    if spy and name != "this":
                        spy = None
                    case = {"agent": name, "round": r + 1}
                    case.update(run_case(n, args.window, args.warmup, spy, src))
                    cases.append(case)
                    print(json.dumps(cases[-1]), file=sys.stderr)
    finally:
        shutil.rmtree(keep, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "agent_scale",
                "python": platform.python_version(),
                "load_average_at_end": os.getloadavg(),
                "cpus": os.cpu_count(),
                "cases": cases,
            },
            indent=1,
        )
    )


def plant(args: argparse.Namespace) -> None:
    from benchmarks._plant import run_plant

    variants: list[tuple[str, Path]] = [("this", REPO)]
    keep = Path(tempfile.mkdtemp(prefix="edge-scale-src-"))
    cases = []
    try:
        if args.compare:
            variants.append((args.compare, export_ref(args.compare, keep)))
        for r in range(max(1, args.repeat)):
            for name, src in variants if r % 2 == 0 else variants[::-1]:
                case: dict[str, Any] = {"agent": name, "round": r + 1}
                case.update(
                    run_plant(
                        src,
                        mqtt_n=args.mqtt_sensors,
                        warmup_s=args.warmup,
                        window_s=args.window,
                        backend_down_s=args.backend_down_s,
                    )
                )
                case["load_average"] = [round(x, 2) for x in os.getloadavg()]
                cases.append(case)
                print(json.dumps(case), file=sys.stderr)
    finally:
        shutil.rmtree(keep, ignore_errors=True)
    print(json.dumps({"benchmark": "agent_scale --plant", "python": platform.python_version(),
                      "cpus": os.cpu_count(), "cases": cases}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
