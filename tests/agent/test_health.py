"""The health endpoint serves the snapshot, and a busy port never stops the agent."""

from __future__ import annotations

import socket

import aiohttp

from agent.health import HealthServer, render_metrics


async def _snap() -> dict[str, object]:
    return {"status": "degraded", "sensors": [{"id": "m1", "polls_total": 3, "errors_total": 1}]}


async def test_healthz_reports_degraded_with_503_and_metrics_render() -> None:
    async with HealthServer(_snap, port=0) as hs:
        assert hs.port and hs.error is None
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{hs.port}/healthz") as r:
            assert r.status == 503 and (await r.json())["status"] == "degraded"
    text = render_metrics(await _snap()).decode()
    assert 'edge_sensor_poll_errors_total{sensor="m1"} 1.0' in text


async def test_busy_port_is_reported_not_fatal() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        async with HealthServer(_snap, port=port) as hs:
            assert hs.error and str(port) in hs.error
