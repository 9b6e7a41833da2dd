"""HTTP and CMMS uplinks over TLS with a private CA: a real aiohttp HTTPS server on
loopback, certificates made with openssl (tests.mosquitto.make_certs), a real SQLite outbox."""

from __future__ import annotations

import logging
import shutil
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.config import CmmsUplink, HttpUplink
from agent.store import Outbox
from agent.uplink import CmmsTransport, HttpTransport, delivery
from tests.agent.store._drafts import draft
from tests.agent.uplink._running import Running, until
from tests.agent.uplink._running import true as _true
from tests.mosquitto import Certs, client_cert, make_certs

UP = "up"


class Backend:
    """Counts the POSTs that reached it, and answers each with a 201."""

    def __init__(self) -> None:
        self.posts = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.posts += 1
        return web.json_response({"id": f"WO-{self.posts}"}, status=201)

    async def head(self, _request: web.Request) -> web.Response:
        return web.Response()


@asynccontextmanager
async def https(
    backend: Backend,
    certs: Certs,
    *,
    client_ca: Path | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> AsyncIterator[str]:
    """An HTTPS server on 127.0.0.1 with the certs' server certificate; with client_ca, it
    requires a client certificate signed by that CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certs.cert), str(certs.key))
    if max_version is not None:
        ctx.maximum_version = max_version
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(client_ca))
    app = web.Application()
    app.router.add_post("/v1/alerts", backend.handle)
    app.router.add_route("HEAD", "/v1/alerts", backend.head)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}/v1/alerts"
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return make_certs(tmp_path_factory.mktemp("plant-ca"))


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA that did not sign the server's certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return make_certs(tmp_path_factory.mktemp("other-ca"))


def _outbox(tmp_path: Path) -> Outbox:
    return Outbox(
        tmp_path / "outbox.db", gateway_id="gw-01", max_bytes=1 << 30, first_seq=1, uplinks=(UP,)
    )


def _http(url: str, **kw: Any) -> HttpUplink:
    base: dict[str, Any] = {"url": url, "token": "t", "timeout_s": 3.0, "max_backoff_s": 0.3}
    return HttpUplink(**{**base, **kw})


async def _pending_is(outbox: Outbox, n: int) -> bool:
    return (await outbox.stats()).pending == n


async def test_https_with_the_plant_ca_in_ca_file_delivers(tmp_path: Path, plant: Certs) -> None:
    backend = Backend()
    async with _outbox(tmp_path) as outbox, https(backend, plant) as url:
        await outbox.append([draft(i=i) for i in range(3)])
        c = _http(url, ca_file=plant.ca)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _pending_is(outbox, 0))
        assert backend.posts == 1 and up.status.delivered_total == 3


async def test_a_certificate_of_another_ca_is_no_delivery_and_says_why(
    tmp_path: Path, plant: Certs, other: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's certificate is not signed by the CA in ca_file: nothing reaches it,
    nothing is marked delivered or dead-lettered, one ERROR says why; once ca_file holds the
    right CA (replaced in place, no restart) the backlog goes out."""
    backend = Backend()
    ca_file = tmp_path / "ca.pem"
    shutil.copy(other.ca, ca_file)
    caplog.set_level(logging.ERROR)
    async with _outbox(tmp_path) as outbox, https(backend, plant) as url:
        await outbox.append([draft(i=i) for i in range(3)])
        c = _http(url, ca_file=ca_file)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(up.status.consecutive_failures >= 3))
            stats = await outbox.stats()
            assert stats.pending == 3 and stats.dead_lettered == 0 and stats.delivered == 0
            assert backend.posts == 0 and up.status.delivered_total == 0
            error = up.status.last_error or ""
            assert "certificate verify failed" in error and str(ca_file) in error, error
            assert up.status.probes_total == 0  # a trust problem: no probing, backoff only
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1, [r.getMessage() for r in errors]
            assert "certificate verify failed" in errors[0].getMessage()
            shutil.copy(plant.ca, ca_file)  # the integrator fixes the file
            await until(lambda: _pending_is(outbox, 0))
        assert backend.posts == 1 and up.status.delivered_total == 3


async def test_without_ca_file_a_private_ca_is_refused_with_the_fix(
    tmp_path: Path, plant: Certs
) -> None:
    backend = Backend()
    async with _outbox(tmp_path) as outbox, https(backend, plant) as url:
        await outbox.append([draft(i=0)])
        c = _http(url)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(up.status.consecutive_failures >= 2))
        assert (await outbox.stats()).pending == 1 and backend.posts == 0
        assert "set ca_file" in (up.status.last_error or "")


async def test_a_ca_file_gone_at_runtime_sends_nothing_and_says_which_file(
    tmp_path: Path, plant: Certs
) -> None:
    """Never a fallback to the system's CAs: the file is tried again at each attempt."""
    backend = Backend()
    ca_file = tmp_path / "ca.pem"
    async with _outbox(tmp_path) as outbox, https(backend, plant) as url:
        await outbox.append([draft(i=0)])
        c = _http(url, ca_file=ca_file)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(up.status.consecutive_failures >= 2))
            assert f"ca_file '{ca_file}' does not exist" in (up.status.last_error or "")
            assert backend.posts == 0 and (await outbox.stats()).pending == 1
            shutil.copy(plant.ca, ca_file)
            await until(lambda: _pending_is(outbox, 0))


async def test_cmms_with_a_client_certificate_mutual_tls(tmp_path: Path, plant: Certs) -> None:
    """A CMMS that requires a client certificate: with cert_file/key_file the work order is
    opened; without them the handshake fails and nothing is marked delivered."""
    cert, key = client_cert(plant, tmp_path)
    backend = Backend()
    async with _outbox(tmp_path) as outbox, https(backend, plant, client_ca=plant.ca) as url:
        await outbox.append([draft(i=0, tier=1)])
        bare: dict[str, Any] = {"url": url, "token": "t", "timeout_s": 3.0, "max_backoff_s": 0.3}
        c = CmmsUplink(**bare, ca_file=plant.ca)
        t = CmmsTransport(c, name=UP, assets={})
        async with Running(delivery(UP, t, outbox, c)) as up:
            await until(lambda: _true(up.status.consecutive_failures >= 2))
        assert backend.posts == 0 and (await outbox.stats()).pending == 1
        c = CmmsUplink(**bare, ca_file=plant.ca, cert_file=cert, key_file=key)
        t = CmmsTransport(c, name=UP, assets={})
        async with Running(delivery(UP, t, outbox, c)) as up:
            await until(lambda: _pending_is(outbox, 0))
        assert backend.posts == 1 and up.status.delivered_total == 1


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_a_server_requiring_a_client_certificate_we_lack_is_named_as_the_cause(
    tmp_path: Path, plant: Certs, version: ssl.TLSVersion
) -> None:
    """An asyncio server aborts the handshake without a TLS alert: the user saw only
    "Connection reset by peer" (TLS 1.3) or "Cannot connect to host ... [None]" (TLS 1.2)."""
    backend = Backend()
    async with (
        _outbox(tmp_path) as outbox,
        https(backend, plant, client_ca=plant.ca, max_version=version) as url,
    ):
        await outbox.append([draft(i=0)])
        c = _http(url, ca_file=plant.ca)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(up.status.consecutive_failures >= 2))
        assert backend.posts == 0 and (await outbox.stats()).pending == 1
        error = up.status.last_error or ""
        assert "requires one (mutual TLS): set cert_file and key_file" in error, error
