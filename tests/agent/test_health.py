"""The health endpoint: read-only, only for its own Host, capped, and idle connections end."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import yaml

from agent.config import Health
from agent.health import HealthServer, HostCheck, render_metrics
from agent.logs import RepeatLimitingHandler
from agent.runtime import Agent
from drivers.reading import Reading
from simulators.backend import BackendServer
from tests.agent._configs import press_config
from tests.agent.store._drafts import draft
from tests.agent.test_operator_commands import running_agent, write_config
from tests.agent.test_watchdog import NotifySocket


async def _snap() -> dict[str, object]:
    return {"status": "degraded", "sensors": [{"id": "m1", "polls_total": 3, "errors_total": 1}]}


async def _raw(port: int, request: bytes, timeout_s: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server answers before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(timeout_s):
            return await reader.read()
    finally:
        writer.close()


async def test_healthz_reports_degraded_with_503_and_metrics_render() -> None:
    async with HealthServer(_snap, port=0) as hs:
        assert hs.port and hs.error is None
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{hs.port}/healthz") as r:
            assert r.status == 503 and (await r.json())["status"] == "degraded"
        async with aiohttp.ClientSession() as s, s.get(f"http://localhost:{hs.port}/metrics") as r:
            assert r.status == 200
            text = await r.text()
    assert 'edge_sensor_poll_errors_total{sensor="m1"} 1.0' in text
    assert "edge_http_connections_accepted_total" in text
    assert (
        'edge_sensor_poll_errors_total{sensor="m1"} 1.0' in render_metrics(await _snap()).decode()
    )


async def test_busy_port_is_reported_not_fatal() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        async with HealthServer(_snap, port=port) as hs:
            assert hs.error and str(port) in hs.error


async def test_a_port_held_at_start_is_taken_once_it_is_free(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before, the agent tried once at start: a port held while it restarted (by another
    local user) stayed someone else's for good, and Prometheus scraped that process."""
    told: list[str | None] = []

    async def on_state(why: str | None) -> None:
        told.append(why)

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    async with HealthServer(
        _snap, port=port, on_state=on_state, retry_first_s=0.05, retry_max_s=0.2
    ) as hs:
        await asyncio.sleep(0.6)  # several attempts fail meanwhile
        attempts = hs.bind_attempts
        busy.close()
        for _ in range(100):  # up to 10 s
            if hs.port == port:
                break
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
            status = r.status
    assert attempts >= 3 and hs.port == port and hs.error is None and status == 503
    assert len(told) == 2 and told[1] is None
    assert told[0] is not None and f"127.0.0.1:{port}: Address already in use" in told[0]
    assert "held by uid" in told[0]  # the kernel names the holder (here: this test's user)
    errors = [r for r in caplog.records if r.name == "agent.health" and r.levelno >= logging.ERROR]
    assert len(errors) == 1  # once per episode, not once per attempt


async def test_a_port_held_for_long_is_logged_again_while_it_lasts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before, one error line at start, then debug lines only: a port held for days (and
    the holder answering Prometheus as the agent) left one line scrolled out of sight."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        async with HealthServer(
            _snap, port=port, retry_first_s=0.05, retry_max_s=0.1, remind_s=0.3
        ) as hs:
            for _ in range(100):  # up to 5 s
                if hs.bind_attempts >= 12:
                    break
                await asyncio.sleep(0.05)
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.name == "agent.health" and r.levelno >= logging.ERROR
    ]
    assert 2 <= len(errors) <= 1 + hs.bind_attempts // 3, errors  # bounded: not every try
    assert all("is NOT this agent" in m and f"127.0.0.1:{port}" in m for m in errors), errors
    assert "still not served after" in errors[-1]


async def test_a_port_held_is_told_to_systemd_as_status_and_cleared_once_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`systemctl status` showed "active (running)" and nothing else while another process
    answered Prometheus on the agent's port."""
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    config = press_config(tmp_path).model_copy(update={"health": Health(port=port)})
    agent = Agent(config)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(10):
            await agent.ready.wait()
        held = [m for _, m in notify.drain() if m.startswith("STATUS=")]
        busy.close()
        for _ in range(200):  # up to 10 s: the first retry is 1 s after the start
            if any(m == "STATUS=" for _, m in notify.drain()):
                break
            await asyncio.sleep(0.05)
        assert agent.health is not None and agent.health.port == port
    finally:
        busy.close()
        agent.stop()
        await asyncio.wait_for(task, 20)
        notify.close()
    assert len(held) == 1, held
    assert held[0].startswith("STATUS=health endpoint NOT served (cannot listen on ")
    assert f"127.0.0.1:{port}: Address already in use" in held[0]
    assert "is not this agent" in held[0]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_no_state_changing_method_over_tcp(method: str) -> None:
    """The old POST /v1/maintenance (any content type, no credential) is gone from TCP."""
    async with HealthServer(_snap, port=0) as hs:
        body = b'{"asset": "press-7"}'
        req = (
            f"{method} /v1/maintenance HTTP/1.1\r\nHost: 127.0.0.1:{hs.port}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body
        answer = await _raw(hs.port, req)
    assert answer.startswith(b"HTTP/1.1 405"), answer[:200]
    assert b"control socket" in answer


@pytest.mark.parametrize(
    "host_header",
    [
        "evil.example:{port}",  # DNS rebinding: the attacker's name pointing at 127.0.0.1
        "127.0.0.1:1",  # another port
        "gateway.plant.local",
        "",  # none at all: HTTP/1.1 requires it
    ],
)
async def test_foreign_host_header_is_refused(
    host_header: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with HealthServer(_snap, port=0) as hs:
        header = f"Host: {host_header.format(port=hs.port)}\r\n" if host_header else ""
        req = f"GET /healthz HTTP/1.1\r\n{header}Connection: close\r\n\r\n"
        answer = await _raw(hs.port, req.encode())
    assert answer.startswith(b"HTTP/1.1 421" if host_header else b"HTTP/1.0 400"), answer[:200]
    assert b'"sensors"' not in answer
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_get_with_a_body_is_refused() -> None:
    async with HealthServer(_snap, port=0) as hs:
        req = (
            f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{hs.port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        )
        answer = await _raw(hs.port, req.encode())
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def test_host_check_names() -> None:
    loop = HostCheck("127.0.0.1", frozenset())
    loop.port = 9108
    assert [loop.accepts(h) for h in ("127.0.0.1:9108", "localhost:9108", "[::1]:9108")] == [
        True,
        True,
        True,
    ]
    assert not any(loop.accepts(h) for h in ("evil:9108", "127.0.0.1:80", "10.0.0.5:9108", None))
    exposed = HostCheck("0.0.0.0", frozenset({"gw-01"}))
    exposed.port = 9108
    assert exposed.accepts("10.0.0.5:9108") and exposed.accepts("GW-01:9108")
    assert not exposed.accepts("evil.example:9108")


async def test_slow_headers_and_idle_connections_are_closed() -> None:
    async with HealthServer(_snap, port=0, idle_timeout_s=0.5) as hs:
        reader, writer = await asyncio.open_connection("127.0.0.1", hs.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        start = time.monotonic()
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        assert time.monotonic() - start < 3
        writer.close()


async def test_idle_crowd_cannot_keep_a_request_out() -> None:
    """300 idle connections against a cap of 64: the newest request is still served."""
    async with HealthServer(_snap, port=0, max_connections=64) as hs:
        crowd = []
        for _ in range(300):
            crowd.append(await asyncio.open_connection("127.0.0.1", hs.port))
        try:
            async with (
                aiohttp.ClientSession() as s,
                asyncio.timeout(10),
                s.get(f"http://127.0.0.1:{hs.port}/healthz") as r,
            ):
                assert r.status == 503
                body = await r.json()
        finally:
            for _, w in crowd:
                w.close()
    assert body["http"]["open"] <= 64
    assert body["http"]["evicted_total"] >= 300 - 64


def _retransmissions(sock: socket.socket) -> int:
    """Segments the kernel sent again on this TCP socket, its SYN included (tcp_info's
    tcpi_total_retrans): a SYN the server's full accept queue dropped is sent again 1 s
    later, so the client waits a second before the server even sees it."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int.from_bytes(info[100:104], "little")


async def test_a_crowd_of_connects_at_once_does_not_make_a_newcomer_wait_a_second() -> None:
    """Before: 1000 idle connects at once filled the kernel's queue of 32 unaccepted
    connections; the next client's SYN was dropped and resent 1 s later (/healthz took
    1.03 s in 3 runs of 3 against `edge-agent run`). Now the kernel queues them all; the
    agent still accepts 32 a turn, under its cap, and closes the silent ones."""
    async with HealthServer(_snap, port=0) as hs:
        assert hs.port is not None
        crowd = []
        try:
            for _ in range(1000):  # the loop does not run meanwhile: none is accepted yet
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", hs.port))
                crowd.append(s)
            reader, writer = await asyncio.open_connection("127.0.0.1", hs.port)
            try:
                writer.write(
                    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                )
                async with asyncio.timeout(10):
                    answer = await reader.read()
                resent = _retransmissions(writer.get_extra_info("socket"))
            finally:
                writer.close()
        finally:
            for s in crowd:
                s.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
    assert resent == 0


async def test_exposure_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    async with HealthServer(_snap, host="0.0.0.0", port=0, expose=True) as hs:
        assert hs.port
    assert any(
        r.levelname == "WARNING" and "exposed beyond this machine" in r.getMessage()
        for r in caplog.records
    )


def test_metrics_show_flaps_per_alert_and_unresolved_velocity() -> None:
    snap = {
        "channels": [
            {"asset": "b1", "sensor": "s", "channel": "h", "value": 66.7, "zone": None,
             "active_level": 1, "flaps": {"severity": 0, "trend": 5}},
        ]
    }  # fmt: skip
    text = render_metrics(snap).decode()
    assert 'edge_alert_flaps_total{asset="b1",channel="h",kind="trend",sensor="s"} 5.0' in text
    assert 'zone="unresolved"' in text


async def test_a_flood_of_requests_costs_the_agent_one_snapshot(tmp_path: Path) -> None:
    """Each request was a read on the store writer's thread, queued ahead of the alerts'
    writes (even for a client that hung up at once): a 3 s hit-and-run flood by a local user
    delayed a maintenance record by 19 s with 200,000 alerts waiting, and 128 clients on
    /metrics with 200 sensors lagged the event loop 1.5 s (880 polls missed in 18 s). Now
    requests within SNAPSHOT_MAX_AGE_S share one snapshot."""
    cfg = write_config(tmp_path)
    async with running_agent(cfg) as agent:
        port = agent.config.health.port
        url = f"http://127.0.0.1:{port}"
        request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        for _ in range(100):  # up to 10 s: degraded once its sensor is seen dead
            if (await agent.snapshot())["status"] != "ok":
                break
            await asyncio.sleep(0.1)
        reads = agent.outbox.counters.read_requests
        hung_up = []
        for _ in range(50):  # ask, then hang up before the answer
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            hung_up.append(writer)
        async with aiohttp.ClientSession() as s:

            async def get(path: str) -> int:
                async with s.get(url + path) as r:
                    await r.read()
                    return r.status

            for w in hung_up:
                w.close()
            statuses = await asyncio.gather(*(get(p) for p in ("/healthz", "/metrics") * 50))
        reads = agent.outbox.counters.read_requests - reads
    assert sorted(set(statuses)) == [200, 503], statuses  # degraded (its sensor is dead)
    assert reads <= 5, f"{reads} store reads for 150 requests"


async def test_healthz_says_when_its_snapshot_was_taken(tmp_path: Path) -> None:
    """Requests within a second of one another share one snapshot: a monitor reading
    last_ok_age_s could not tell it was up to a second old. Now `at` says when (UTC)."""
    cfg = write_config(tmp_path)
    async with running_agent(cfg) as agent:
        url = f"http://127.0.0.1:{agent.config.health.port}/healthz"
        asked = datetime.now(UTC)
        async with aiohttp.ClientSession() as s:
            bodies = []
            for _ in range(2):
                async with s.get(url) as r:
                    bodies.append(await r.json())
        answered = datetime.now(UTC)
    first, second = (datetime.fromisoformat(b["at"].replace("Z", "+00:00")) for b in bodies)
    assert asked - timedelta(seconds=1) <= first <= second <= answered
    assert bodies[0]["at"].endswith("Z")


async def test_a_change_of_state_is_shown_by_the_next_request_not_a_second_later() -> None:
    """Requests share one snapshot for a second (the flood guard above); a reload or a
    maintenance record expires it, so `status` right after a reload showed the pollers the
    reload had just replaced (their old counters) for up to a second."""
    made = 0

    async def snap() -> dict[str, object]:
        nonlocal made
        made += 1
        return {"status": "ok", "made": made}

    async with HealthServer(snap, port=0, snapshot_max_age_s=60.0) as hs:
        url = f"http://127.0.0.1:{hs.port}/healthz"
        async with aiohttp.ClientSession() as s:

            async def get() -> object:
                async with s.get(url) as r:
                    return (await r.json())["made"]

            first, shared = await get(), await get()
            hs.expire()
            fresh = await get()
    assert (first, shared, fresh) == (1, 1, 2)


async def test_a_key_in_the_uplink_url_is_not_shown_to_local_users(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Some backends take their key in the query (an Azure function's `?code=`): every
    local user read it in /healthz (the uplink's target and last error) and in the log.
    Now the value shows as ***, the parameter's name stays."""
    async with BackendServer(token="the-real-token") as backend:  # refuses the agent: 401
        url = f"{backend.url}?code=SECRET-KEY-123"
        cfg = write_config(tmp_path)
        data = yaml.safe_load(cfg.read_text())
        data["uplinks"] = [{"name": "portfolio", "http": {"url": url}}]
        cfg.write_text(yaml.safe_dump(data))
        async with running_agent(cfg) as agent:
            await agent.outbox.append([draft(1, 0, asset="press-7")])
            health = f"http://127.0.0.1:{agent.config.health.port}"
            async with aiohttp.ClientSession() as s:
                for _ in range(100):  # up to 10 s for the refused POST
                    async with s.get(f"{health}/healthz") as r:
                        snap = await r.json()
                    if snap["uplinks"][0]["last_error"]:
                        break
                    await asyncio.sleep(0.1)
                async with s.get(f"{health}/metrics") as r:
                    metrics = await r.text()
        posts = (await backend.stats())["unauthorized"]
    shown = json.dumps(snap) + metrics + caplog.text
    assert posts >= 1  # the key was sent to the backend
    assert "HTTP 401" in snap["uplinks"][0]["last_error"], snap["uplinks"]
    assert snap["uplinks"][0]["target"] == f"{backend.url}?code=***"
    assert "SECRET-KEY-123" not in shown


async def test_malformed_requests_with_changing_junk_are_one_log_line() -> None:
    """aiohttp's message quotes the request's bytes, so each over-long request line (a web
    page can send one: a long URL) was a new log line: 20,000 in 10 s wrote 6 MB. Now the
    line names the kind of error only, and the log writes its repeats once."""
    out = io.StringIO()
    handler = RepeatLimitingHandler(out, interval_s=60.0)
    http_log = logging.getLogger("agent.health.http")
    http_log.addHandler(handler)
    try:
        async with HealthServer(_snap, port=0) as hs:
            for i in range(30):
                path = f"/{i:04d}-{os.urandom(4).hex()}".encode() + b"a" * 5000
                answer = await _raw(hs.port, b"GET " + path + b" HTTP/1.1\r\n\r\n")
                assert answer.startswith(b"HTTP/1.0 400"), answer[:80]
    finally:
        http_log.removeHandler(handler)
        handler.close()  # writes the repeat count
    lines = out.getvalue().splitlines()
    assert len(lines) <= 3, lines[:5]
    assert "malformed request refused with HTTP 400 (LineTooLong)" in lines[0]
    assert "aaaa" not in out.getvalue()


async def test_metrics_show_each_channels_learning_state(tmp_path: Path) -> None:
    """Before: a channel whose readings were all under machine.running_above_mm_s (never
    learned, never watched) showed in /metrics only as a velocity with zone="stopped", like
    any watched machine's weekend stop. Now edge_channel_learning{state} says it waits to
    run, then learns, then watches."""
    cfg = write_config(tmp_path)
    t0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    async with running_agent(cfg) as agent:
        port = agent.config.health.port
        assert agent.monitor is not None
        n = agent.config.assets[0].alerting.baseline_readings

        def feed(start: int, count: int, velocity: float) -> None:
            for i in range(start, start + count):
                feats = {"velocity_rms_mm_s": velocity, "accel_rms_g": velocity / 20}
                agent.monitor.update(Reading("m1", "z", t0 + timedelta(minutes=i), feats))  # type: ignore[union-attr]

        async def states() -> dict[str, float]:
            await asyncio.sleep(1.1)  # past the shared snapshot's age (the flood guard)
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{port}/metrics") as r,
            ):
                text = await r.text()
            out = {}
            for line in text.splitlines():
                if line.startswith("edge_channel_learning{"):
                    state = line.split('state="')[1].split('"')[0]
                    out[state] = float(line.rsplit(" ", 1)[1])
            return out

        feed(0, 5, 0.001)  # m/s reported as mm/s
        assert await states() == {"waiting_to_run": 1.0, "learning": 0.0, "watching": 0.0}
        feed(5, 2, 1.0)
        assert await states() == {"waiting_to_run": 0.0, "learning": 1.0, "watching": 0.0}
        feed(7, n, 1.0)
        assert await states() == {"waiting_to_run": 0.0, "learning": 0.0, "watching": 1.0}
