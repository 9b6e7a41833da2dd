"""`edge-sim cmms`: work-order requests are idempotent on their key, across faults,
outages and restarts of the receiver."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.demo import SimProcess
from simulators.backend import Fault
from simulators.cmms import CmmsServer
from tests.conftest import free_port

TOKEN = "cmms-token"
REQUEST: dict[str, Any] = {
    "title": "press-7: zone C, plan maintenance",
    "asset_id": "press-7",
    "priority": "high",
    "type": "predictive",
    "due_date": "2026-11-28T08:00:00Z",
    "description": "velocity RMS 3.1 mm/s over 2.8 mm/s; estimated failure in 5 d (3-8 d)",
    "source": {"system": "edge-agent", "alert_id": "gw-01-000000000042"},
}


async def _post(
    s: aiohttp.ClientSession, url: str, key: str | None, body: Any = REQUEST, token: str = TOKEN
) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with s.post(url, json=body, headers=headers) as resp:
        text = await resp.text()
        reply = json.loads(text) if resp.content_type == "application/json" else text
        return resp.status, reply, resp.headers


async def test_same_key_opens_one_work_order(tmp_path: Path) -> None:
    async with CmmsServer(db=tmp_path / "c.db", token=TOKEN) as c, aiohttp.ClientSession() as s:
        status, first, headers = await _post(s, c.url, "gw-01-000000000042")
        assert (
            status == 201
            and headers["Location"] == f"/api/v1/work-orders/{first['work_order']['id']}"
        )
        wo = first["work_order"]
        assert wo["status"] == "open" and wo["priority"] == "high" and wo["asset_id"] == "press-7"
        assert wo["source"]["alert_id"] == "gw-01-000000000042"
        status, again, headers = await _post(s, c.url, "gw-01-000000000042")
        assert status == 200 and headers["Idempotent-Replayed"] == "true"
        assert again["work_order"] == wo
        status, clash, _ = await _post(
            s, c.url, "gw-01-000000000042", {**REQUEST, "priority": "low"}
        )
        assert status == 422 and clash["work_order_id"] == wo["id"]
        assert (await _post(s, c.url, "gw-01-000000000043"))[0] == 201  # another alert
        async with s.get(
            c.url, headers={"Authorization": f"Bearer {TOKEN}"}, params={"asset_id": "press-7"}
        ) as resp:
            listing = await resp.json()
        assert [w["request_key"] for w in listing["work_orders"]] == [
            "gw-01-000000000042",
            "gw-01-000000000043",
        ]
        async with s.get(f"{c.base_url}/api/v1/stats") as resp:
            stats = await resp.json()
        assert (stats["created"], stats["replayed"], stats["conflicts"], stats["work_orders"]) == (
            2,
            1,
            1,
            2,
        )


@pytest.mark.parametrize(
    ("key", "body", "needle"),
    [
        (None, REQUEST, "Idempotency-Key"),
        ("k y", REQUEST, "Idempotency-Key"),
        ("k1", {**REQUEST, "priority": "p1"}, "priority"),
        ("k1", {**REQUEST, "asset": "press-7"}, "asset"),  # unknown field: a mapping error
        ("k1", {k: v for k, v in REQUEST.items() if k != "title"}, "title"),
        ("k1", {**REQUEST, "due_date": "2026-11-28"}, "due_date"),
        ("k1", {**REQUEST, "due_date": "2026-02-30T08:00:00Z"}, "due_date"),
        ("k1", {**REQUEST, "asset_id": 7}, "asset_id"),  # no silent type coercion
        ("k1", ["not", "an", "object"], "body"),
    ],
)
async def test_malformed_requests_are_refused_with_the_field(
    tmp_path: Path, key: str | None, body: Any, needle: str
) -> None:
    async with CmmsServer(db=tmp_path / "c.db", token=TOKEN) as c, aiohttp.ClientSession() as s:
        status, reply, _ = await _post(s, c.url, key, body)
        assert status == 400 and needle in reply["error"]
        assert await c.work_orders() == []
        assert (await _post(s, c.url, "k1", REQUEST, token="wrong"))[0] == 401


async def test_lost_answer_and_outage_never_duplicate(tmp_path: Path) -> None:
    async with CmmsServer(db=tmp_path / "c.db") as c, aiohttp.ClientSession() as s:
        # The work order is created but the answer is lost: the retry gets the same one.
        c.inject(Fault(status=502, after_store=True))
        assert (await _post(s, c.url, "a1"))[0] == 502
        status, replay, _ = await _post(s, c.url, "a1")
        assert status == 200 and replay["work_order"]["id"] == "WO-000001"
        # An outage: every POST fails with Retry-After and creates nothing, then recovers.
        async with s.post(
            f"{c.base_url}/admin/outage", json={"seconds": 0.6, "retry_after": 1}
        ) as r:
            assert r.status == 200
        for _ in range(3):
            status, _, headers = await _post(s, c.url, "a2")
            assert status == 503 and headers["Retry-After"] == "1"
        await asyncio.sleep(0.7)
        assert (await _post(s, c.url, "a2"))[0] == 201
        # A redirect is a fault too (an uplink must not follow it with its POST).
        async with s.post(
            f"{c.base_url}/admin/faults", json={"status": 307, "location": "/x"}
        ) as r:
            assert r.status == 200
        async with s.post(
            c.url, json=REQUEST, headers={"Idempotency-Key": "a3"}, allow_redirects=False
        ) as resp:
            assert resp.status == 307 and resp.headers["Location"] == "/x"
        assert [w["request_key"] for w in await c.work_orders()] == ["a1", "a2"]


@pytest.mark.slow
async def test_edge_sim_cmms_keeps_keys_across_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    port = free_port()
    args = ["cmms", "--host", "127.0.0.1", "--port", str(port), "--db", str(db), "--token", TOKEN]
    async with aiohttp.ClientSession() as s:
        async with SimProcess("cmms", args) as proc:
            url = proc.info["url"]
            assert url == f"http://127.0.0.1:{port}/api/v1/work-orders"
            assert (await _post(s, url, "gw-01-000000000042"))[0] == 201
        with pytest.raises(aiohttp.ClientConnectionError):  # the receiver is down
            await _post(s, url, "gw-01-000000000042")
        async with SimProcess("cmms", args):
            status, replay, _ = await _post(s, url, "gw-01-000000000042")
            assert status == 200 and replay["work_order"]["id"] == "WO-000001"
            async with s.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert len((await resp.json())["work_orders"]) == 1


def test_edge_sim_cmms_reports_a_database_it_cannot_open(tmp_path: Path) -> None:
    bad = tmp_path / "missing-dir" / "c.db"
    proc = subprocess.run(
        [sys.executable, "-m", "simulators.cli", "cmms", "--db", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"edge-sim cmms: cannot open the database {bad}" in proc.stderr


async def _patch(
    s: aiohttp.ClientSession, url: str, key: str | None, body: Any
) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with s.patch(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_an_update_raises_the_priority_of_the_open_work_order_once(tmp_path: Path) -> None:
    """PATCH /api/v1/work-orders/{id}: priority, due date and a note on the same order;
    a retry of the update's key applies it once; unknown id 404, closed 409."""
    async with CmmsServer(db=tmp_path / "c.db", token=TOKEN) as c, aiohttp.ClientSession() as s:
        _, first, _ = await _post(s, c.url, "gw-01-000000000042")
        wo_url = f"{c.url}/{first['work_order']['id']}"
        change = {"priority": "urgent", "due_date": "2026-11-27T08:00:00Z", "note": "zone D"}
        status, updated, headers = await _patch(s, wo_url, "gw-01-000000000043", change)
        assert status == 200 and "Idempotent-Replayed" not in headers
        wo = updated["work_order"]
        assert (wo["id"], wo["priority"], wo["due_date"]) == (
            first["work_order"]["id"], "urgent", "2026-11-27T08:00:00Z",
        )  # fmt: skip
        assert [n["text"] for n in wo["notes"]] == ["zone D"] and wo["updated_at"]
        assert wo["description"] == REQUEST["description"]  # kept: the note is added
        status, again, headers = await _patch(s, wo_url, "gw-01-000000000043", change)
        assert status == 200 and headers["Idempotent-Replayed"] == "true"
        assert again["work_order"] == wo  # applied once: one note
        status, clash, _ = await _patch(s, wo_url, "gw-01-000000000043", {"note": "other"})
        assert status == 422 and clash["work_order_id"] == wo["id"]
        assert (await _patch(s, f"{c.url}/WO-000099", "k-1", change))[0] == 404
        assert (await _patch(s, wo_url, None, change))[0] == 400
        status, bad, _ = await _patch(s, wo_url, "k-2", {"priority": "P1"})
        assert status == 400 and "priority" in bad["error"]
        assert (await _patch(s, wo_url, "k-3", {}))[0] == 400
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with s.post(f"{c.base_url}/admin/close/{wo['id']}", headers=headers) as r:
            assert r.status == 200
        status, closed, _ = await _patch(s, wo_url, "k-4", {"note": "late"})
        assert status == 409 and closed["work_order_status"] == "closed"
        [only] = await c.work_orders()
        stats = await c.cmms.dbt.run(c.cmms.db.stats)
    assert [n["text"] for n in only["notes"]] == ["zone D"] and only["status"] == "closed"
    assert (stats["work_orders"], stats["updated"], stats["update_replayed"]) == (1, 1, 1)
