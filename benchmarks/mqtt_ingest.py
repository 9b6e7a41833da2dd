"""MQTT ingestion as a user runs it: `edge-sim mqtt` -> mosquitto -> `edge-agent run`.

Every figure comes from outside the agent: its CPU time from /proc, its readings from
GET /metrics (``edge_readings_total``: readings analysed by the monitor). Each case starts
its own agent on a generated configuration (sensors on one wildcard subscription keyed by
the payload's ``addr``, channels z and x, an SQLite store in a temporary folder, no
uplink) and a private mosquitto; the publisher is ``edge-sim mqtt`` in its own process.

- ``processed``: 50 NCD sensors flood processed readings (QoS 1); messages/s into the
  monitor (publish -> reading analysed) and the agent's CPU share over the steady part of
  the flood, hence messages per second of agent CPU (one core). Target >= 5000/s.
- ``waveform`` / ``waveform-int16``: 8 sensors flood waveform snapshots (3 axes x 2560
  samples at 25.6 kHz; JSON floats, or base64 int16); the agent extracts the features of
  two channels per message: snapshots (one channel, 2560 samples) per second and per
  second of agent CPU. Target >= 500/s on one core.
- ``fleet``: 200 NCD sensors at 1 Hz for ``--window`` s after a warm-up: the agent's CPU
  share of one core (target < 10 %), beside the same agent idle before the sensors start.
- ``fleet-floor``: the same 200 sensors into a bare aiomqtt subscriber (QoS 1, each message
  parsed as JSON, nothing else) in its own process: the part of ``fleet`` any agent built
  on aiomqtt pays.

``--profile DIR`` runs each agent under cProfile and writes DIR/<case>.prof plus the top
functions to stderr. Prints one JSON object.

    python benchmarks/mqtt_ingest.py [--cases processed waveform waveform-int16 fleet]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import _scrape  # noqa: E402  (beside this script)

from simulators.ncd import mac  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CHANNELS = 2  # z and x: two readings (two feature extractions for a waveform) per message
POLL_S = 0.25
STALL_S = 3.0  # no new reading for this long after the publisher finished: the end
CASE_TIMEOUT_S = 90.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def metrics(port: int) -> dict[str, float]:
    """GET /metrics, summed over labels: sample name -> value."""
    return _scrape.metrics(port)


def counters(m0: dict[str, float], m1: dict[str, float]) -> dict[str, float]:
    """What the MQTT input and the pipeline counted between two scrapes (non-zero only)."""
    out = {}
    for k, v in m1.items():
        mine = k.endswith("_total") and k.startswith(("edge_mqtt_", "edge_readings"))
        if mine and v - m0.get(k, 0.0):
            out[k] = v - m0.get(k, 0.0)
    return out


class Broker(Mosquitto):
    """The tests' mosquitto, tuned so that a flood measures the agent, not the broker's
    defaults: by default mosquitto keeps at most 20 QoS 1 messages in flight to a client
    (then the rate is 20 per round trip, whatever the client's speed) and drops those
    beyond 1000 queued for it."""

    def _conf(self) -> Path:
        conf = super()._conf()
        extra = "max_inflight_messages 1000\nmax_queued_messages 0\nmax_queued_bytes 0\n"
        conf.write_text(conf.read_text() + extra)
        return conf


def write_config(path: Path, *, sensors: int, decoder: str, topic: str, broker: int,
                 health: int, store: Path) -> None:  # fmt: skip
    lines = [
        "gateway: {id: bench}",
        "assets:",
        "  - {id: a0, machine: {standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}}",
        "mqtt:",
        f"  - {{id: bench-broker, host: 127.0.0.1, port: {broker}}}",
        "sensors:",
    ]
    for i in range(1, sensors + 1):
        lines.append(
            f"  - {{id: s{i}, asset: a0, channels: [z, x], mqtt: {{broker: bench-broker, "
            f'topic: "{topic}", decoder: {decoder}, key: "{mac(i)}", key_from: "payload:addr"}}}}'
        )
    lines.append(f'store: {{path: "{store}", max_bytes: 1GiB}}')
    lines.append(f"health: {{port: {health}}}")
    path.write_text("\n".join(lines) + "\n")


@contextmanager
def agent_process(cfg: Path, log: Path, profile: Path | None) -> Iterator[subprocess.Popen[bytes]]:
    head = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else [])]
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*head, "-m", "agent.cli", "run", "-c", str(cfg), "--log-level", "WARNING"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO,
        )  # fmt: skip
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def edge_sim(broker: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "mqtt", "--port", str(broker), "--json", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=REPO,
    )  # fmt: skip


def finish(sim: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = sim.communicate(timeout=CASE_TIMEOUT_S)
    if sim.returncode != 0:
        raise RuntimeError(f"edge-sim mqtt failed: {err.strip()[-500:]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def wait_ready(agent: subprocess.Popen[bytes], health: int, broker: int, sensors: int,
               wave: bool, log: Path) -> None:  # fmt: skip
    """Until the agent answers /metrics and analyses readings of a short warm-up."""
    deadline = time.monotonic() + 30
    while not metrics(health):
        if agent.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"agent did not start: {log.read_text()[-1500:]}")
        time.sleep(0.2)
    kind = ["--rate", "0", "--waveform-rate", "5"] if wave else ["--rate", "5"]
    while time.monotonic() < deadline:  # the subscription may lag the HTTP endpoint
        finish(edge_sim(broker, "--sensors", str(sensors), *kind, "--duration", "0.5"))
        time.sleep(0.5)
        if metrics(health).get("edge_readings_total", 0) > 0:
            return
    raise RuntimeError(f"no reading analysed from the warm-up: {log.read_text()[-1500:]}")


def flood_case(name: str, broker: int, tmp: Path, *, sensors: int, count: int, wave: bool,
               encoding: str, profile: Path | None) -> dict[str, Any]:  # fmt: skip
    health = free_port()
    cfg, log = tmp / f"{name}.yaml", tmp / f"{name}.log"
    decoder = "waveform-json" if wave else "ncd-processed"
    topic = "ncd/waveform/+" if wave else "ncd/vibration/+"
    write_config(cfg, sensors=sensors, decoder=decoder, topic=topic, broker=broker,
                 health=health, store=tmp / f"{name}.db")  # fmt: skip
    prof = profile / f"{name}.prof" if profile else None
    with agent_process(cfg, log, prof) as agent:
        wait_ready(agent, health, broker, sensors, wave, log)
        time.sleep(1.0)  # the warm-up's last readings
        m0 = metrics(health)
        r0 = m0.get("edge_readings_total", 0.0)
        target = count * CHANNELS
        kind = ["--rate", "0", "--waveform-rate", "1"] if wave else ["--rate", "1"]
        t_start = time.monotonic()
        sim = edge_sim(broker, "--sensors", str(sensors), *kind, "--flood", "--count",
                       str(count), "--encoding", encoding, "--duration", "60")  # fmt: skip
        samples: list[tuple[float, float, float]] = []  # (t, readings since r0, agent CPU s)
        last_change, last = time.monotonic(), -1.0
        while time.monotonic() - t_start < CASE_TIMEOUT_S:
            time.sleep(POLL_S)
            got = metrics(health).get("edge_readings_total", 0.0) - r0
            samples.append((time.monotonic(), got, cpu_s(agent.pid)))
            if got != last:
                last_change, last = time.monotonic(), got
            if got >= target:
                break
            if sim.poll() is not None and time.monotonic() - last_change > STALL_S:
                break
        published = finish(sim)
        m1 = metrics(health)
    t_end = next((t for t, r, _ in samples if r >= last), samples[-1][0])
    lo = next(s for s in samples if s[1] >= 0.1 * last)
    hi = next(s for s in samples if s[1] >= 0.9 * last)
    span, cpu = hi[0] - lo[0], hi[2] - lo[2]
    per_msg = (hi[1] - lo[1]) / CHANNELS
    unit = "snapshots" if wave else "messages"
    per_s = (hi[1] - lo[1]) / span if wave else per_msg / span
    per_cpu = (hi[1] - lo[1]) / cpu if wave else per_msg / cpu
    return {
        "sensors": sensors,
        "encoding": encoding,
        "published": published["published"],
        "publisher_seconds": published["seconds"],
        "messages_analysed": int(last // CHANNELS),
        "end_to_end_s": round(t_end - t_start, 2),
        "end_to_end_messages_per_s": round(last / CHANNELS / (t_end - t_start), 1),
        "steady_window_s": round(span, 2),
        f"steady_{unit}_per_s": round(per_s, 1),
        "agent_cpu_share_of_one_core": round(cpu / span, 3) if span else None,
        f"{unit}_per_agent_cpu_s": round(per_cpu, 1) if cpu else None,
        "counted": counters(m0, m1),
    }


def fleet_case(broker: int, tmp: Path, *, sensors: int, window: float, warmup: float,
               profile: Path | None) -> dict[str, Any]:  # fmt: skip
    health = free_port()
    cfg, log = tmp / "fleet.yaml", tmp / "fleet.log"
    write_config(cfg, sensors=sensors, decoder="ncd-processed", topic="ncd/vibration/+",
                 broker=broker, health=health, store=tmp / "fleet.db")  # fmt: skip
    prof = profile / "fleet.prof" if profile else None
    with agent_process(cfg, log, prof) as agent:
        wait_ready(agent, health, broker, sensors, False, log)
        c0, t0 = cpu_s(agent.pid), time.monotonic()
        time.sleep(min(window, 10.0))
        idle = (cpu_s(agent.pid) - c0) / (time.monotonic() - t0)
        sim = edge_sim(broker, "--sensors", str(sensors), "--rate", "1",
                       "--duration", str(warmup + window + 2))  # fmt: skip
        time.sleep(warmup)
        m0, c0, t0 = metrics(health), cpu_s(agent.pid), time.monotonic()
        time.sleep(window)
        m1, c1, t1 = metrics(health), cpu_s(agent.pid), time.monotonic()
        published = finish(sim)
    span = t1 - t0
    readings = m1.get("edge_readings_total", 0) - m0.get("edge_readings_total", 0)
    return {
        "sensors": sensors,
        "rate_hz": 1.0,
        "window_s": round(span, 1),
        "messages_analysed_per_s": round(readings / CHANNELS / span, 1),
        "agent_cpu_percent_of_one_core": round(100 * (c1 - c0) / span, 2),
        "idle_agent_cpu_percent_of_one_core": round(100 * idle, 2),
        "published": published["published"],
        "counted": counters(m0, m1),
    }


# The floor under any agent on aiomqtt: subscribe (QoS 1), take each message, parse it.
_BARE = """
import asyncio, json, sys
import aiomqtt
async def main():
    async with aiomqtt.Client("127.0.0.1", int(sys.argv[1]),
                              protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.subscribe("ncd/vibration/+", qos=1)
        print("subscribed", flush=True)
        async for m in c.messages:
            json.loads(m.payload)
asyncio.run(main())
"""


def floor_case(broker: int, *, sensors: int, window: float, warmup: float) -> dict[str, Any]:
    """A bare aiomqtt subscriber in its own process, under the fleet's load."""
    bare = subprocess.Popen(
        [sys.executable, "-c", _BARE, str(broker)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert bare.stdout is not None
        bare.stdout.readline()
        sim = edge_sim(broker, "--sensors", str(sensors), "--rate", "1",
                       "--duration", str(warmup + window + 2))  # fmt: skip
        time.sleep(warmup)
        c0, t0 = cpu_s(bare.pid), time.monotonic()
        time.sleep(window)
        c1, t1 = cpu_s(bare.pid), time.monotonic()
        finish(sim)
    finally:
        bare.kill()
        bare.wait()
    return {
        "sensors": sensors,
        "rate_hz": 1.0,
        "window_s": round(t1 - t0, 1),
        "bare_aiomqtt_cpu_percent_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 2),
    }


def print_profile(path: Path, top: int = 25) -> None:
    if not path.exists():
        print(f"{path}: no profile written (did the agent exit cleanly?)", file=sys.stderr)
        return
    print(f"== {path.name}: top {top} by own time ==", file=sys.stderr)
    pstats.Stats(str(path), stream=sys.stderr).sort_stats("tottime").print_stats(top)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=["processed", "waveform", "waveform-int16",
                                                  "fleet", "fleet-floor"])  # fmt: skip
    p.add_argument("--processed-count", type=int, default=30000)
    p.add_argument("--waveform-count", type=int, default=3000)
    p.add_argument("--fleet-sensors", type=int, default=200)
    p.add_argument("--window", type=float, default=20.0, help="fleet measuring window, s")
    p.add_argument("--warmup", type=float, default=5.0, help="fleet warm-up, s")
    p.add_argument("--profile", type=Path, help="cProfile each agent into this folder")
    args = p.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="edge-mqtt-bench-"))
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        with Broker(tmp / "broker") as broker:
            for case in args.cases:
                if case == "processed":
                    result[case] = flood_case(case, broker.port, tmp, sensors=50,
                                              count=args.processed_count, wave=False,
                                              encoding="json", profile=args.profile)  # fmt: skip
                elif case in ("waveform", "waveform-int16"):
                    enc = "int16-b64" if case.endswith("int16") else "json"
                    n = args.waveform_count * (3 if enc == "int16-b64" else 1)  # faster
                    result[case] = flood_case(case, broker.port, tmp, sensors=8,
                                              count=n, wave=True,
                                              encoding=enc, profile=args.profile)  # fmt: skip
                elif case == "fleet-floor":
                    result[case] = floor_case(broker.port, sensors=args.fleet_sensors,
                                              window=args.window, warmup=args.warmup)  # fmt: skip
                    continue
                elif case == "fleet":
                    result[case] = fleet_case(broker.port, tmp, sensors=args.fleet_sensors,
                                              window=args.window, warmup=args.warmup,
                                              profile=args.profile)  # fmt: skip
                else:
                    raise SystemExit(f"unknown case {case!r}")
                if args.profile:
                    print_profile(args.profile / f"{case}.prof")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
