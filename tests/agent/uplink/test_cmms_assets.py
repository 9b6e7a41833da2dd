"""CMMS uplink, one work order per machine and fault, against the real `edge-sim cmms` with
a real SQLite outbox: a bearing watched on two axes (two channels of one sensor) or by two
sensors of one asset is one job for the planner; the order takes every channel's findings
until all of them cleared (or the machine was repaired), across restarts; its entry in the
store is deleted once it ended, and the map stays bounded."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from agent.records import AlertDraft, SensorRef
from agent.store import EPISODES, Outbox
from agent.uplink._cmms_orders import EpisodeOrders
from agent.uplink._workorder import OpenOrder
from simulators.cmms import CmmsServer
from tests.agent.uplink._alerts import maintenance, severity
from tests.agent.uplink._running import Running, until
from tests.agent.uplink.test_cmms import TOKEN, UP, cfg, uplink

ROWS = f"uplink/{UP}/"


def _outbox(path: Path) -> Outbox:
    return Outbox(path, gateway_id="gw-01", max_bytes=1 << 30, first_seq=1,
                  uplinks=(UP,), carries={UP: EPISODES})  # fmt: skip


def _on(channel: str, draft: AlertDraft, sensor: str = "m1-de") -> AlertDraft:
    return replace(draft, sensor=SensorRef(sensor, channel, "modbus"))


async def _drained(outbox: Outbox) -> bool:
    return (await outbox.stats()).pending == 0


async def _deliver(outbox: Outbox, cmms: CmmsServer, **kw: Any) -> None:
    """Run the uplink (a fresh transport: an agent started) until nothing is pending."""
    async with Running(uplink(cfg(cmms.url, **kw), outbox)):
        await until(lambda: _drained(outbox))


def _notes(order: dict[str, Any]) -> list[str]:
    return [n["request_key"] for n in order["notes"]]


async def test_two_axes_of_one_bearing_are_one_work_order_until_both_cleared(
    tmp_path: Path,
) -> None:
    """z and x of one sensor raise zone C, x goes to D (the agent restarted between), z
    clears, x clears, z raises again. Before: WO-000001 (z) and WO-000002 (x), two jobs
    for one bearing, then WO-000003. Now: WO-000001 has x's raise and escalation and both
    clears as notes (urgent), and only the raise after both cleared opens WO-000002."""
    path = tmp_path / "outbox.db"
    kw = {"mapping": {"on_clear": "note"}}
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
        async with _outbox(path) as ob:
            first = await ob.append(
                [_on("z", severity("C", tier=2, i=0)), _on("x", severity("C", tier=2, i=1))]
            )
            await _deliver(ob, cmms, **kw)
        async with _outbox(path) as ob:  # the agent restarted: the map is in the store
            later = await ob.append(
                [_on("x", severity("D", "escalated", tier=2, velocity=5.0, i=2)),
                 _on("z", severity("B", "cleared", tier=2, velocity=2.0, i=3)),
                 _on("x", severity("B", "cleared", tier=2, velocity=2.0, i=4)),
                 _on("z", severity("C", tier=2, i=5))]
            )  # fmt: skip
            await _deliver(ob, cmms, **kw)
            rows = await ob.load_state()
        orders = await cmms.work_orders()
    assert [o["request_key"] for o in orders] == [first[0]["alert_id"], later[3]["alert_id"]]
    one, two = orders
    assert _notes(one) == [first[1]["alert_id"], *(r["alert_id"] for r in later[:3])]
    assert one["priority"] == "urgent" and two["priority"] == "high" and _notes(two) == []
    kept = {k: json.loads(v) for k, v in rows.items() if k.startswith(ROWS)}
    assert list(kept) == [f"{ROWS}asset_order/press-7"]  # the ended order's row is gone
    assert kept[f"{ROWS}asset_order/press-7"]["work_order"] == two["id"]


async def test_the_order_ends_only_when_all_its_channels_cleared(tmp_path: Path) -> None:
    """Default mapping (clears add no note): two sensors of one machine raise; one clears
    and raises again while the other is still in fault (the same order, a note); once
    both cleared, the next raise opens a new order. The ended one's row says when it
    ended, and covers no channel."""
    path = tmp_path / "outbox.db"
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms, _outbox(path) as ob:
        recs = await ob.append(
            [_on("z", severity("C", i=0)), _on("z", severity("C", i=1), sensor="m1-nde"),
             _on("z", severity("B", "cleared", velocity=2.0, i=2)),
             _on("z", severity("C", i=3)),
             _on("z", severity("B", "cleared", velocity=2.0, i=4), sensor="m1-nde"),
             _on("z", severity("B", "cleared", velocity=2.0, i=5))]
        )  # fmt: skip
        await _deliver(ob, cmms)
        rows = {k: json.loads(v) for k, v in (await ob.load_state()).items() if k.startswith(ROWS)}
        # Ended at the last clear: kept only for a finding detected before it, delivered late.
        [ended] = rows.values()
        assert ended["channels"] == [] and ended["ended"] == recs[5]["detected_at"]
        [again] = await ob.append([_on("z", severity("C", i=6), sensor="m1-nde")])
        await _deliver(ob, cmms)
        orders = await cmms.work_orders()
    assert [o["request_key"] for o in orders] == [recs[0]["alert_id"], again["alert_id"]]
    assert _notes(orders[0]) == [recs[1]["alert_id"], recs[3]["alert_id"]]


async def test_a_repair_ends_the_machines_work_order(tmp_path: Path) -> None:
    """Both axes raise (one order, the second axis a note on it), then the repair record
    (no clears after it: it closes the machine's episodes) ends the order: the fault
    found after it is a new job, not a note on the repaired one."""
    path = tmp_path / "outbox.db"
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms, _outbox(path) as ob:
        z, x, _repair, again = await ob.append(
            [_on("z", severity("C", i=0)), _on("x", severity("C", i=1)), maintenance(i=2),
             _on("x", severity("C", i=3))]
        )  # fmt: skip
        await _deliver(ob, cmms)
        orders = await cmms.work_orders()
    assert [o["request_key"] for o in orders] == [z["alert_id"], again["alert_id"]]
    assert _notes(orders[0]) == [x["alert_id"]] and orders[1]["notes"] == []


async def test_an_update_goes_to_the_configured_update_url(tmp_path: Path) -> None:
    """A CMMS behind a function key (?code=): the open goes to url, the update to
    update_url with the order's id in {id}. Before: no update_url; the update went to
    '{url}/{id}', i.e. '...?code=k/WO-000001', and never reached the order."""
    path = tmp_path / "outbox.db"
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms, _outbox(path) as ob:
        raised, escalated = await ob.append(
            [severity("C", tier=2, i=0), severity("D", "escalated", tier=2, i=1)]
        )
        c = cfg(f"{cmms.url}?code=k", update_url=f"{cmms.url}/{{id}}?code=k")
        async with Running(uplink(c, ob)):
            await until(lambda: _drained(ob))
        [order] = await cmms.work_orders()
    assert order["request_key"] == raised["alert_id"] and order["priority"] == "urgent"
    assert _notes(order) == [escalated["alert_id"]]


async def test_entries_of_an_agent_before_this_version_are_taken_over(tmp_path: Path) -> None:
    """The store holds the order under the per-channel key an earlier agent kept: the
    other axis's escalation updates that order, and the old row is replaced by one per
    machine."""
    path = tmp_path / "outbox.db"
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms, _outbox(path) as ob:
        [raised] = await ob.append([_on("z", severity("C", tier=2, i=0))])
        await _deliver(ob, cmms)
        new = f"{ROWS}asset_order/press-7"
        order = json.loads((await ob.load_state())[new])
        del order["channels"]
        await ob.drop_state([new])
        old = f"{ROWS}work_order/severity/press-7/m1-de/z"
        await ob.append([], {old: json.dumps(order)})
        [escalated] = await ob.append([_on("x", severity("D", "escalated", tier=2, i=1))])
        await _deliver(ob, cmms)
        rows = {k: v for k, v in (await ob.load_state()).items() if k.startswith(ROWS)}
        [wo] = await cmms.work_orders()
    assert wo["request_key"] == raised["alert_id"] and _notes(wo) == [escalated["alert_id"]]
    assert list(rows) == [new]
    assert json.loads(rows[new])["channels"] == [
        "severity/press-7/m1-de/z",
        "severity/press-7/m1-de/x",
    ]


async def test_the_map_is_bounded_and_loads_only_its_own_rows(tmp_path: Path) -> None:
    """Beyond its limit the oldest opened order is forgotten (its row deleted); a
    restart reads this uplink's rows only, at most the limit."""
    async with _outbox(tmp_path / "outbox.db") as ob:
        await ob.append([], {"monitor/press-7": "{}", "uplink/other/asset_order/a": "{}"})
        orders = EpisodeOrders(UP, ob, limit=2)
        for i, asset in enumerate(("a", "b", "c")):
            due, channel = "2026-11-21T08:15:02Z", f"severity/{asset}/s/z"
            order = OpenOrder(f"WO-{i}", f"k{i}", "C", due, seq=i + 1, channels=(channel,))
            await orders.put(asset, order)
        assert await orders.get("a") is None
        assert sorted(await ob.load_state(f"{ROWS}asset_order/")) == [
            f"{ROWS}asset_order/b",
            f"{ROWS}asset_order/c",
        ]
        again = EpisodeOrders(UP, ob, limit=2)
        got = await again.get("c")
        assert got is not None and asdict(got)["channels"] == ("severity/c/s/z",)
        assert await again.get("a") is None
        assert len(await ob.load_state(f"{ROWS}asset_order/", 1)) == 1


def _legacy(seq: int, wo: str) -> str:
    order = OpenOrder(wo, f"k{seq}", "C", "2026-11-21T08:15:02Z", seq=seq)
    raw = asdict(order)
    del raw["channels"]  # an earlier agent's row: no channels
    return json.dumps(raw, sort_keys=True)


async def test_an_earlier_agents_rows_are_taken_over_whatever_the_channels_names(
    tmp_path: Path,
) -> None:
    """A register profile or payload decoder of the site's own may name its channels with
    a slash (de/z). Before: the old row of such a channel was not recognised and deleted,
    its open order forgotten: the machine's next finding opened a second order."""
    async with _outbox(tmp_path / "outbox.db") as ob:
        old = f"{ROWS}work_order/severity/press-7/m1/de/z"
        await ob.append([], {old: _legacy(1, "WO-000001")})
        got = await EpisodeOrders(UP, ob).get("press-7")
        assert got is not None and got.work_order == "WO-000001"
        assert got.channels == ("severity/press-7/m1/de/z",)
        assert list(await ob.load_state(f"{ROWS}")) == [f"{ROWS}asset_order/press-7"]


async def test_an_earlier_agents_rows_beyond_the_limit_are_all_taken_over(
    tmp_path: Path,
) -> None:
    """An earlier agent kept a row per channel: more of them than the map's limit of
    assets. Before: only the first `limit` (by key) were taken over at the first start,
    the other assets' orders were unknown until the next restart (their findings opened
    second orders meanwhile)."""
    async with _outbox(tmp_path / "outbox.db") as ob:
        rows = {
            f"{ROWS}work_order/severity/{a}/s/{ch}": _legacy(i * 2 + j, f"WO-{a}")
            for i, a in enumerate(("a", "b", "c"))
            for j, ch in enumerate(("x", "z"))
        }
        await ob.append([], rows)
        orders = EpisodeOrders(UP, ob, limit=3)
        for a in ("a", "b", "c"):
            got = await orders.get(a)
            assert got is not None and got.work_order == f"WO-{a}"
            assert sorted(got.channels) == [f"severity/{a}/s/x", f"severity/{a}/s/z"]
        assert not await ob.load_state(f"{ROWS}work_order/")


async def test_a_finding_detected_before_the_order_ended_is_the_same_fault(
    tmp_path: Path,
) -> None:
    """Sensor m1-de raises and clears; the other sensor's raise, detected while m1-de was
    still in fault (its readings time-stamped by the device and delivered late, after a
    network drop), is stored after that clear, and the agent restarted between. Before:
    the order had ended at the clear (its row deleted) and the late raise opened a second
    order for the one fault. Now it updates the order it was in fault under; a finding
    detected after the clear still opens a new one."""
    path = tmp_path / "outbox.db"
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
        async with _outbox(path) as ob:
            first = await ob.append(
                [_on("z", severity("C", i=0)),
                 _on("z", severity("B", "cleared", velocity=2.0, i=10))]
            )  # fmt: skip
            await _deliver(ob, cmms)
        async with _outbox(path) as ob:
            [late] = await ob.append([_on("z", severity("C", i=5), sensor="m1-nde")])
            await _deliver(ob, cmms)
            await ob.append([_on("z", severity("B", "cleared", velocity=2.0, i=20), "m1-nde")])
            [anew] = await ob.append([_on("z", severity("C", i=30))])
            await _deliver(ob, cmms)
        orders = await cmms.work_orders()
    assert [o["request_key"] for o in orders] == [first[0]["alert_id"], anew["alert_id"]]
    assert _notes(orders[0]) == [late["alert_id"]] and orders[1]["notes"] == []


async def test_one_axis_clearing_as_the_other_raises_is_one_fault(tmp_path: Path) -> None:
    """One reading: z falls back under its threshold as x crosses its own, and z's clear
    is stored first. Before: the order ended at z's clear and x's raise, the same
    reading's, opened a second order while the machine never stopped being alarmed."""
    path = tmp_path / "outbox.db"
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms, _outbox(path) as ob:
        z, _clear, x = await ob.append(
            [_on("z", severity("C", i=0)),
             _on("z", severity("B", "cleared", velocity=2.0, i=7)),
             _on("x", severity("C", i=7))]
        )  # fmt: skip
        await _deliver(ob, cmms)
        orders = await cmms.work_orders()
    assert [o["request_key"] for o in orders] == [z["alert_id"]]
    assert _notes(orders[0]) == [x["alert_id"]]


async def test_a_work_order_id_that_names_no_order_in_a_url_stalls_nothing(
    tmp_path: Path,
) -> None:
    """A CMMS (here a small one of another make) answers an open with the id "..": in
    `{url}/{id}` it names no order (a URL's dot segment: PATCH /api/v1/, which that CMMS
    does not have). Before: the id was kept, every later finding of the machine was
    PATCHed there, answered 404 and retried for ever, and every record behind it waited.
    Now such an id is taken for no id: the findings are delivered."""
    from aiohttp import web

    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        if request.method == "POST" and request.path == "/api/v1/work-orders":
            return web.json_response({"id": ".."}, status=201)
        return web.Response(status=404, text="no such route")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with _outbox(tmp_path / "outbox.db") as ob:
            await ob.append([_on("z", severity("C", i=0)), _on("x", severity("C", i=1))])
            url = f"http://127.0.0.1:{port}/api/v1/work-orders"
            async with Running(uplink(cfg(url, allow_insecure_http=True), ob)):
                await until(lambda: _drained(ob))
    finally:
        await runner.cleanup()
    assert all(s == "POST /api/v1/work-orders" for s in seen), seen


async def test_at_the_limit_an_asset_no_longer_configured_is_forgotten_first(
    tmp_path: Path,
) -> None:
    """The map is full: press-7, still configured and in fault, has the oldest open
    order; old-3 was removed from the configuration by a reload while its order was open
    (no clear of it will ever come). Before: press-7's order was forgotten (its next
    finding opened a second order, its clears ended nothing) and old-3's row kept. Now
    the row of the asset no longer configured goes first."""
    async with _outbox(tmp_path / "outbox.db") as ob:
        orders = EpisodeOrders(UP, ob, limit=2, configured={"press-7", "fan-3"})
        due = "2026-11-21T08:15:02Z"
        for i, asset in enumerate(("press-7", "old-3", "fan-3")):
            channel = f"severity/{asset}/s/z"
            order = OpenOrder(f"WO-{i}", f"k{i}", "C", due, seq=i + 1, channels=(channel,))
            await orders.put(asset, order)
        assert await orders.get("old-3") is None
        kept = await EpisodeOrders(UP, ob, limit=2).get("press-7")
        assert kept is not None and kept.work_order == "WO-0"


async def test_a_row_beyond_the_limit_left_by_a_kill_is_not_invisible(tmp_path: Path) -> None:
    """At the limit, the agent is killed between keeping a new asset's order and
    forgetting the oldest: one row too many on disk. Before: a start read the lowest
    `limit` keys only, so the order of the asset whose key sorts last was invisible
    (its next finding opened a second order) and never deleted. Now the oldest opened is
    forgotten."""
    async with _outbox(tmp_path / "outbox.db") as ob:
        due = "2026-11-21T08:15:02Z"
        rows = {}
        for i, asset in enumerate(("b", "c", "a")):  # "a" kept first, opened last
            order = OpenOrder(f"WO-{asset}", f"k{i}", "C", due, seq=i + 1,
                              channels=(f"severity/{asset}/s/z",))  # fmt: skip
            rows[f"{ROWS}asset_order/{asset}"] = json.dumps(asdict(order), sort_keys=True)
        await ob.append([], rows)
        orders = EpisodeOrders(UP, ob, limit=2)
        assert await orders.get("b") is None  # the oldest opened
        got = await orders.get("c")
        assert got is not None and got.work_order == "WO-c"
        assert len(await ob.load_state(f"{ROWS}asset_order/")) == 2
