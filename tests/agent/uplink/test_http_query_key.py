"""HTTP uplink whose backend checks a key in the query string (an Azure function's
?code=), against a real aiohttp server on loopback and a real SQLite outbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web

from agent.config import HttpUplink as HttpUplinkConfig
from agent.store import Outbox
from agent.summaries import SummaryDraft
from agent.uplink import HttpTransport, delivery
from tests.agent.store._drafts import T0, draft
from tests.agent.uplink._alerts import asset
from tests.agent.uplink._running import Running, until

UP = "up"
KEY = "K/ey+=="  # base64 keys hold '/' and '+'


@asynccontextmanager
async def keyed_backend(posts: list[tuple[str, str | None]]) -> AsyncIterator[str]:
    """A backend that answers 401 to any request without ?code=KEY; its base URL."""

    async def handle(req: web.Request) -> web.Response:
        if req.method == "POST":
            posts.append((req.path, req.query.get("code")))
        if req.query.get("code") != KEY:
            return web.json_response({"error": "missing or wrong function key"}, status=401)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("tail", "summaries_path"),
    [("/api/alerts?code=K%2Fey%2B%3D%3D", "/api/summaries"), ("?code=K/ey%2B==", "/summaries")],
)
async def test_summaries_carry_the_query_key_of_the_alert_url(
    tmp_path: Path, tail: str, summaries_path: str
) -> None:
    # Before: the key was dropped (/api/summaries: 401 forever, the uplink shown failing),
    # a '/' in the key sent summaries to the alerts URL with a cut key, and a URL without
    # a path sent them to a host named "summaries".
    posts: list[tuple[str, str | None]] = []
    window = {"velocity_rms_mm_s": {"min": 1.0, "mean": 1.1, "max": 1.2, "last": 1.1}}
    summary = SummaryDraft(asset(), "m1-de", "modbus", T0, T0 + timedelta(minutes=5), {"z": window})
    async with (
        Outbox(tmp_path / "ob.db", gateway_id="gw", max_bytes=1 << 30, first_seq=1, uplinks=(UP,))
        as outbox,
        keyed_backend(posts) as base,
    ):  # fmt: skip
        await outbox.append([draft(i=1)])
        await outbox.append_summaries([summary])
        cfg = HttpUplinkConfig(url=base + tail, token="t", timeout_s=2.0, max_backoff_s=0.3)
        up = delivery(UP, HttpTransport(cfg, name=UP), outbox, cfg, base_backoff_s=0.1)
        async with Running(up):

            async def sent() -> bool:
                stats = await outbox.stats()
                return stats.pending == 0 and stats.summaries_pending == 0

            await until(sent, timeout_s=5.0)
    assert up.status.failures_total == 0 and up.status.summaries_delivered_total == 1
    assert (summaries_path, KEY) in posts
