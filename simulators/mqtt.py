"""``edge-sim mqtt``: wireless vibration sensors (NCD.io style) publishing to an MQTT broker.

    edge-sim mqtt --port 1883 --sensors 10 --sensor 3:degrade --sensor 4:dead --malformed 0.2

Each sensor N has a fixed MAC (``00:13:a2:00:41:9b:0c:01`` for 1) and publishes processed
readings on ``ncd/vibration/<mac>`` (``--rate`` per second, default 1; ``--nested`` puts the
fields under ``sensor_data``) and waveform snapshots on ``ncd/waveform/<mac>``
(``--waveform-rate``, default none; ``--encoding int16-b64`` for base64 int16 counts).
Behaviours (``--sensor IDX[-IDX]:BEHAVIOUR``): healthy, degrade (velocity RMS through ISO
zones B, C and D within ``--life-s``, the Modbus simulator's bearing), dead (never
publishes), garbage (valid JSON, wrong values: sentinels, "NaN" strings, negatives, wrong
types, missing fields, timestamps far off) and malformed (broken, truncated, not UTF-8,
too deep, oversized). ``--garbage F`` and ``--malformed F`` add hostile messages making up
that fraction of everything published, leaving the good ones as they are.
``--femto PATH`` replays a recording (a FEMTO .npz such as
../shared/data/femto/Bearing1_1, or a PRONOSTIA CSV folder) as waveform messages with
channels h and v, ``--speedup`` times faster than recorded, as one more sensor.

QoS 1 by default; stops after ``--count`` messages or ``--duration`` seconds (or SIGTERM),
then prints one summary line (``--json``: a JSON object). SIGUSR1 repairs every degrading
sensor. Prints ``READY {...}`` (broker, sensors and their MACs) once connected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from simulators import ncd
from simulators._mqtt_plan import KINDS, Message, Plan, parse_sensor_specs
from simulators._sim import StartError

log = logging.getLogger("edge_sim.mqtt")

WORKERS = 64  # publishes awaiting their PUBACK at once
RECONNECT_S = (0.2, 2.0)  # first and capped wait between reconnects
DRAIN_TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``edge-sim mqtt`` options to ``parser``."""
    b = parser.add_argument_group("broker")
    b.add_argument("--host", default="127.0.0.1", help="broker address (default loopback)")
    b.add_argument("--port", type=int, default=None, help="broker port (1883, 8883 with TLS)")
    b.add_argument("--tls", action="store_true", help="connect with TLS")
    b.add_argument("--ca-file", help="CA certificate to verify the broker (implies --tls)")
    b.add_argument("--cert-file", help="client certificate (with --key-file)")
    b.add_argument("--key-file", help="client key")
    b.add_argument("--username", help="MQTT user name")
    b.add_argument(
        "--password-file", help="file holding the password (else $EDGE_SIM_MQTT_PASSWORD)"
    )
    b.add_argument("--client-id", default="", help="MQTT client id (default: the broker's)")
    b.add_argument("--qos", type=int, choices=(0, 1, 2), default=1, help="QoS (default 1)")
    b.add_argument("--mqtt-version", choices=("3.1.1", "5"), default="3.1.1")
    b.add_argument(
        "--connect-timeout", type=float, default=10.0, help="give up if no broker by then, s"
    )
    s = parser.add_argument_group("sensors")
    s.add_argument("--sensors", type=int, default=None, help="number of sensors (default 1)")
    s.add_argument(
        "--sensor",
        action="append",
        default=[],
        metavar="IDX:BEHAVIOUR",
        help="IDX[-IDX]:healthy|degrade|dead|garbage|malformed; repeatable (default healthy)",
    )
    s.add_argument("--rate", type=float, default=1.0, help="processed readings/s per sensor")
    s.add_argument("--waveform-rate", type=float, default=0.0, help="snapshots/s per sensor")
    s.add_argument("--flood", action="store_true", help="ignore rates: as fast as acked")
    s.add_argument("--nested", action="store_true", help="fields under sensor_data")
    s.add_argument("--encoding", choices=("json", "int16-b64"), default="json")
    s.add_argument("--samples", type=int, default=2560, help="samples per snapshot axis")
    s.add_argument("--odr-hz", type=float, default=25600.0, help="snapshot sampling rate")
    s.add_argument("--garbage", type=float, default=0.0, help="fraction of garbage messages")
    s.add_argument("--malformed", type=float, default=0.0, help="fraction of malformed ones")
    s.add_argument("--oversize-bytes", type=int, default=2 * 2**20, help="oversized payload")
    s.add_argument("--life-s", type=float, default=60.0, help="degrade: seconds to 8 mm/s")
    s.add_argument("--seed", type=int, default=0, help="noise seed")
    s.add_argument("--topic-prefix", default="ncd", help="topics PREFIX/vibration/<mac>, ...")
    f = parser.add_argument_group("recording replay")
    f.add_argument("--femto", type=Path, help="FEMTO .npz (or PRONOSTIA folder) to replay")
    f.add_argument("--speedup", type=float, default=1.0, help="replay this many times faster")
    f.add_argument("--femto-every", type=int, default=1, help="replay every Nth snapshot")
    r = parser.add_argument_group("bounds and output")
    r.add_argument("--count", type=int, default=0, help="stop after N messages (0: no limit)")
    r.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0: none)")
    r.add_argument("--json", action="store_true", help="summary as one JSON object")


def check_arguments(args: argparse.Namespace) -> str | None:
    """A one-line problem with the options, or None."""
    if args.sensors is None:
        args.sensors = 0 if args.femto else 1
    if not 0 <= args.sensors <= ncd.MAX_SENSORS - 1:
        return f"--sensors must lie within 0..{ncd.MAX_SENSORS - 1}"
    try:
        parse_sensor_specs(args.sensor, args.sensors)
    except ValueError as exc:
        return str(exc)
    if args.rate < 0 or args.waveform_rate < 0 or args.speedup <= 0 or args.femto_every < 1:
        return "--rate and --waveform-rate must be >= 0, --speedup > 0, --femto-every >= 1"
    if not (
        0 <= args.garbage < 1 and 0 <= args.malformed < 1 and args.garbage + args.malformed < 1
    ):
        return "--garbage and --malformed are fractions of the stream: each >= 0, sum < 1"
    if args.samples < 16 or args.odr_hz <= 0:
        return "--samples must be >= 16 and --odr-hz > 0"
    if args.count < 0 or args.duration < 0:
        return "--count and --duration must be >= 0"
    if args.femto is not None and _femto_path(args.femto) is None:
        return f"--femto {args.femto}: no such file or folder (nor {args.femto}.npz)"
    if bool(args.cert_file) != bool(args.key_file):
        return "--cert-file and --key-file go together"
    return None


def _femto_path(path: Path) -> Path | None:
    for p in (path, path.with_name(path.name + ".npz")):
        if p.exists():
            return p
    return None


def _femto_snapshots(path: Path, every: int) -> Iterator[Any]:
    # The agent's own recording reader (edge-agent replay reads the same files).
    from datetime import UTC, datetime

    from agent.replay._inputs import snapshots

    start = datetime.now(UTC)
    for i, snap in enumerate(snapshots(path, start=start, interval_s=10.0, fs_hz=None)):
        if i % every == 0:
            yield snap


def make_plan(args: argparse.Namespace) -> Plan:
    """The schedule the options describe."""
    femto = None
    if args.femto is not None:
        path = _femto_path(args.femto)
        assert path is not None  # check_arguments said so
        femto = _femto_snapshots(path, args.femto_every)
    return Plan(
        parse_sensor_specs(args.sensor, args.sensors),
        rate_hz=args.rate,
        waveform_hz=args.waveform_rate,
        flood=args.flood,
        nested=args.nested,
        encoding=args.encoding,
        samples=args.samples,
        odr_hz=args.odr_hz,
        garbage=args.garbage,
        malformed=args.malformed,
        oversize_bytes=args.oversize_bytes,
        life_s=args.life_s,
        seed=args.seed,
        prefix=args.topic_prefix,
        femto=femto,
        femto_index=args.sensors + 1,
        speedup=args.speedup,
    )


def broker_port(args: argparse.Namespace) -> int:
    """--port, else 8883 with TLS and 1883 without."""
    return int(args.port or (8883 if args.tls or args.ca_file else 1883))


def _client(args: argparse.Namespace) -> aiomqtt.Client:
    tls = None
    if args.tls or args.ca_file:
        tls = ssl.create_default_context(cafile=args.ca_file)
        if args.cert_file:
            tls.load_cert_chain(args.cert_file, args.key_file)
    password = os.environ.get("EDGE_SIM_MQTT_PASSWORD")
    if args.password_file:
        password = Path(args.password_file).read_text().strip()
    v5 = args.mqtt_version == "5"
    client = aiomqtt.Client(
        args.host,
        broker_port(args),
        username=args.username,
        password=password,
        identifier=args.client_id or None,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        tls_context=tls,
        timeout=10.0,
        max_inflight_messages=WORKERS,
        max_queued_outgoing_messages=4 * WORKERS,
    )
    client.pending_calls_threshold = WORKERS  # we keep WORKERS in flight on purpose
    return client


@dataclass(slots=True)
class Tally:
    """What was published, per kind; what failed; how often we reconnected."""

    published: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    reconnects: int = 0
    t0: float = field(default_factory=time.monotonic)
    sent: int = 0  # handed to a publisher (published + failed + in flight)

    def summary(self) -> dict[str, Any]:
        return {
            "published": sum(self.published.values()),
            "per_kind": {k: self.published.get(k, 0) for k in KINDS},
            "failed": self.failed,
            "reconnects": self.reconnects,
            "seconds": round(time.monotonic() - self.t0, 3),
        }


def summary_line(s: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in s["per_kind"].items() if n)
    return (
        f"edge-sim mqtt: published {s['published']} messages in {s['seconds']:.1f} s"
        f" ({kinds or 'none'}); {s['failed']} failed, {s['reconnects']} reconnects"
    )


class Publisher:
    """Feeds a plan's messages to the broker until it is done, a bound is hit or stopped."""

    def __init__(self, plan: Plan, args: argparse.Namespace, stop: asyncio.Event) -> None:
        self.plan, self.args, self.stop = plan, args, stop
        self.tally = Tally()
        self.deadline = time.monotonic() + args.duration if args.duration else None
        self.done = False
        self.announced = False

    def _bounded(self) -> bool:
        if self.stop.is_set() or (self.args.count and self.tally.sent >= self.args.count):
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    async def run(self) -> Tally:
        wait = RECONNECT_S[0]
        while not self.done and not self._bounded():
            # A fresh client per connection: aiomqtt 2.5.1 re-entered after a lost connection
            # logs "Bad file descriptor" from add_writer at the final disconnect.
            client = _client(self.args)
            try:
                async with client:
                    wait = RECONNECT_S[0]
                    self._announce()
                    await self._pump(client)
            except aiomqtt.MqttError as exc:
                if (
                    not self.announced
                    and time.monotonic() - self.tally.t0 > self.args.connect_timeout
                ):
                    where = f"{self.args.host}:{broker_port(self.args)}"
                    raise StartError(f"cannot reach the broker at {where}: {exc}") from None
                if self.announced:
                    self.tally.reconnects += 1
                    log.warning("broker connection lost (%s); reconnecting", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), wait)
                wait = min(wait * 2, RECONNECT_S[1])
        if not self.announced and not self.stop.is_set():  # --duration ran out first
            where = f"{self.args.host}:{broker_port(self.args)}"
            raise StartError(f"cannot reach the broker at {where} within --duration")
        return self.tally

    def _announce(self) -> None:
        if self.announced:
            return
        self.announced = True
        self.plan.restart_clock()
        self.tally.t0 = self.plan.t0
        info = {
            "host": self.args.host,
            "port": broker_port(self.args),
            "sensors": [
                {"index": s.index, "mac": s.mac, "behaviour": s.behaviour}
                for s in self.plan.sensors
            ],
        }
        if self.plan.femto is not None:
            info["femto"] = {"index": self.plan.femto_index, "mac": ncd.mac(self.plan.femto_index)}
        print("READY " + json.dumps(info), flush=True)

    async def _pump(self, client: aiomqtt.Client) -> None:
        queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=2 * WORKERS)
        lost: list[BaseException] = []

        async def worker() -> None:
            while True:
                msg = await queue.get()
                try:
                    await client.publish(msg.topic, msg.payload, qos=self.args.qos)
                    self.tally.published[msg.kind] += 1
                except aiomqtt.MqttError as exc:
                    self.tally.failed += 1
                    lost.append(exc)
                finally:
                    queue.task_done()

        workers = [asyncio.create_task(worker(), name=f"publish[{i}]") for i in range(WORKERS)]
        try:
            while not self._bounded() and not lost:
                item = self.plan.next()
                if item is None:
                    self.done = True
                    break
                due, msg = item
                delay = due - self.plan.elapsed()
                if delay > 0 and not self.args.flood:
                    if self.deadline is not None:
                        delay = min(delay, self.deadline - time.monotonic())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), max(delay, 0.0))
                    if self._bounded():  # the deadline came before this message was due
                        break
                await queue.put(msg)
                self.tally.sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.join(), DRAIN_TIMEOUT_S)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if lost:
            raise aiomqtt.MqttError(str(lost[0]))


async def serve(args: argparse.Namespace) -> None:
    """Publish until done, a bound, SIGTERM or SIGINT; then print the summary."""
    plan = make_plan(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handlers = {signal.SIGTERM: stop.set, signal.SIGINT: stop.set, signal.SIGUSR1: plan.repair}
    for sig, handler in handlers.items():
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler)
    publisher = Publisher(plan, args, stop)
    try:
        tally = await publisher.run()
    finally:
        for sig in handlers:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    s = tally.summary()
    print(json.dumps(s, sort_keys=True) if args.json else summary_line(s), flush=True)
