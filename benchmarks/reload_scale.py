"""Reload at plant scale: how long a reload takes, and what it costs the untouched sensors.

One ``edge-sim modbus --endpoints N+1`` process serves a healthy QM30VT2 on N+1 ports; the
agent runs as ``edge-agent run`` on N sensors at 1 Hz (one TCP endpoint each, N/20 assets,
no uplink). Then, side by side in the same run:

- a quiet window of W seconds without reloads, and a window of the same length with a
  reload every ``--every`` seconds through the control socket, cycling through: nothing
  changed, one sensor added (the spare port), that sensor removed, one asset's thresholds
  changed (20 sensors re-analysed, none restarted);
- per window: missed poll ticks and failed polls summed over the sensors that no reload
  touches (a sensor whose poller restarted would also show as counters that went back);
- per reload: the control-socket round trip (the agent reads and checks the file, plans,
  applies) and what it reported.

Prints one JSON object.

    python benchmarks/reload_scale.py [--sensors 500] [--window 20] [--every 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.control import call  # noqa: E402
from benchmarks.agent_scale import HEALTHZ_TIMEOUT_S, healthz, start_sim  # noqa: E402
from tests.conftest import free_port  # noqa: E402

MAX_SENSORS = 2000
MAX_RELOADS = 100


def config_text(ports: list[int], health: int, tmp: Path, *, extra: bool, zones: bool) -> str:
    n_assets = max(1, len(ports) // 20)
    limits = "{standard: limits, limits: {ab: 2.0, bc: 5.0, cd: 9.0}, rpm: 1480}"
    iso = "{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}"
    lines = ["gateway: {id: bench}", "assets:"]
    for a in range(n_assets):
        lines.append(f"  - {{id: a{a}, machine: {limits if zones and a == 0 else iso}}}")
    lines.append("sensors:")
    for i, port in enumerate(ports if extra else ports[:-1]):
        lines.append(
            f"  - {{id: s{i}, asset: a{i % n_assets}, "
            f"modbus: {{host: 127.0.0.1, port: {port}, device_id: 1, timeout_s: 0.5}}}}"
        )
    lines.append(f'store: {{path: "{tmp}/outbox.db", max_bytes: 1GiB}}')
    lines.append(f"health: {{port: {health}}}")
    lines.append(f'control: {{socket: "{tmp}/control.sock"}}')
    return "\n".join(lines) + "\n"


def _kind(changes: list[str]) -> str:
    text = " ".join(changes)
    if not changes:
        return "unchanged"
    if "added" in text:
        return "sensor added"
    if "removed" in text:
        return "sensor removed"
    return "one asset's 20 sensors re-analysed"


def counters(snap: dict[str, Any], ids: set[str]) -> dict[str, int]:
    out = {"missed_ticks": 0, "errors": 0, "polls": 0}
    for s in snap.get("sensors", []):
        if s["id"] in ids:
            out["missed_ticks"] += s["missed_ticks"]
            out["errors"] += s["errors_total"]
            out["polls"] += s["polls_total"]
    return out


def delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a[k] for k in a}


def run(n: int, window_s: float, every_s: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="edge-reload-"))
    sim, ports = start_sim(n + 1)
    agent = None
    try:
        health = free_port()
        cfg = tmp / "agent.yaml"
        cfg.write_text(config_text(ports, health, tmp, extra=False, zones=False))
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "-c", str(cfg), "--log-level", "WARNING"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=(tmp / "agent.log").open("w"), cwd=REPO,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while healthz(health) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(10)  # warm-up: every sensor polled, the ramp over
        # Untouched by any reload: not the spare sensor, not asset a0's.
        n_assets = max(1, n // 20)
        untouched = {f"s{i}" for i in range(n) if i % n_assets != 0}
        quiet0 = counters(healthz(health, HEALTHZ_TIMEOUT_S) or {}, untouched)
        time.sleep(window_s)
        quiet1 = counters(healthz(health, HEALTHZ_TIMEOUT_S) or {}, untouched)
        steps = [(False, False), (True, False), (False, False), (False, True)]
        rounds: list[dict[str, Any]] = []
        start = time.monotonic()
        k = 0
        while time.monotonic() - start < window_s and k < MAX_RELOADS:
            extra, zones = steps[k % len(steps)]
            cfg.write_text(config_text(ports, health, tmp, extra=extra, zones=zones))
            t0 = time.monotonic()
            answer = call(tmp / "control.sock", "reload", {"config": str(cfg.resolve())},
                          timeout_s=60)  # fmt: skip
            changes = answer.get("result", {}).get("changes", [])
            rounds.append({"ms": (time.monotonic() - t0) * 1000, "ok": answer["ok"],
                           "kind": _kind(changes)})  # fmt: skip
            k += 1
            time.sleep(max(0.0, start + k * every_s - time.monotonic()))
        busy1 = counters(healthz(health, HEALTHZ_TIMEOUT_S) or {}, untouched)
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=60)
        ms = [r["ms"] for r in rounds]
        by_kind: dict[str, list[float]] = {}
        for r in rounds:
            by_kind.setdefault(r["kind"], []).append(r["ms"])
        return {
            "sensors": n,
            "window_s": window_s,
            "reloads": len(rounds),
            "all_applied": all(r["ok"] for r in rounds),
            "reload_ms_median": round(statistics.median(ms), 1),
            "reload_ms_max": round(max(ms), 1),
            "reload_ms_median_by_change": {
                k: round(statistics.median(v), 1) for k, v in by_kind.items()
            },
            "untouched_sensors": len(untouched),
            "untouched_quiet_window": delta(quiet0, quiet1),
            "untouched_reload_window": delta(quiet1, busy1),
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=500)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--every", type=float, default=2.0)
    a = parser.parse_args()
    if not 20 <= a.sensors <= MAX_SENSORS or not 5 <= a.window <= 120 or a.every < 0.5:
        parser.error(f"--sensors 20..{MAX_SENSORS}, --window 5..120, --every >= 0.5")
    print(json.dumps(run(a.sensors, a.window, a.every), indent=2))


if __name__ == "__main__":
    main()
