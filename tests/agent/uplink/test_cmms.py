"""CMMS uplink against the real `edge-sim cmms` receiver on loopback, with a real SQLite
outbox: work orders arrive mapped, once per alert, through outages, lost answers,
redirects and refusals; what is not a finding opens none and waits for nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.analysis.severity import zone_table
from agent.config import CmmsUplink, Iso10816_3
from agent.records import SensorRef
from agent.store import FINDINGS, Outbox
from agent.summaries import SummaryDraft
from agent.uplink import AssetFacts, CmmsTransport, Delivery, delivery
from simulators.backend import Fault
from simulators.cmms import CmmsServer
from tests.agent.uplink._alerts import (
    T0,
    asset,
    maintenance,
    sensor_fault,
    severity,
    trend,
    ttf,
)
from tests.agent.uplink._running import Longest, Running, assert_held_back, until
from tests.agent.uplink._running import true as _true

TOKEN = "cmms-token"
UP = "cmms"
FACTS = {
    "press-7": AssetFacts(
        zone_table(Iso10816_3(standard="iso10816-3", group=2, foundation="rigid", rpm=1480)),
        168.0,
    )
}


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(
        tmp_path / "outbox.db", gateway_id="gw-01", max_bytes=1 << 30, first_seq=1,
        uplinks=(UP,), carries={UP: FINDINGS},
    ) as ob:  # fmt: skip
        yield ob


def cfg(url: str, **kw: Any) -> CmmsUplink:
    base: dict[str, Any] = {"url": url, "token": TOKEN, "timeout_s": 2.0, "max_backoff_s": 0.3}
    base.update(kw)
    return CmmsUplink(**base)


def uplink(c: CmmsUplink, outbox: Outbox, **kw: Any) -> Delivery:
    """A delivery loop over a CMMS transport, as build_uplinks makes it."""
    transport = CmmsTransport(c, name=UP, assets=FACTS, site="plant-a", outbox=outbox)
    return delivery(UP, transport, outbox, c, base_backoff_s=0.2, **kw)


async def _pending_is(outbox: Outbox, n: int) -> bool:
    stats = await outbox.stats()
    return stats.pending == n and stats.uplinks[UP].pending_summaries == 0


async def _orders_are(cmms: CmmsServer, n: int) -> bool:
    return len(await cmms.work_orders()) == n


async def _deliveries(outbox: Outbox) -> dict[str, dict[str, Any]]:
    """alert_id -> this uplink's delivery row (state, reason)."""
    return {r["alert_id"]: r["deliveries"][UP] for r in await outbox.recent(100)}


async def test_findings_open_mapped_work_orders_and_the_rest_opens_none(
    tmp_path: Path, outbox: Outbox
) -> None:
    records = await outbox.append(
        [
            severity("C", estimate=ttf(150.0), i=0),
            trend("escalated", estimate=ttf(30.0), aid="press-8", i=1),  # another machine
            severity("B", "cleared", velocity=2.0, i=2),
            maintenance(i=3),
            sensor_fault(i=4),
            sensor_fault("cleared", i=5),
        ]
    )
    window = {"velocity_rms_mm_s": {"min": 1.0, "mean": 1.1, "max": 1.2, "last": 1.1}}
    await outbox.append_summaries(
        [SummaryDraft(asset(), "m1-de", "modbus", T0, T0 + timedelta(minutes=5), {"z": window})]
    )
    mapping = {"assets": {"press-7": "A-10023"}, "static": {"site_id": "plant-a"}}
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
        async with Running(uplink(cfg(cmms.url, mapping=mapping), outbox)) as up:
            await until(lambda: _pending_is(outbox, 0))
        orders = await cmms.work_orders()
        stats = await cmms.cmms.dbt.run(cmms.cmms.db.stats)
    assert [o["request_key"] for o in orders] == [records[0]["alert_id"], records[1]["alert_id"]]
    first, second = orders
    assert first["asset_id"] == "A-10023" and first["site_id"] == "plant-a"
    assert first["priority"] == "urgent" and first["due_date"] == "2026-11-26T14:15:02Z"
    assert first["title"] == "press-7 Press 7 main motor: zone C vibration - plan maintenance"
    assert first["type"] == "corrective"  # static replaces the default {type: predictive}
    assert first["source"]["alert_id"] == records[0]["alert_id"]
    assert "Estimated failure: 8.8 d after detection" in first["description"]
    assert second["priority"] == "high" and second["due_date"] == "2026-11-21T14:15:03Z"
    assert "failure expected within the planning horizon" in second["title"]
    assert stats["created"] == 2 and stats["posts"] == 2  # nothing else was even sent
    # The rest never waited for this uplink: complete (prunable) from the start.
    rows = {r["alert_id"]: r for r in await outbox.recent(100)}
    assert all(UP not in rows[rec["alert_id"]]["deliveries"] for rec in records[2:])
    assert all(rows[rec["alert_id"]]["delivered"] for rec in records)
    assert up.status.delivered_total == 2 and up.status.skipped_total == 0
    assert (await outbox.stats()).summaries_pending == 0


async def test_records_queued_before_it_carried_only_findings_are_settled_unsent(
    tmp_path: Path,
) -> None:
    """A store where this uplink was given every item (registered before it was a CMMS
    uplink, or by an SQLite without JSON functions): the transport itself skips what opens
    no work order, with why, and nothing waits for it."""
    path = tmp_path / "outbox.db"
    async with Outbox(path, gateway_id="gw-01", max_bytes=1 << 30, first_seq=1,
                      uplinks=(UP,)) as ob:  # fmt: skip
        records = await ob.append([severity("B", "cleared", velocity=2.0), maintenance(i=1),
                                   sensor_fault(i=2), severity("C", i=3)])  # fmt: skip
    async with (
        Outbox(path, gateway_id="gw-01", max_bytes=1 << 30, uplinks=(UP,),
               carries={UP: FINDINGS}) as ob,
        CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms,
    ):  # fmt: skip
        async with Running(uplink(cfg(cmms.url), ob)) as up:
            await until(lambda: _pending_is(ob, 0))
        rows = await _deliveries(ob)
        orders = await cmms.work_orders()
    assert [o["request_key"] for o in orders] == [records[3]["alert_id"]]
    assert [rows[r["alert_id"]]["state"] for r in records] == ["skipped"] * 3 + ["delivered"]
    assert "a clear opens no work order" in rows[records[0]["alert_id"]]["reason"]
    assert "it is the repair" in rows[records[1]["alert_id"]]["reason"]
    assert "a sensor fault opens no work order" in rows[records[2]["alert_id"]]["reason"]
    assert up.status.skipped_total == 3 and up.status.delivered_total == 1


async def test_one_episode_revised_then_critical_again_is_one_work_order_updated(
    tmp_path: Path, outbox: Outbox
) -> None:
    """Warning, critical, revised to a warning, critical again, cleared: one trend episode.
    Before: the critical opened a second work order (WO-000002) beside the warning's. Now
    the warning's order is the episode's: the critical brings its due date forward, and
    each later record adds its evidence as a note."""
    revised = trend("escalated", i=2)
    revised = replace(revised, evidence={**revised.evidence, "revision": {"revises": "critical"}})
    again = trend("escalated", estimate=ttf(0.2, 0.4, 0.8), i=3)
    first_at = "2026-11-21T08:15:03.000Z"
    note = {"first_critical_at": first_at, "reason": "critical before"}
    again = replace(again, evidence={**again.evidence, "re_escalation": note})
    records = await outbox.append(
        [
            trend(i=0),
            trend("escalated", estimate=ttf(0.3, 0.5, 0.9), i=1),
            revised,
            again,
            trend("cleared", i=4),
        ]
    )
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
        async with Running(uplink(cfg(cmms.url), outbox)) as up:
            await until(lambda: _pending_is(outbox, 0))
        [order] = await cmms.work_orders()
    assert order["request_key"] == records[0]["alert_id"]
    assert [n["request_key"] for n in order["notes"]] == [r["alert_id"] for r in records[1:4]]
    assert order["due_date"] == "2026-11-21T08:15:03Z"  # the critical's: at once
    assert "failure expected within the planning horizon" in order["title"]
    rows = {r["alert_id"]: r["deliveries"] for r in await outbox.recent(100)}
    assert UP not in rows[records[4]["alert_id"]]  # a clear is not even routed to it
    assert {rows[r["alert_id"]][UP]["state"] for r in records[:4]} == {"delivered"}
    assert up.status.delivered_total == 4


async def test_outage_then_recovery_opens_each_work_order_once(
    tmp_path: Path, outbox: Outbox
) -> None:
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
        port, url = cmms.port, cmms.url
    # Six machines (one work order each; findings of one machine share its order).
    records = await outbox.append(
        [severity("C", aid=f"m{i}", i=i, tier=1 + i % 3) for i in range(6)]
    )
    async with Running(uplink(cfg(url, timeout_s=0.5), outbox)) as up:
        await until(lambda: _true(up.status.consecutive_failures >= 3))
        assert (await outbox.stats()).pending == 6 and up.status.state == "probing"
        async with CmmsServer(port=port, db=tmp_path / "cmms.db", token=TOKEN) as again:
            t0 = time.monotonic()
            await until(lambda: _pending_is(outbox, 0))
            back_s = time.monotonic() - t0
            # A 503 outage with Retry-After: nothing opened, nothing lost.
            again.cmms.faults.inject(Fault(status=503, retry_after="1"), 2)
            # An escalation of an episode this uplink opened no order for opens one.
            late = await outbox.append(
                [severity("D", "escalated", velocity=5.0, aid="press-8", i=9)]
            )
            await until(lambda: _pending_is(outbox, 0))
            orders = await again.work_orders()
    keys = [o["request_key"] for o in orders]
    assert sorted(keys) == sorted(r["alert_id"] for r in [*records, *late])
    assert len(set(keys)) == len(keys)
    # The backlog drained tier 1 first (zone C: urgent), then tier 2 (high), then 3.
    assert [o["priority"] for o in orders[:6]] == ["urgent"] * 2 + ["high"] * 2 + ["medium"] * 2
    assert back_s < 3.0, f"{back_s:.2f} s after the CMMS's return"


async def test_a_lost_answer_is_retried_and_replayed_not_opened_twice(
    tmp_path: Path, outbox: Outbox
) -> None:
    [rec] = await outbox.append([severity("C")])
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
        # Created, then the answer is lost (a proxy's 502, a cut connection).
        cmms.inject(Fault(status=502, after_store=True))
        async with Running(uplink(cfg(cmms.url), outbox)) as up:
            await until(lambda: _pending_is(outbox, 0))
        stats = await cmms.cmms.dbt.run(cmms.cmms.db.stats)
        [order] = await cmms.work_orders()
    assert order["request_key"] == rec["alert_id"]
    assert (stats["created"], stats["replayed"], stats["work_orders"]) == (1, 1, 1)
    assert up.status.failures_total == 1 and up.status.delivered_total == 1


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_never_followed(tmp_path: Path, outbox: Outbox, status: int) -> None:
    [rec] = await outbox.append([severity("C")])
    async with (
        CmmsServer(db=tmp_path / "a.db", token=TOKEN) as cmms,
        CmmsServer(db=tmp_path / "elsewhere.db", token=TOKEN) as elsewhere,
    ):
        cmms.inject(Fault(status=status, location=elsewhere.url), count=1000)
        async with Running(uplink(cfg(cmms.url), outbox)) as up:
            await until(lambda: _true(up.status.consecutive_failures >= 2))
        assert (await outbox.stats()).pending == 1 and (await outbox.stats()).dead_lettered == 0
        assert f"HTTP {status} redirect to '{elsewhere.url}'" in (up.status.last_error or "")
        assert await elsewhere.work_orders() == [] and await cmms.work_orders() == []
        cmms.cmms.faults.queue.clear()  # the operator fixes the URL / the proxy
        async with Running(uplink(cfg(cmms.url), outbox)):
            await until(lambda: _pending_is(outbox, 0))
        assert [o["request_key"] for o in await cmms.work_orders()] == [rec["alert_id"]]


async def test_same_alert_with_another_body_is_dead_lettered_never_reopened(
    tmp_path: Path, outbox: Outbox
) -> None:
    """A 422: the CMMS has a work order under this alert's key from a request that differs
    from ours (the mapping changed after it was sent, and its answer was lost)."""
    [rec] = await outbox.append([severity("C")])
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
        async with Running(uplink(cfg(cmms.url, safety_margin_hours=48), outbox)):
            cmms.inject(Fault(status=504, after_store=True), count=1000)  # answers lost
            await until(lambda: _orders_are(cmms, 1))
        cmms.cmms.faults.queue.clear()
        async with Running(uplink(cfg(cmms.url), outbox)) as up:  # margin back to 24 h
            await until(lambda: _true(up.status.dead_lettered_total == 1))
        [dead] = await outbox.dead_letters()
        orders = await cmms.work_orders()
    assert dead["id"] == rec["alert_id"] and dead["uplink"] == UP
    assert dead["reason"].startswith("HTTP 422: the CMMS already has work order WO-000001")
    assert "no second work order is opened" in dead["reason"]
    assert len(orders) == 1


async def test_a_mapping_refused_for_every_work_order_holds_them_back_until_fixed(
    tmp_path: Path, outbox: Outbox
) -> None:
    """A mapping the CMMS refuses (400 naming the field) for every work order alike: none is
    dead-lettered while none is opened (each needed a requeue after the fix); the ERROR
    and last_error carry the CMMS's words, and fixing the mapping opens them all."""
    await outbox.append([severity("C", aid=f"m{i}", i=i) for i in range(2)])  # two machines
    wrong = {"fields": {"asset": "asset"}}  # the receiver calls it asset_id
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
        async with Running(uplink(cfg(cmms.url, mapping=wrong), outbox)) as up:
            await until(lambda: _true(up.status.failures_total >= 2))
            assert "HTTP 400" in (err := up.status.last_error or "") and "asset" in err, err
        assert (await outbox.stats()).dead_lettered == 0
        assert await cmms.work_orders() == []
        async with Running(uplink(cfg(cmms.url), outbox)):  # the mapping is fixed
            await until(lambda: _pending_is(outbox, 0))
        assert len(await cmms.work_orders()) == 2
        assert (await outbox.stats()).dead_lettered == 0


async def test_a_wrong_token_is_retried_not_dead_lettered(tmp_path: Path, outbox: Outbox) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("old-token\n")
    await outbox.append([severity("C")])
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
        c = cfg(cmms.url, token=None, token_file=token_file)
        async with Running(uplink(c, outbox)) as up:
            await until(lambda: _true(up.status.failures_total >= 2))
            assert (await outbox.stats()).dead_lettered == 0
            assert "401" in (up.status.last_error or "")
            token_file.write_text(TOKEN + "\n")  # rotated: re-read after a 401
            await until(lambda: _pending_is(outbox, 0))
        assert len(await cmms.work_orders()) == 1


async def test_probe_sees_the_receiver(tmp_path: Path) -> None:
    """The cheap probe (HEAD) tells a CMMS that answers from one that is down."""
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
        url = cmms.url
        async with CmmsTransport(cfg(url), name=UP, assets=FACTS) as transport:
            assert await transport.probe()
    async with CmmsTransport(cfg(url, timeout_s=0.5), name=UP, assets=FACTS) as transport:
        assert not await transport.probe()


NGINX_400 = Fault(
    status=400,
    content_type="text/html",
    body="<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title>"
    "</head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain "
    "HTTP request was sent to HTTPS port</center>\r\n<hr><center>nginx</center>\r\n</body>"
    "\r\n</html>\r\n",
)


async def test_a_page_refusing_every_work_order_alike_holds_them_back(
    tmp_path: Path, outbox: Outbox
) -> None:
    """A proxy in front of the CMMS answering every request with the same page (http://
    sent to nginx's TLS port) dead-lettered every finding, 50 of 50 in 5 s in the probe:
    each answer named its own alert, so no two refusals were alike. Now they are held
    back like the http uplink's and opened once the proxy lets them through."""
    # 20 machines' findings (a canary is never one of the held one's episode)
    await outbox.append(
        [
            replace(severity("C", aid=f"m{i}", i=i), sensor=SensorRef(f"m{i}-de", "z", "modbus"))
            for i in range(20)
        ]
    )
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
        cmms.inject(NGINX_400, count=1000)
        c = cfg(cmms.url, max_backoff_s=2.0)  # the held one is tried again within 2 s
        transport = CmmsTransport(c, name=UP, assets=FACTS, site="plant-a", outbox=outbox)
        up = delivery(UP, transport, outbox, c, base_backoff_s=0.5, rng=Longest())
        async with Running(up):
            await assert_held_back(up, outbox, 20, failures=2)
            cmms.cmms.faults.queue.clear()  # the proxy is fixed
            await until(lambda: _pending_is(outbox, 0), timeout_s=10.0)
        assert len(await cmms.work_orders()) == 20
        assert (await outbox.stats()).dead_lettered == 0


async def test_a_422_naming_a_field_of_each_work_order_is_never_held_back(
    tmp_path: Path, outbox: Outbox
) -> None:
    """A 422 is the CMMS's own verdict on that work order's request: each is dead-lettered
    at once with its words, however many come alike in a row."""
    await outbox.append([severity("C", i=i) for i in range(6)])
    refused = Fault(
        status=422, content_type="application/json", body='{"error": "due_date: too early"}'
    )
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
        cmms.inject(refused, count=1000)
        async with Running(uplink(cfg(cmms.url, max_backoff_s=30.0), outbox)) as up:
            await until(lambda: _true(up.status.dead_lettered_total == 6))
            assert up.status.failures_total == 0
    dead = await outbox.dead_letters()
    assert all("due_date: too early" in d["reason"] for d in dead)
