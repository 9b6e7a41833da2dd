"""The broker link against a real mosquitto: TLS with a test CA, a broker killed and
restarted mid-stream, a persistent session that keeps QoS 1 messages, the size cap."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from drivers.mqtt import BrokerLink, BrokerSettings, MqttSensor, Route, Router, parse_key_from
from drivers.payloads import load_decoder
from drivers.reading import Reading
from tests.mosquitto import Mosquitto, client_cert, make_certs

pytestmark = [pytest.mark.network]

MAC = "00:13:a2:00:41:9b:0c:01"
TOPIC = f"ncd/vibration/{MAC}"


def ncd(v: float, addr: str = MAC) -> str:
    return json.dumps({"addr": addr, **{f"{a}_velocity_mm_sec": v for a in "xyz"}})


class Rig:
    """One sensor on ncd/vibration/+ (key from the payload) behind one link."""

    def __init__(self, broker: Mosquitto, **settings: Any) -> None:
        self.got: list[Reading] = []
        self.sensor = MqttSensor(
            "fan-3", decoder=load_decoder("ncd-processed"), channels=["z"], stale_after_s=60,
            sink=self.got.append, broker="b", topic="ncd/vibration/+",
        )  # fmt: skip
        route = Route("ncd/vibration/+")
        route.add(self.sensor, parse_key_from("payload:addr"), MAC, 1)
        base = {"id": "b", "host": "127.0.0.1", "port": broker.port, "client_id": "edge-t"}
        self.link = BrokerLink(BrokerSettings(**{**base, **settings}), Router([route]))

    def values(self) -> list[float]:
        return [r.features["velocity_rms_mm_s"] for r in self.got]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[BrokerLink]:
        async with link_running(self.link):
            await until(lambda: self.link.status()["connected"], 10)
            await asyncio.sleep(0.2)  # subscriptions made after CONNACK
            yield self.link
        self.link._stopped = False  # the same link may run again (a restarted agent)


@contextlib.asynccontextmanager
async def link_running(link: BrokerLink) -> AsyncIterator[BrokerLink]:
    """The link running as a task for the with-block; stopped and awaited (bounded) after."""
    task = asyncio.create_task(link.run())
    try:
        yield link
    finally:
        link.stop()
        task.cancel()
        await asyncio.wait([task], timeout=5)


async def until(pred: Any, timeout_s: float) -> float:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def publish(port: int, items: list[tuple[str, str | bytes]], **kw: Any) -> None:
    async with aiomqtt.Client("127.0.0.1", port, **kw) as c:
        for topic, body in items:
            await c.publish(topic, body, qos=1)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


async def test_tls_with_a_test_ca(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    with Mosquitto(tmp_path / "tls", certs=certs) as broker:
        import ssl

        rig = Rig(broker, tls=True, ca_file=certs.ca)
        async with rig.running() as link:
            ctx = ssl.create_default_context(cafile=str(certs.ca))
            await publish(broker.port, [(TOPIC, ncd(1.5))], tls_context=ctx)
            await until(lambda: rig.got, 5)
            assert link.settings.address.startswith("mqtts://")
        assert rig.values() == [1.5]
        # Without our CA the broker's certificate is refused: no data, an error, retries.
        stranger = Rig(broker, tls=True, reconnect_max_s=0.2)
        task = asyncio.create_task(stranger.link.run())
        await until(lambda: stranger.link.last_error is not None, 5)
        assert "CERTIFICATE_VERIFY_FAILED" in stranger.link.last_error
        stranger.link.stop()
        task.cancel()
        await asyncio.wait([task], timeout=5)


async def test_broker_killed_and_restarted_mid_stream_resumes_within_5_s(
    broker: Mosquitto,
) -> None:
    rig = Rig(broker)
    async with rig.running() as link:
        stop = asyncio.Event()
        sent: list[float] = []

        async def publisher() -> None:  # a gateway that publishes 20 per second, reconnecting
            v = 0
            while not stop.is_set():
                try:
                    async with aiomqtt.Client("127.0.0.1", broker.port, timeout=1) as c:
                        while not stop.is_set():
                            v += 1
                            await c.publish(TOPIC, ncd(float(v)), qos=1)
                            sent.append(float(v))
                            await asyncio.sleep(0.05)
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.05)

        pub = asyncio.create_task(publisher())
        await until(lambda: len(rig.got) >= 10, 5)
        assert broker._proc is not None
        broker._proc.kill()  # SIGKILL: no goodbye, no saved state
        broker._proc.wait(5)
        broker._proc = None
        await until(lambda: not link.connected, 5)
        before = len(rig.got)
        broker.start()
        restarted = time.monotonic()
        await until(lambda: len(rig.got) > before + 5, 10)
        resumed_s = time.monotonic() - restarted
        stop.set()
        await pub
    assert resumed_s < 5.0, f"ingestion resumed {resumed_s:.1f} s after the broker came back"
    assert link.connects_total == 2 and link.disconnects_total >= 1
    values = rig.values()
    assert values == sorted(values)  # in order, nothing duplicated into the past


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_persistent_session_gets_qos1_messages_sent_while_away(
    broker: Mosquitto, protocol: str
) -> None:
    rig = Rig(broker, persistent=True, protocol=protocol)
    async with rig.running():
        await publish(broker.port, [(TOPIC, ncd(1.0))])
        await until(lambda: len(rig.got) == 1, 5)
    # The agent is away: the broker queues for its session.
    await publish(broker.port, [(TOPIC, ncd(float(v))) for v in (2, 3, 4)])
    async with rig.running():
        await until(lambda: len(rig.got) == 4, 5)
    assert rig.values() == [1.0, 2.0, 3.0, 4.0]


async def test_clean_session_does_not_get_them(broker: Mosquitto) -> None:
    rig = Rig(broker)
    async with rig.running():
        await publish(broker.port, [(TOPIC, ncd(1.0))])
        await until(lambda: len(rig.got) == 1, 5)
    await publish(broker.port, [(TOPIC, ncd(2.0))])
    async with rig.running():
        await publish(broker.port, [(TOPIC, ncd(3.0))])
        await until(lambda: len(rig.got) == 2, 5)
    assert rig.values() == [1.0, 3.0]


async def test_size_cap_unknown_sensors_and_garbage_are_counted(broker: Mosquitto) -> None:
    rig = Rig(broker, max_payload_bytes=4096)
    async with rig.running() as link:
        big = json.dumps({"addr": MAC, "pad": "x" * 10_000})
        await publish(broker.port, [
            (TOPIC, big), ("ncd/vibration/other", ncd(9.0, addr="00:00:00:00:00:00:00:00")),
            (TOPIC, b"\x00\xff garbage"), (TOPIC, ncd(float("nan"))), (TOPIC, ncd(2.0)),
        ])  # fmt: skip
        await until(lambda: len(rig.got) == 2, 5)
        status = link.status()
    assert rig.got[0].quality == "bad" and rig.got[1].features["velocity_rms_mm_s"] == 2.0
    assert status["messages_total"] == 5
    # The size cap and garbage cannot be attributed (the key is in the payload): per topic.
    assert status["unrouted"] == {
        "ncd/vibration/+": {"too_large": 1, "unknown_sensor": 1, "malformed": 1}
    }
    assert dict(rig.sensor.bad) == {"not_finite": 1}


class _Locked(Mosquitto):
    """A broker that wants a client certificate from our CA and a username/password."""

    def __init__(self, folder: Path, certs: Any, passwords: Path) -> None:
        super().__init__(folder, certs=certs)
        self.passwords = passwords

    def _conf(self) -> Path:
        conf = super()._conf()
        text = conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
        conf.write_text(text + f"require_certificate true\npassword_file {self.passwords}\n")
        return conf


async def test_client_certificate_and_password_file(tmp_path: Path) -> None:
    import shutil
    import ssl
    import subprocess

    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed (Debian package mosquitto)")
    certs = make_certs(tmp_path / "certs")
    cert, key = client_cert(certs, tmp_path / "certs")
    passwords = tmp_path / "passwd"
    make = ["mosquitto_passwd", "-b", "-c", str(passwords), "gw-01", "s3cret"]
    subprocess.run(make, check=True, capture_output=True, timeout=30)  # noqa: ASYNC221 (setup)
    secret = tmp_path / "broker.pass"
    secret.write_text("s3cret\n")
    with _Locked(tmp_path / "locked", certs, passwords) as broker:
        rig = Rig(broker, tls=True, ca_file=certs.ca, cert_file=cert, key_file=key,
                  username="gw-01", password_file=secret)  # fmt: skip
        async with rig.running():
            ctx = ssl.create_default_context(cafile=str(certs.ca))
            ctx.load_cert_chain(str(cert), str(key))
            await publish(broker.port, [(TOPIC, ncd(2.5))], tls_context=ctx,
                          username="gw-01", password="s3cret")  # fmt: skip
            await until(lambda: rig.got, 5)
        assert rig.values() == [2.5]
        # A wrong password is refused; the link keeps trying and says why.
        secret.write_text("wrong\n")
        bad = Rig(broker, tls=True, ca_file=certs.ca, cert_file=cert, key_file=key,
                  username="gw-01", password_file=secret, reconnect_max_s=0.2)  # fmt: skip
        task = asyncio.create_task(bad.link.run())
        await until(lambda: bad.link.last_error is not None, 5)
        bad.link.stop()
        task.cancel()
        await asyncio.wait([task], timeout=5)
        assert "Not authorized" in bad.link.last_error or "authoriz" in bad.link.last_error.lower()


class _Passwords(Mosquitto):
    """A plain broker that wants a username and password from its password file."""

    def __init__(self, folder: Path, passwords: Path) -> None:
        super().__init__(folder)
        self.passwords = passwords

    def _conf(self) -> Path:
        conf = super()._conf()
        text = conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
        conf.write_text(text + f"password_file {self.passwords}\n")
        return conf


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_refused_credentials_are_named_and_a_fixed_password_file_is_used(
    tmp_path: Path, protocol: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    # Before: "MqttConnectError: [code:135] Not authorized", retried every reconnect_max_s
    # (42 refusals in the broker's log in 10 s), with the password read once: fixing
    # password_file changed nothing until the agent was restarted.
    import logging
    import shutil
    import subprocess

    from drivers.mqtt import _reconnect

    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed (Debian package mosquitto)")
    monkeypatch.setattr(_reconnect, "REFUSED_RETRY_S", 0.3)
    passwords = tmp_path / "passwd"
    make = ["mosquitto_passwd", "-b", "-c", str(passwords), "gw-01", "s3cret"]
    subprocess.run(make, check=True, capture_output=True, timeout=30)  # noqa: ASYNC221 (setup)
    secret = tmp_path / "broker.pass"
    secret.write_text("wrong\n")
    caplog.set_level(logging.WARNING, "edge_agent.drivers.mqtt")
    with _Passwords(tmp_path / "b", passwords) as broker:
        rig = Rig(broker, username="gw-01", password_file=secret, protocol=protocol,
                  reconnect_max_s=0.05)  # fmt: skip
        task = asyncio.create_task(rig.link.run())
        try:
            await until(lambda: rig.link.last_error is not None, 5)
            await asyncio.sleep(1.0)
            error = rig.link.last_error
            assert "refused" in error and "gw-01" in error and str(secret) in error, error
            refusals = [r for r in caplog.records if "refused" in r.getMessage()]
            assert len(refusals) == 1  # said once, not at every try
            tries = (broker.folder / "mosquitto.log").read_text().count("not authorised")
            assert tries <= 6  # every REFUSED_RETRY_S, not every reconnect_max_s
            secret.write_text("s3cret\n")
            await until(lambda: rig.link.connected, 5)
        finally:
            rig.link.stop()
            task.cancel()
            await asyncio.wait([task], timeout=5)


async def test_under_systemd_a_refused_credential_says_a_restart_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: "the password file read again each time" under systemd too, where the file
    # read is LoadCredential='s copy made at start: fixing /etc/edge-agent/credentials
    # changed nothing until a restart, and the message did not say so.
    import shutil
    import subprocess

    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed (Debian package mosquitto)")
    passwords = tmp_path / "passwd"
    make = ["mosquitto_passwd", "-b", "-c", str(passwords), "gw-01", "s3cret"]
    subprocess.run(make, check=True, capture_output=True, timeout=30)  # noqa: ASYNC221 (setup)
    creds = tmp_path / "credentials"
    creds.mkdir()
    secret = creds / "plant-password"
    secret.write_text("wrong\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with _Passwords(tmp_path / "b", passwords) as broker:
        rig = Rig(broker, username="gw-01", password_file=secret, reconnect_max_s=0.05)
        task = asyncio.create_task(rig.link.run())
        try:
            await until(lambda: rig.link.last_error is not None, 5)
            error = rig.link.last_error
        finally:
            rig.link.stop()
            task.cancel()
            await asyncio.wait([task], timeout=5)
    assert "read again each time" not in error, error
    assert "systemd's copy" in error and "systemctl restart edge-agent" in error, error
