"""The broker link's TLS files and mutual TLS against a real mosquitto over TLS: a key
that cannot be loaded is a clear error in the status, retried, never a prompt or a crash;
a broker that wants a client certificate says so at once."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.drivers.test_mqtt_link import TOPIC, Rig, client_cert, ncd, publish, until
from tests.mosquitto import Certs, Mosquitto, make_certs

pytestmark = [pytest.mark.network]

HINT = "the server asks for a client certificate: set cert_file and key_file"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return make_certs(tmp_path_factory.mktemp("certs"))


def encrypted(key: Path, out: Path) -> Path:
    subprocess.run(
        ["openssl", "rsa", "-aes256", "-in", str(key), "-out", str(out),
         "-passout", "pass:secret"],
        check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return out


async def test_a_passphrase_protected_key_is_a_clear_error_retried_until_fixed(
    tmp_path: Path, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """The link refuses the key (no prompt), says which file and why in last_error and
    once in the log, keeps retrying, and connects once the key is replaced."""
    cert, plain_key = client_cert(certs, tmp_path)
    key = encrypted(plain_key, tmp_path / "enc.key")
    with Mosquitto(tmp_path / "b", certs=certs, require_certificate=True) as broker:
        rig = Rig(broker, tls=True, ca_file=certs.ca, cert_file=cert, key_file=key,
                  reconnect_max_s=0.2)  # fmt: skip
        task = asyncio.create_task(rig.link.run())
        try:
            with caplog.at_level(logging.WARNING, "edge_agent.drivers.mqtt"):
                await until(lambda: rig.link.last_error is not None, 10)
                await asyncio.sleep(1.0)  # several retries (backoff at most 0.2 s)
            error = rig.link.status()["last_error"]
            assert error.startswith("cannot load the broker's TLS files: key_file "), error
            assert f"'{key}': the private key is protected by a passphrase" in error
            assert not task.done() and not rig.link.status()["connected"]
            logged = [r for r in caplog.records if "protected by a passphrase" in r.message]
            assert len(logged) == 1, [r.message for r in logged]  # once, not per retry
            shutil.copy(plain_key, key)  # fixed: the next retry loads it and connects
            await until(lambda: rig.link.status()["connected"], 10)
            await asyncio.sleep(0.3)  # subscriptions made after CONNACK
            ctx = __import__("ssl").create_default_context(cafile=str(certs.ca))
            ctx.load_cert_chain(str(cert), str(plain_key))
            await publish(broker.port, [(TOPIC, ncd(3.5))], tls_context=ctx)
            await until(lambda: rig.got, 5)
        finally:
            rig.link.stop()
            task.cancel()
            await asyncio.wait([task], timeout=5)
    assert rig.values() == [3.5]


async def test_a_broker_wanting_a_client_certificate_says_so_at_once(
    tmp_path: Path, certs: Certs
) -> None:
    """mosquitto require_certificate true, no cert_file: TLS 1.3 sends the alert after the
    handshake, which paho only logs; without care the connect waits connect_timeout_s and
    says "timed out"."""
    with Mosquitto(tmp_path / "b", certs=certs, require_certificate=True) as broker:
        rig = Rig(broker, tls=True, ca_file=certs.ca, reconnect_max_s=0.2,
                  connect_timeout_s=30.0)  # fmt: skip
        task = asyncio.create_task(rig.link.run())
        try:
            t0 = time.monotonic()
            await until(lambda: rig.link.last_error is not None, 15)
            took = time.monotonic() - t0
        finally:
            rig.link.stop()
            task.cancel()
            await asyncio.wait([task], timeout=5)
    error = rig.link.last_error
    assert "CERTIFICATE_REQUIRED" in error and error.endswith(HINT), error
    assert took < 15, took  # not the 30 s connect timeout
