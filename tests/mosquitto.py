"""A real mosquitto broker for tests: our own process on a free loopback port, never the
system's (1883), optionally with TLS (a CA and a server certificate made with openssl)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
READY_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Certs:
    """A test CA and a server certificate for 127.0.0.1 signed by it."""

    ca: Path
    cert: Path
    key: Path


def make_certs(folder: Path) -> Certs:
    """CA + server certificate (subjectAltName IP:127.0.0.1), via the openssl command."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
        str(ca), "-days", "2", "-subj", "/CN=edge-agent test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return Certs(ca, cert, key)


def client_cert(certs: Certs, folder: Path) -> tuple[Path, Path]:
    """A client certificate (and its key) signed by the certs' CA (mutual TLS)."""
    key, csr, cert = folder / "gw.key", folder / "gw.csr", folder / "gw.pem"

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=gw-01")  # fmt: skip
    ca_key = str(certs.ca.parent / "ca.key")
    run("x509", "-req", "-in", str(csr), "-CA", str(certs.ca), "-CAkey", ca_key,
        "-CAcreateserial", "-out", str(cert), "-days", "2")  # fmt: skip
    return cert, key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """Start, stop and restart one broker on one port, with persistence on disk.

    Args:
        folder: where its configuration, persistence and log go.
        certs: serve TLS with these (None: plain MQTT).
        acl: the text of an ACL file (None: everything allowed).
        max_packet_size: the largest MQTT packet it takes, in bytes (None: no limit). It
            announces it to MQTT 5 clients in CONNACK and disconnects a client sending more.
        message_size_limit: the largest payload it takes, in bytes (None: no limit); not
            announced: a larger QoS 1 publish gets a PUBACK 0x95 (mosquitto 2.0).
        require_certificate: with certs, a client must show a certificate signed by the CA
            (mutual TLS; mosquitto's require_certificate).
        extra: more mosquitto.conf lines (e.g. ``max_queued_messages 10``,
            ``sys_interval 0``).
    """

    def __init__(
        self,
        folder: Path,
        *,
        certs: Certs | None = None,
        acl: str | None = None,
        max_packet_size: int | None = None,
        message_size_limit: int | None = None,
        require_certificate: bool = False,
        extra: tuple[str, ...] = (),
    ):
        self.require_certificate = require_certificate
        self.extra = extra
        self.folder = folder
        self.max_packet_size = max_packet_size
        self.message_size_limit = message_size_limit
        self.port = _free_port()
        self.certs = certs
        self.acl = acl
        self.log = folder / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def _conf(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.folder}/",
            f"log_dest file {self.log}",
            "log_type all",
            "connection_messages true",
            # As root, mosquitto drops to user "mosquitto", which cannot read the test's
            # files: stay who we are (ignored when not root).
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
        ]
        if self.certs is not None:
            lines += [
                f"cafile {self.certs.ca}",
                f"certfile {self.certs.cert}",
                f"keyfile {self.certs.key}",
            ]
            if self.require_certificate:
                lines.append("require_certificate true")
        if self.max_packet_size is not None:
            lines.append(f"max_packet_size {self.max_packet_size}")
        if self.message_size_limit is not None:
            lines.append(f"message_size_limit {self.message_size_limit}")
        lines += self.extra
        if self.acl is not None:
            acl = self.folder / "acl"
            acl.write_text(self.acl)
            lines.append(f"acl_file {acl}")
        conf = self.folder / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self._conf())],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self._proc.returncode}); see {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto not listening on {self.port} within {READY_TIMEOUT_S} s")

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence then) and wait, bounded."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut: nothing saved since the last clean stop."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self, *, acl: str | None = None) -> None:
        self.stop()
        if acl is not None:
            self.acl = acl
        self.start()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Collector:
    """A subscriber with a persistent session: QoS 1 messages wait for it at the broker."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self.context = (
            None
            if broker.certs is None
            else ssl.create_default_context(cafile=str(broker.certs.ca))
        )
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def _client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        return aiomqtt.Client(
            "127.0.0.1",
            self.broker.port,
            identifier="test-collector",
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            tls_context=self.context,
        )

    async def subscribe(self) -> None:
        async with self._client() as c:
            await c.subscribe(self.topic, qos=1)

    async def collect(
        self, want: set[str], *, topics: frozenset[str] = frozenset(), timeout_s: float = 10.0
    ) -> set[str]:
        """Reconnect and take messages until every id in `want` came, and a message on
        each of `topics` (bounded); the ids seen."""
        seen: set[str] = set()
        async with self._client() as c:
            await c.subscribe(self.topic, qos=1)
            try:
                async with asyncio.timeout(timeout_s):
                    async for msg in c.messages:
                        rec = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                        self.messages.append((str(msg.topic), rec))
                        seen.add(rec.get("alert_id") or rec.get("summary_id"))
                        if want <= seen and topics <= {t for t, _ in self.messages}:
                            break
            except TimeoutError:
                pass
        return seen


class MqttProxy:
    """A TCP hop in front of a broker, for what a broker alone will not do on cue (plain
    MQTT only: it reads the client's packets):
    - `limit`: it closes the connection, without a word, when the client sends a packet
      over that many bytes: a limit nobody announces (a broker that does not say it in
      CONNACK, a middlebox);
    - `holding`: while True, it swallows the client's PUBLISH packets (never forwarded, so
      never acknowledged): a publish in flight when the broker dies;
    - `holding_acks`: while True, it swallows the client's PUBACK packets, and `cut()`
      then closes every connection: a PUBACK lost with a dying link, so the broker sends
      the message again (DUP) to the session at the next connection;
    - `pause()` / `resume()`: it stops passing the broker's bytes to the client (a client
      too slow to drain: it acknowledges nothing meanwhile, so the broker's in-flight
      window and per-client queue fill, and mosquitto drops the rest);
    - `crash_at_subscribe`: the broker is killed (SIGKILL) and started again at that many
      of the next SUBSCRIBE packets, the packet never answered: a broker crashing under
      load while the client subscribes;
    - `cut_at_subscribe`: it closes the connection `cut_after_s` after each of that many
      of the next SUBSCRIBE packets, the packet never forwarded: a network blip while the
      client subscribes (the broker runs on; a persistent session keeps what it queued).

    Attributes:
        port: where clients connect (127.0.0.1).
        cuts: connections it closed for a packet over the limit.
        held: the alert id of each PUBLISH it swallowed.
    """

    def __init__(self, broker: Mosquitto, limit: int | None = None) -> None:
        self.broker = broker
        self.limit = limit
        self.holding = False
        self.holding_acks = False
        self.acks_held = 0
        self.crash_at_subscribe = 0
        self.crashes = 0
        self.cut_at_subscribe = 0
        self.subscribes = 0  # SUBSCRIBE packets passed to the broker
        self.cut_after_s = 0.0
        self._cutting: asyncio.Task[None] | None = None
        self.port = 0
        self.cuts = 0
        self.held: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    def pause(self) -> None:
        """Stop passing the broker's bytes to the client (they wait in the sockets)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Close every connection now, without a word to either side."""
        for task in list(self._tasks):
            task.cancel()

    async def __aenter__(self) -> MqttProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            br, bw = await asyncio.open_connection("127.0.0.1", self.broker.port)
        except OSError:
            cw.close()
            return
        up = asyncio.create_task(self._packets(cr, bw))
        down = asyncio.create_task(self._bytes(br, cw))
        self._tasks |= {up, down}
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            self._tasks -= {up, down}
            bw.close()
            cw.close()

    async def _packets(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Client to broker, one whole packet at a time (fixed header, varint length)."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                header = bytearray(await src.readexactly(1))
                remaining, shift = 0, 0
                while True:
                    byte = (await src.readexactly(1))[0]
                    header.append(byte)
                    remaining |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                if self.limit is not None and len(header) + remaining > self.limit:
                    self.cuts += 1
                    return  # closes both sides: no DISCONNECT, no PUBACK
                body = await src.readexactly(remaining)
                if self.holding and header[0] >> 4 == 3:  # PUBLISH
                    ids = re.findall(rb'"alert_id":"([^"]+)"', body)
                    self.held.append(ids[0].decode() if ids else "?")
                    continue
                if self.holding_acks and header[0] >> 4 == 4:  # PUBACK
                    self.acks_held += 1
                    continue
                if self.crash_at_subscribe and header[0] >> 4 == 8:  # SUBSCRIBE
                    self.crash_at_subscribe -= 1
                    self.crashes += 1
                    await asyncio.to_thread(self._crash)
                    return
                if self.cut_at_subscribe and header[0] >> 4 == 8:  # SUBSCRIBE
                    self.cut_at_subscribe -= 1
                    me = asyncio.current_task()
                    assert me is not None
                    self._cutting = asyncio.create_task(self._cut_later(me))
                    continue  # what the client sends meanwhile (PUBACKs) still goes through
                self.subscribes += header[0] >> 4 == 8
                dst.write(bytes(header) + body)
                await dst.drain()

    async def _cut_later(self, task: asyncio.Task[Any]) -> None:
        await asyncio.sleep(self.cut_after_s)
        self.cuts += 1
        task.cancel()

    def _crash(self) -> None:
        self.broker.kill()
        self.broker.start()

    async def _bytes(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()


def established_to(port: int) -> int:
    """TCP connections of this machine in state ESTABLISHED towards 127.0.0.1:port (a
    client left connected to the test's broker)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    remote = f"0100007F:{port:04X}"
    return sum(1 for ln in lines if ln.split()[2] == remote and ln.split()[3] == "01")


async def cancel_after(task: asyncio.Task[Any], delay_s: float) -> None:
    """Cancel `task` after `delay_s` (a stop or reload landing mid-connect); it must end."""
    await asyncio.sleep(delay_s)
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.done()


async def assert_nothing_outlives(before: set[asyncio.Task[Any]], port: int) -> None:
    """No task started since `before` is left, and no connection to the broker at `port`
    (paho connects in a thread no cancellation stops: give it time to show up)."""
    await asyncio.sleep(0.5)
    left = asyncio.all_tasks() - before - {asyncio.current_task()}
    assert not left, sorted(t.get_name() for t in left)
    assert established_to(port) == 0, "a connection to the broker was left open"
