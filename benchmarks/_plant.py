"""agent_scale.py --plant: a plant of about 2000 sensors on a flaky network, as a user runs it.

Modbus: 3 hosts (127.0.0.1-3, one ``edge-sim modbus`` process each) x 3 ports x 222 unit
ids = 1998 QM30VT2 sensors polled every second, every 10th unit id answering garbage
(0xFFFF, 0, NaN, 32.766 mm/s one code under full scale, a fixed 45 mm/s: a 10x jump);
MQTT: NCD sensors through a real mosquitto (``edge-sim mqtt``, 1 msg/s each, 10 % of
messages garbage); one HTTP uplink to ``edge-sim backend``. Phases, each measured from
outside (CPU from /proc, RSS, the longest event-loop lag from /metrics scraped every 2 s,
readings from /metrics, sensor states from /healthz):

1. steady: the plant as it is;
2. hosts_down: one host of three (666 sensors) killed at once (SIGKILL);
3. hosts_back: the host back on the same ports, until every Modbus sensor not answering
   garbage is ``ok`` again;
4. backend_down: the backend stopped for --backend-down-s (RSS sampled every 2 s);
5. backend_back: the backend back on the same port and database, until the uplink has
   nothing pending.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import _scrape  # noqa: E402  (beside this script)

from simulators.ncd import mac  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
PORTS_PER_HOST = 3
UNITS = 222
# Every 10th unit id answers garbage, one kind each in turn.
GARBAGE = ("healthy,ffff", "healthy,zero", "healthy,nan", "velocity=32.766", "velocity=45")
TOKEN = "bench-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _garbage(unit: int) -> str | None:
    return GARBAGE[(unit // 10) % len(GARBAGE)] if unit % 10 == 0 else None


def _free_base(host: str, n: int) -> int:
    """A port P with P..P+n-1 free on host (the simulator's --port with --endpoints)."""
    for _ in range(200):
        base = free_port()
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.bind((host, base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


class Proc:
    """A simulator process that prints one READY line."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log, self.proc = args, log, None
        self.info: dict[str, Any] = {}

    def start(self) -> None:
        err = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simulators.cli", *self.args],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=err, text=True, cwd=REPO,
        )  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY "):
                self.info = json.loads(line[6:])
                return
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(f"{self.args[0]} simulator did not start: see {self.log}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def write_config(path: Path, tmp: Path, bases: list[int], broker: int, mqtt_n: int,
                 backend: int, health: int) -> int:  # fmt: skip
    """The agent's file; returns the number of sensors."""
    lines = ["gateway: {id: plant}", "assets:"]
    n_assets = 100
    for a in range(n_assets):
        lines.append(
            f"  - {{id: a{a}, machine: {{standard: iso10816-3, group: 2, foundation: rigid, "
            "rpm: 1480}}"
        )
    lines.append("mqtt:")
    lines.append(f"  - {{id: broker, host: 127.0.0.1, port: {broker}}}")
    lines.append("sensors:")
    n = 0
    for host, base in zip(HOSTS, bases, strict=True):
        for port in range(base, base + PORTS_PER_HOST):
            for unit in range(1, UNITS + 1):
                lines.append(
                    f"  - {{id: s{n}, asset: a{n % n_assets}, modbus: {{host: {host}, "
                    f"port: {port}, device_id: {unit}, timeout_s: 0.5}}}}"
                )
                n += 1
    for i in range(1, mqtt_n + 1):
        lines.append(
            f"  - {{id: m{i}, asset: a{i % n_assets}, channels: [z, x], mqtt: {{broker: broker, "
            f'topic: "ncd/vibration/+", decoder: ncd-processed, key: "{mac(i)}", '
            'key_from: "payload:addr"}}'
        )
        n += 1
    lines.append(
        f'uplinks:\n  - http: {{url: "http://127.0.0.1:{backend}/v1/alerts", token: {TOKEN}}}'
    )
    lines.append("sensor_faults: {endpoint_silent_s: 10}")
    lines.append(f'store: {{path: "{tmp / "outbox.db"}", max_bytes: 1GiB}}')
    lines.append(f"health: {{port: {health}}}")
    lines.append(f'control: {{socket: "{tmp / "control.sock"}"}}')
    path.write_text("\n".join(lines) + "\n")
    return n


def metrics(port: int) -> dict[str, float]:
    """GET /metrics, summed over labels (a loaded agent gets 15 s to answer)."""
    return _scrape.metrics(port, timeout_s=15)


def healthz(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=15) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))
    except OSError:
        return {}


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def states(port: int, prefix: str = "s") -> dict[str, int]:
    out: dict[str, int] = {}
    for s in healthz(port).get("sensors", []):
        if s.get("id", s.get("sensor_id", "")).startswith(prefix):
            out[s["state"]] = out.get(s["state"], 0) + 1
    return out


class Window:
    """One phase: CPU, RSS, the longest loop lag (from /metrics every 2 s), counters."""

    def __init__(self, pid: int, health: int) -> None:
        self.pid, self.health = pid, health
        self.m0 = metrics(health)
        self.c0, self.t0 = cpu_s(pid), time.monotonic()
        self.lag, self.rss, self.last = 0.0, [rss_mb(pid)], self.m0

    def sample(self) -> dict[str, float]:
        self.last = metrics(self.health)
        self.lag = max(self.lag, self.last.get("edge_loop_lag_seconds_max", 0.0))
        self.rss.append(rss_mb(self.pid))
        return self.last

    def run(self, seconds: float, until: Any = None) -> float:
        """Sample every 2 s for ``seconds`` or until ``until(metrics)``; its duration."""
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            time.sleep(2.0)
            m = self.sample()
            if until is not None and until(m):
                break
        return time.monotonic() - start

    def result(self) -> dict[str, Any]:
        span = time.monotonic() - self.t0
        m0, m1 = self.m0, self.last

        def d(k: str) -> float:
            return m1.get(k, 0.0) - m0.get(k, 0.0)

        return {
            "window_s": round(span, 1),
            "cpu_share_of_one_core": round((cpu_s(self.pid) - self.c0) / span, 3),
            "loop_lag_max_s": round(self.lag, 3),
            "rss_mb_first_last_max": [
                round(self.rss[0], 1),
                round(self.rss[-1], 1),
                round(max(self.rss), 1),
            ],
            "readings_per_s": round(d("edge_readings_total") / span, 1),
            "dropped": d("edge_readings_dropped_total"),
            "unconfirmed": d("edge_channel_unconfirmed_readings_total"),
            "bad_values": d("edge_sensor_bad_values_total"),
            "uplink_pending": m1.get("edge_uplink_pending"),
        }


def backend_alerts(db: Path, killed: range) -> dict[str, int]:
    """The alerts the backend stored, by kind and state (a sensor_fault by what it is for:
    host:, network:, broker:, a device of the killed host, another sensor)."""
    out: dict[str, int] = {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        rows = con.execute("SELECT body FROM alerts").fetchall()
        con.close()
    except sqlite3.Error:
        return out
    for (body,) in rows:
        a = json.loads(body)
        kind, sid = a.get("kind", "?"), (a.get("sensor") or {}).get("id", "")
        if kind == "sensor_fault" and ":" in sid:
            kind += ":" + sid.split(":")[0]
        elif kind == "sensor_fault" and sid[1:].isdigit() and int(sid[1:]) in killed:
            kind += ":device-of-killed-host"
        elif kind == "sensor_fault":
            kind += ":other-device"
        key = f"{kind}/{a.get('state', '?')}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def run_plant(src: Path, *, mqtt_n: int, warmup_s: float, window_s: float,
              backend_down_s: float) -> dict[str, Any]:  # fmt: skip
    """One agent (the checkout at ``src``) through the five phases."""
    tmp = Path(tempfile.mkdtemp(prefix="edge-plant-"))
    procs: list[Proc] = []
    broker = Mosquitto(tmp / "mqtt")
    agent = None
    out: dict[str, Any] = {}
    try:
        broker.start()
        sims = []
        bases = [_free_base(h, PORTS_PER_HOST) for h in HOSTS]
        for host, base in zip(HOSTS, bases, strict=True):
            devices = []
            for u in range(1, UNITS + 1):
                devices += ["--device", f"{u}:{_garbage(u) or 'healthy'}"]
            sim = Proc(["modbus", "--host", host, "--port", str(base), "--endpoints",
                        str(PORTS_PER_HOST), *devices], tmp / f"modbus-{host}.log")  # fmt: skip
            sim.start()
            sims.append(sim)
        procs += sims
        backend_port = free_port()
        backend = Proc(["backend", "--port", str(backend_port), "--db", str(tmp / "backend.db"),
                        "--token", TOKEN], tmp / "backend.log")  # fmt: skip
        backend.start()
        procs.append(backend)
        health = free_port()
        cfg = tmp / "agent.yaml"
        n = write_config(cfg, tmp, bases, broker.port, mqtt_n, backend_port, health)
        total_s = warmup_s + 6 * window_s + backend_down_s + 300
        pub = subprocess.Popen(
            [sys.executable, "-m", "simulators.cli", "mqtt", "--port", str(broker.port),
             "--sensors", str(mqtt_n), "--rate", "1", "--garbage", "0.1",
             "--duration", str(int(total_s)), "--json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=REPO,
        )  # fmt: skip
        with (tmp / "agent.log").open("w") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "-c", str(cfg), "--log-level",
                 "WARNING"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, cwd=src,
            )  # fmt: skip
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120 and not healthz(health):
            time.sleep(0.5)
        out["sensors"] = n
        out["healthz_after_s"] = round(time.monotonic() - t0, 1)
        time.sleep(warmup_s)

        w = Window(agent.pid, health)
        w.run(window_s)
        out["steady"] = w.result() | {"modbus_states": states(health)}

        w = Window(agent.pid, health)
        killed = range(2 * PORTS_PER_HOST * UNITS, 3 * PORTS_PER_HOST * UNITS)
        out["alerts_before_kill"] = backend_alerts(tmp / "backend.db", killed)
        sims[2].stop(signal.SIGKILL)
        w.run(2 * window_s)
        out["hosts_down"] = w.result() | {"modbus_states": states(health)}

        w = Window(agent.pid, health)
        sims[2].start()
        healthy = 3 * PORTS_PER_HOST * (UNITS - UNITS // 10)
        back = time.monotonic()
        took = None
        while time.monotonic() - back < 3 * window_s:
            w.sample()
            if states(health).get("ok", 0) >= healthy:
                took = time.monotonic() - back
                break
            time.sleep(2.0)
        out["hosts_back"] = w.result() | {
            "all_healthy_ok_after_s": None if took is None else round(took, 1),
            "modbus_states": states(health),
        }
        out["alerts_before_backend_down"] = backend_alerts(tmp / "backend.db", killed)

        w = Window(agent.pid, health)
        backend.stop()
        w.run(backend_down_s)
        out["backend_down"] = w.result()

        w = Window(agent.pid, health)
        backend.start()
        caught = w.run(180.0, until=lambda m: m.get("edge_uplink_pending", 1) == 0)
        out["backend_back"] = w.result() | {"pending_zero_after_s": round(caught, 1)}
        out["alerts"] = backend_alerts(tmp / "backend.db", killed)
        out["agent_log_lines"] = sum(1 for _ in (tmp / "agent.log").open())
        pub.terminate()
        pub.wait(timeout=20)
        t_stop = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=60)
        out["stop"] = {"s": round(time.monotonic() - t_stop, 2), "exit": code}
        return out
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        for p in procs:
            p.stop()
        broker.stop()
        if os.environ.get("EDGE_PLANT_KEEP"):
            print(f"kept {tmp}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def outage_tick_cost() -> list[dict[str, Any]]:
    """CPU time of one evaluation of the outage groups (agent.sensor_watch._hosts, run
    once a second) in process, on Peers built as the agent builds them, per plant shape:
    whether it grows faster than the sensors (O(sensors^2), O(sensors x hosts))."""
    import logging

    from agent.sensor_watch import _hosts
    from drivers.modbus import NETWORK, Peers

    logging.disable(logging.CRITICAL)
    out = []
    shapes = ((3, 3, 222), (3, 3, 888), (9, 1, 222), (36, 1, 222), (500, 1, 1), (2000, 1, 1),
              (4000, 1, 1), (1000, 1, 2), (2000, 1, 2))  # fmt: skip
    for n_hosts, ports, units in shapes:
        for silent in (0, n_hosts // 3):
            net = Peers(NETWORK)
            peers, places = [net], {}
            for h in range(n_hosts):
                host = f"10.1.{h // 250}.{h % 250}"
                group = Peers(host, host=host, level="host")
                peers.append(group)
                for p in range(ports):
                    ep = Peers(f"{host}:{502 + p}", host=host)
                    ep.host_group, ep.network, ep.decide_within_s = group, net, 30.0
                    peers.append(ep)
                    for u in range(units):
                        sid = f"s{h}-{p}-{u}"
                        for g in ep.groups:
                            g.join(sid, 1.5)
                        places[sid] = (ep.address, host)
            quiet = time.monotonic() - 100
            for ep in peers:
                if ep.level == "endpoint" and int(ep.host.split(".")[-1]) < silent:
                    for g in ep.groups:
                        g.last_answer = quiet
                    for f in (1, 2, 3):
                        for sid in list(ep.members):
                            judge = ep.judge
                            if judge is not None:
                                judge.failed(sid, f, quiet, "refused", lambda: None)
            t0, k = time.process_time(), 0
            while time.process_time() - t0 < 0.5:
                _hosts(peers, places)
                k += 1
            per = (time.process_time() - t0) / k
            n = n_hosts * ports * units
            out.append({"sensors": n, "hosts": n_hosts, "endpoints_per_host": ports,
                        "silent_hosts": silent, "per_tick_ms": round(per * 1e3, 3),
                        "per_sensor_us": round(per / n * 1e6, 3)})  # fmt: skip
    logging.disable(logging.NOTSET)
    return out
