"""The backend simulator over real HTTP on loopback: validation, dedupe, faults, process."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.demo_sims import SimProcess
from simulators.backend import BackendServer

GOOD: dict[str, Any] = {
    "schema": "edge-agent/alert/v1",
    "alert_id": "gw-01-000000000001",
    "seq": 1,
    "gateway_id": "gw-01",
    "detected_at": "2026-11-21T08:15:02.123Z",
}


def rec(seq: int, **over: Any) -> dict[str, Any]:
    return {**GOOD, "seq": seq, "alert_id": f"gw-01-{seq:012d}", **over}


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, token: str | None = None
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(url, json=body, headers=headers) as resp:
        text = await resp.text()
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = text
        return resp.status, data, resp.headers


async def test_accepts_dedupes_and_lists_in_receipt_order(tmp_path: Path) -> None:
    async with BackendServer(db=tmp_path / "b.db") as b, aiohttp.ClientSession() as s:
        assert (await post(s, b.url, {"alerts": [rec(1), rec(2)]}))[:2] == (
            200,
            {"accepted": 2, "duplicates": 0},
        )
        assert (await post(s, b.url, {"alerts": [rec(2), rec(3), rec(3)]}))[:2] == (
            200,
            {"accepted": 1, "duplicates": 2},
        )
        async with s.get(b.url) as resp:
            listing = await resp.json()
        assert [a["seq"] for a in listing["alerts"]] == [1, 2, 3]
        async with s.get(b.url, params={"after": str(listing["receipts"][0])}) as resp:
            assert [a["seq"] for a in (await resp.json())["alerts"]] == [2, 3]
        # One record by its id (an uplink's duplicate_check_url), 404 for one it lacks.
        async with s.get(f"{b.url}/{rec(2)['alert_id']}") as resp:
            assert resp.status == 200 and (await resp.json())["seq"] == 2
        async with s.get(f"{b.url}/gw-x-none") as resp:
            assert resp.status == 404
    # Persisted: a restarted backend still knows what it has (dedupe survives restarts).
    async with BackendServer(db=tmp_path / "b.db") as b, aiohttp.ClientSession() as s:
        assert (await post(s, b.url, {"alerts": [rec(1)]}))[:2] == (
            200,
            {"accepted": 0, "duplicates": 1},
        )
        stats = await b.stats()
        assert (stats["stored"], stats["duplicates"]) == (3, 3)


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        (rec(1, schema="edge-agent/alert/v0"), "schema"),
        ({k: v for k, v in GOOD.items() if k != "alert_id"}, "alert_id"),
        ({**GOOD, "seq": True}, "seq"),
        ({**GOOD, "seq": -1}, "seq"),
        (rec(1, gateway_id=""), "gateway_id"),
        (rec(1, detected_at="2026-11-21T08:15:02Z"), "detected_at"),
        (rec(1, detected_at="2026-13-41T08:15:02.123Z"), "detected_at"),
        ("not an object", "object"),
    ],
)
async def test_rejects_malformed_records_with_reason(
    tmp_path: Path, record: Any, needle: str
) -> None:
    async with BackendServer(db=tmp_path / "b.db") as b, aiohttp.ClientSession() as s:
        status, body, _ = await post(s, b.url, {"alerts": [rec(5), record]})
        assert status == 400 and needle in body["error"] and "alerts[1]" in body["error"]
        assert (await b.stats())["stored"] == 0  # all or nothing


async def test_token_size_and_shape(tmp_path: Path) -> None:
    async with (
        BackendServer(db=tmp_path / "b.db", token="t0k", max_body=4096) as b,
        aiohttp.ClientSession() as s,
    ):
        assert (await post(s, b.url, {"alerts": [rec(1)]}))[0] == 401
        assert (await post(s, b.url, {"alerts": [rec(1)]}, token="wrong"))[0] == 401
        assert (await post(s, b.url, {"alerts": [rec(1)]}, token="t0k"))[0] == 200
        assert (await post(s, b.url, {"alerts": [rec(i) for i in range(100)]}, token="t0k"))[
            0
        ] == 413
        assert (await post(s, b.url, {"nope": []}, token="t0k"))[0] == 400
        async with s.get(b.url) as resp:
            assert resp.status == 401


async def test_admin_faults_fail_next_posts(tmp_path: Path) -> None:
    async with BackendServer(db=tmp_path / "b.db") as b, aiohttp.ClientSession() as s:
        admin = b.url.replace("/v1/alerts", "/admin/faults")
        async with s.post(admin, json={"status": 503, "count": 2, "retry_after": 1}) as r:
            assert (await r.json()) == {"queued": 2}
        for _ in range(2):
            status, _, headers = await post(s, b.url, {"alerts": [rec(1)]})
            assert status == 503 and headers["Retry-After"] == "1"
        assert (await post(s, b.url, {"alerts": [rec(1)]}))[0] == 200
        assert (await b.stats())["faults_served"] == 2


async def test_edge_sim_backend_prints_ready_fails_first_and_exits_on_sigterm(
    tmp_path: Path,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.cli",  # = `edge-sim backend`, as the demo starts it
        "backend",
        "--port",
        "0",
        "--db",
        str(tmp_path / "b.db"),
        "--fail-first",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            line = (await proc.stdout.readline()).decode()
        if not line:
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode()[-2000:]
            pytest.fail(f"no READY line (exit {await proc.wait()}); stderr: {err}")
        assert line.startswith("READY {")
        info = json.loads(line.removeprefix("READY "))
        assert info == {
            "host": "127.0.0.1",
            "port": info["port"],
            "url": f"http://127.0.0.1:{info['port']}/v1/alerts",
            "portfolio": f"http://127.0.0.1:{info['port']}/portfolio",
        }
        async with aiohttp.ClientSession() as s:
            assert (await post(s, info["url"], {"alerts": [rec(1)]}))[0] == 503
            assert (await post(s, info["url"], {"alerts": [rec(1)]}))[0] == 200
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_the_demo_backend_token_stays_off_ps_and_guards_its_admin_routes(
    tmp_path: Path,
) -> None:
    """The demo started the backend with `--token T` (every local user read it in `ps`) and
    /admin took no token: a web page's text/plain form POST held the demo's backend in a
    10-minute outage (every delivery 503). Now the token goes in the environment and the
    /admin routes require it."""
    token = "demo-token-5f1c"
    async with SimProcess.backend(tmp_path / "b.db", token) as b, aiohttp.ClientSession() as s:
        assert b.proc is not None
        cmdline = await asyncio.to_thread(Path(f"/proc/{b.proc.pid}/cmdline").read_bytes)
        base = b.info["url"].removesuffix("/v1/alerts")
        forged = []
        for method, path in (("POST", "/admin/outage"), ("POST", "/admin/faults")):
            async with s.request(
                method,
                base + path,
                data=b'{"seconds": 600, "status": 503, "count": 100}',
                headers={"Content-Type": "text/plain"},  # a form: no CORS preflight
            ) as r:
                forged.append(r.status)
        delivered = (await post(s, b.info["url"], {"alerts": [rec(1)]}, token=token))[0]
        auth = {"Authorization": f"Bearer {token}"}
        async with s.post(base + "/admin/faults", json={"status": 503}, headers=auth) as r:
            operator = r.status
    assert token.encode() not in cmdline
    assert forged == [401, 401]
    assert delivered == 200
    assert operator == 200  # who holds the token still injects faults
