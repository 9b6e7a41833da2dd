"""CMMS uplink, one work order per alert episode, against the real `edge-sim cmms` with a
real SQLite outbox: the episode's first record opens the work order, its escalation
raises that order's priority (a PATCH), never opens a second one, also across a restart,
a lost answer, or an agent stopped between the open and the update."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.store import EPISODES, Outbox, outbox_for
from simulators.backend import Fault
from simulators.cmms import CmmsServer
from tests.agent.uplink._alerts import maintenance, sensor_fault, severity
from tests.agent.uplink._running import Running, until
from tests.agent.uplink.test_cmms import TOKEN, UP, cfg, uplink
from tests.conftest import free_port
from tests.test_cmms_uplink import CONFIG


def _outbox(path: Path) -> Outbox:
    return Outbox(path, gateway_id="gw-01", max_bytes=1 << 30, first_seq=1,
                  uplinks=(UP,), carries={UP: EPISODES})  # fmt: skip


async def _drained(outbox: Outbox) -> bool:
    return (await outbox.stats()).pending == 0


async def _stats(cmms: CmmsServer) -> dict[str, int]:
    return await cmms.cmms.dbt.run(cmms.cmms.db.stats)


async def _deliver(outbox: Outbox, cmms: CmmsServer) -> None:
    """Run the uplink (a fresh transport: an agent started) until nothing is pending."""
    async with Running(uplink(cfg(cmms.url), outbox)):
        await until(lambda: _drained(outbox))


async def test_an_escalation_raises_the_priority_of_the_open_work_order_not_a_second_one(
    tmp_path: Path,
) -> None:
    """Zone C then zone D on one bearing (tier 2: high, then urgent). Before: WO-000001
    (high) and WO-000002 (urgent), two jobs for one bearing. Now: WO-000001, urgent, due
    at once, the zone D evidence in its notes."""
    async with _outbox(tmp_path / "outbox.db") as outbox:
        records = await outbox.append(
            [severity("C", tier=2, velocity=3.1, i=0),
             severity("D", "escalated", tier=2, velocity=5.2, i=60)]
        )  # fmt: skip
        async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
            await _deliver(outbox, cmms)
            orders = await cmms.work_orders()
            stats = await _stats(cmms)
        rows = {r["alert_id"]: r["deliveries"][UP] for r in await outbox.recent(10)}
    assert [o["request_key"] for o in orders] == [records[0]["alert_id"]]
    [order] = orders
    assert order["priority"] == "urgent" and order["due_date"] == "2026-11-21T08:16:02Z"
    assert order["title"].endswith("zone D vibration - damage likely, stop (escalated)")
    [note] = order["notes"]
    assert note["request_key"] == records[1]["alert_id"]
    assert "velocity RMS 5.2 mm/s, zone D" in note["text"]
    assert "velocity RMS 3.1 mm/s" in order["description"]  # the opening evidence stays
    assert (stats["created"], stats["updated"]) == (1, 1)
    assert {row["state"] for row in rows.values()} == {"delivered"}


async def test_the_episodes_work_order_is_known_after_a_restart(tmp_path: Path) -> None:
    """The raise's order, delivered by one agent, is updated by the next one after a
    restart; a new episode (after a clear) opens its own order, which its escalation
    updates, never the earlier episode's."""
    path = tmp_path / "outbox.db"
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
        async with _outbox(path) as outbox:
            [raised] = await outbox.append([severity("C", tier=2, i=0)])
            await _deliver(outbox, cmms)
        cmms.inject(Fault(status=502, after_store=True))  # the update's answer is lost
        async with _outbox(path) as outbox:  # the agent restarted
            later = await outbox.append(
                [severity("D", "escalated", tier=2, velocity=5.0, i=1),
                 severity("B", "cleared", tier=2, velocity=2.0, i=2),
                 severity("C", tier=2, i=3),
                 severity("D", "escalated", tier=2, velocity=5.0, i=4)]
            )  # fmt: skip
            await _deliver(outbox, cmms)
        orders = await cmms.work_orders()
        stats = await _stats(cmms)
    assert [o["request_key"] for o in orders] == [raised["alert_id"], later[2]["alert_id"]]
    notes = [[n["request_key"] for n in o["notes"]] for o in orders]
    assert notes == [[later[0]["alert_id"]], [later[3]["alert_id"]]]
    assert [o["priority"] for o in orders] == ["urgent", "urgent"]
    assert (stats["updated"], stats["update_replayed"]) == (2, 1)  # the retry applied once


async def test_stopped_between_open_and_update_neither_loses_nor_duplicates(
    tmp_path: Path,
) -> None:
    """The agent stops (as under kill -9) after the CMMS opened the order and before its
    answer came, with the escalation stored behind it; the next agent re-sends the open
    (replayed: no second order), then the update: one order, updated once."""
    path = tmp_path / "outbox.db"
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms:
        async with _outbox(path) as outbox:
            records = await outbox.append(
                [severity("C", tier=2, i=0), severity("D", "escalated", tier=2, i=1)]
            )
            cmms.inject(Fault(status=502, after_store=True, delay_s=1.5))
            async with Running(uplink(cfg(cmms.url), outbox)):
                await until(lambda: _created(cmms, 1))
            assert (await outbox.stats()).pending == 2  # the agent never had the answer
        async with _outbox(path) as outbox:
            await _deliver(outbox, cmms)
        orders = await cmms.work_orders()
        stats = await _stats(cmms)
    [order] = orders
    assert order["request_key"] == records[0]["alert_id"] and order["priority"] == "urgent"
    assert [n["request_key"] for n in order["notes"]] == [records[1]["alert_id"]]
    assert (stats["created"], stats["replayed"]) == (1, 1)
    assert (stats["updated"], stats["update_replayed"]) == (1, 0)


async def test_a_work_order_closed_in_the_cmms_is_replaced_by_the_escalation(
    tmp_path: Path,
) -> None:
    """A person closed the episode's order (or deleted it: 404) and the fault escalates:
    the escalation opens a new order, which the next escalation updates."""
    path = tmp_path / "outbox.db"
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms, _outbox(path) as ob:
        [raised] = await ob.append([severity("C", tier=2, i=0)])
        await _deliver(ob, cmms)
        [first] = await cmms.work_orders()
        assert await cmms.cmms.dbt.run(cmms.cmms.db.close, first["id"])
        later = await ob.append(
            [severity("D", "escalated", tier=2, i=1), severity("D", "escalated", tier=2, i=2)]
        )
        await _deliver(ob, cmms)
        orders = await cmms.work_orders()
    assert [o["request_key"] for o in orders] == [raised["alert_id"], later[0]["alert_id"]]
    assert orders[0]["notes"] == [] and orders[0]["status"] == "closed"
    assert [n["request_key"] for n in orders[1]["notes"]] == [later[1]["alert_id"]]


async def test_an_update_is_a_true_patch_unless_the_mapping_asks_for_the_override(
    tmp_path: Path,
) -> None:
    """The escalation's update is a PATCH of {url}/{id}; `mapping.update_method:
    post_override` sends it as a POST with X-HTTP-Method-Override: PATCH (Maximo). Before:
    always the POST with the override, even to a CMMS (or proxy) that only takes PATCH."""
    for method, overridden in (("patch", 0), ("post_override", 1)):
        path = tmp_path / f"{method}.db"
        async with (
            CmmsServer(db=tmp_path / f"cmms-{method}.db", token=TOKEN) as cmms,
            _outbox(path) as ob,
        ):
            await ob.append([severity("C", tier=2, i=0), severity("D", "escalated", tier=2, i=1)])
            mapping = {"update_method": method}
            async with Running(uplink(cfg(cmms.url, mapping=mapping), ob)):
                await until(lambda ob=ob: _drained(ob))
            [order] = await cmms.work_orders()
            stats = await _stats(cmms)
        assert order["priority"] == "urgent" and len(order["notes"]) == 1, method
        assert (stats["updated"], stats["updates_overridden"]) == (1, overridden), method


async def _created(cmms: CmmsServer, n: int) -> bool:
    stats: dict[str, Any] = await _stats(cmms)
    return bool(stats["created"] >= n)


async def test_a_clear_is_noted_on_the_open_work_order_when_the_mapping_says_so(
    tmp_path: Path,
) -> None:
    """mapping.on_clear: note routes the episode's clear to the uplink: it adds its note
    to the open order (priority and due date stay as the zone D escalation made them),
    and ends the order (its only channel cleared): the next raise opens a new order.
    Default: routed too, but sends nothing."""
    path = tmp_path / "outbox.db"
    mapping = {"on_clear": "note"}
    async with (
        CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms,
        Outbox(path, gateway_id="gw-01", max_bytes=1 << 30, first_seq=1, uplinks=(UP,),
               carries={UP: EPISODES}) as ob,
    ):  # fmt: skip
        records = await ob.append(
            [severity("C", tier=2, i=0), severity("D", "escalated", tier=2, i=1),
             severity("B", "cleared", tier=2, velocity=2.0, i=2), severity("C", tier=2, i=3)]
        )  # fmt: skip
        async with Running(uplink(cfg(cmms.url, mapping=mapping), ob)):
            await until(lambda: _drained(ob))
        orders = await cmms.work_orders()
        rows = {r["alert_id"]: r["deliveries"][UP] for r in await ob.recent(10)}
    assert [o["request_key"] for o in orders] == [records[0]["alert_id"], records[3]["alert_id"]]
    first = orders[0]
    assert [n["request_key"] for n in first["notes"]] == [r["alert_id"] for r in records[1:3]]
    assert "velocity RMS 2 mm/s, zone B" in first["notes"][1]["text"]
    assert first["priority"] == "urgent" and first["status"] == "open"
    assert first["due_date"] == "2026-11-21T08:15:03Z"  # the zone D escalation's
    assert {row["state"] for row in rows.values()} == {"delivered"}


async def test_the_clears_and_repairs_are_routed_to_the_uplink_whatever_on_clear_says(
    tmp_path: Path,
) -> None:
    """The store gives a CMMS uplink the findings, their clears and the repairs (it ends an
    asset's work order when all its channels cleared or the machine was repaired), with
    `mapping.on_clear: note` or without; a sensor fault never waits for it. Before: without
    on_clear: note the uplink never saw a clear, so it could not tell when a machine's
    fault ended."""
    for on_clear, waiting in (("note", 3), ("nothing", 3)):
        (tmp_path / "cmms-token").write_text("t\n")
        (tmp_path / "cmms-token").chmod(0o600)
        path = tmp_path / f"agent-{on_clear}.yaml"
        text = CONFIG.format(
            modbus_port=free_port(), url="http://127.0.0.1:9/api/v1/work-orders",
            store=tmp_path / f"{on_clear}.db", health_port=free_port(),
            socket=tmp_path / f"{on_clear}.sock",
        )  # fmt: skip
        path.write_text(text.replace("mapping:\n", f"mapping:\n        on_clear: {on_clear}\n"))
        config = load_config(path, environ={})
        async with outbox_for(config) as ob:
            await ob.append([severity("C", i=0), severity("B", "cleared", velocity=2.0, i=1),
                             maintenance(i=2), sensor_fault(i=3)])  # fmt: skip
            stats = await ob.stats()
        assert stats.uplinks["cmms"].pending == waiting, on_clear


async def test_a_raise_stored_before_a_tier_change_still_opens_the_order_not_a_second_one(
    tmp_path: Path,
) -> None:
    """A reload made the motor tier 1 between its zone C raise (stored at tier 2) and the
    zone D escalation. The outbox sent tier 1 first: the escalation opened the order, then
    the raise came (a note on it, or before that a second order). Now the episode keeps
    its order (agent.store._order): the raise opens the order, the escalation and the
    next record update it (the raise arriving after its escalation, a requeued dead
    letter, is the next test)."""
    path = tmp_path / "outbox.db"
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms, _outbox(path) as ob:
        records = await ob.append(
            [severity("C", tier=2, i=0), severity("D", "escalated", tier=1, i=1)]
        )
        await _deliver(ob, cmms)
        [revised] = await ob.append([severity("D", "escalated", tier=1, velocity=6.0, i=2)])
        await _deliver(ob, cmms)
        orders = await cmms.work_orders()
    assert [o["request_key"] for o in orders] == [records[0]["alert_id"]]
    [order] = orders
    assert order["priority"] == "urgent" and order["due_date"] == "2026-11-21T08:15:03Z"
    notes = [n["request_key"] for n in order["notes"]]
    assert notes == [records[1]["alert_id"], revised["alert_id"]]


async def test_a_dead_lettered_raise_requeued_after_its_escalation_went_is_a_note(
    tmp_path: Path,
) -> None:
    """The CMMS refuses the zone C raise (a mapping the CMMS does not take: its priority
    for tier 2 zone C); another asset's alert goes through, so the raise is dead-lettered
    (the operator sees why in the dead letters) and its escalation, not held behind it,
    opens the episode's order. The mapping fixed, the raise requeued: before, it opened
    a second order for the bearing; now its evidence is a note on the escalation's."""
    path = tmp_path / "outbox.db"
    bad = {"priority": {"2": {"C": "whenever"}}}
    async with CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms, _outbox(path) as ob:
        raised, other, escalated = await ob.append(
            [severity("C", tier=2, i=0), severity("D", tier=2, aid="press-8", i=1),
             severity("D", "escalated", tier=2, i=2)]
        )  # fmt: skip
        async with Running(uplink(cfg(cmms.url, mapping=bad), ob)):
            await until(lambda: _drained(ob))
        [dead] = await ob.dead_letters(uplink=UP)
        assert dead["id"] == raised["alert_id"] and "priority" in dead["reason"], dead["reason"]
        await ob.requeue(uplink=UP)
        await _deliver(ob, cmms)
        orders = await cmms.work_orders()
    keys = [o["request_key"] for o in orders]
    assert keys == [other["alert_id"], escalated["alert_id"]]
    assert orders[1]["priority"] == "urgent"
    assert [n["request_key"] for n in orders[1]["notes"]] == [raised["alert_id"]]


async def test_an_earlier_episodes_records_sent_late_never_touch_the_next_episodes_order(
    tmp_path: Path,
) -> None:
    """A raise and its clear stored at tier 2, then (a reload made the motor tier 1) the
    next episode's raise: it waits behind that clear (agent.store._order; before, tier 1
    went first and opened its order first). The earlier clear (mapping.on_clear: note)
    is a note on the earlier order only, never on the later episode's order, which stays
    the episode's. Before: the clear said 'zone B' on the order of the fault that is
    still there."""
    path = tmp_path / "outbox.db"
    async with (
        CmmsServer(db=tmp_path / "cmms.db", token=TOKEN) as cmms,
        Outbox(path, gateway_id="gw-01", max_bytes=1 << 30, first_seq=1, uplinks=(UP,),
               carries={UP: EPISODES}) as ob,
    ):  # fmt: skip
        first, clear, second = await ob.append(
            [severity("C", tier=2, i=0), severity("B", "cleared", tier=2, velocity=2.0, i=1),
             severity("C", tier=1, i=2)]
        )  # fmt: skip
        c = cfg(cmms.url, mapping={"on_clear": "note"})
        async with Running(uplink(c, ob)):
            await until(lambda: _drained(ob))
        [escalated] = await ob.append([severity("D", "escalated", tier=1, i=3)])
        async with Running(uplink(c, ob)):
            await until(lambda: _drained(ob))
        orders = await cmms.work_orders()
    by_key = {o["request_key"]: o for o in orders}
    assert sorted(by_key) == sorted([first["alert_id"], second["alert_id"]])
    assert [n["request_key"] for n in by_key[first["alert_id"]]["notes"]] == [clear["alert_id"]]
    later = by_key[second["alert_id"]]
    assert [n["request_key"] for n in later["notes"]] == [escalated["alert_id"]]
    assert later["priority"] == "urgent"
