"""An alert episode reaches the far end in the order it was stored though a reload changed
its asset's tier between its records: the real backend simulator, `edge-sim cmms` and a
real mosquitto, with a real SQLite outbox (agent.store._order)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import HttpUplink as HttpUplinkConfig
from agent.store import EPISODES, Outbox
from agent.uplink import HttpTransport, delivery
from simulators.backend import BackendServer
from simulators.cmms import CmmsServer
from tests.agent.uplink import test_cmms, test_mqtt
from tests.agent.uplink._alerts import severity
from tests.agent.uplink._running import Running, until
from tests.mosquitto import Certs, Collector, Mosquitto, make_certs

TOKEN = "s3cret-token"


def _outbox(path: Path, up: str, **kw: Any) -> Outbox:
    return Outbox(path, gateway_id="gw-01", max_bytes=1 << 30, first_seq=1, uplinks=(up,), **kw)


async def _store_across_a_tier_change(outbox: Outbox) -> list[dict[str, Any]]:
    """Raise on tier 3; a reload makes the asset tier 1; escalation and clear; and another
    asset's tier-2 raise."""
    return [
        *await outbox.append([severity("C", tier=3, velocity=3.1, i=0)]),
        *await outbox.append([severity("C", tier=2, aid="fan-2", i=1)]),
        *await outbox.append(
            [severity("D", "escalated", tier=1, velocity=5.2, i=60),
             severity("B", "cleared", tier=1, velocity=2.0, i=120)]
        ),
    ]  # fmt: skip


async def _drained(outbox: Outbox) -> bool:
    return (await outbox.stats()).pending == 0


@pytest.mark.parametrize("batch_size", [10, 1])
async def test_the_backend_gets_the_raise_before_its_clear(tmp_path: Path, batch_size: int) -> None:
    """Before: the backend got the escalation and clear first, then a raise that never
    cleared (in one POST, or one alert a POST). Now raise, escalation, clear."""
    async with _outbox(tmp_path / "outbox.db", "up") as outbox:
        raised, other, escalated, cleared = await _store_across_a_tier_change(outbox)
        async with BackendServer(db=tmp_path / "backend.db", token=TOKEN) as backend:
            c = HttpUplinkConfig(url=backend.url, token=TOKEN, batch_size=batch_size,
                                 timeout_s=2.0, max_backoff_s=0.3)  # fmt: skip
            async with Running(delivery("up", HttpTransport(c, name="up"), outbox, c)):
                await until(lambda: _drained(outbox))
            got = [a["alert"]["alert_id"] for a in await backend.alerts()]
    # The other asset's tier-2 raise still goes ahead of the tier-3 episode.
    assert got == [r["alert_id"] for r in (other, raised, escalated, cleared)]


async def test_the_cmms_gets_one_work_order_for_the_episode(tmp_path: Path) -> None:
    """Before: the escalation (tier 1) opened WO-000001, then its raise (tier 3) opened
    WO-000002: two jobs for one bearing, the second never ended. Now one, escalated."""
    up = test_cmms.UP
    async with _outbox(tmp_path / "outbox.db", up, carries={up: EPISODES}) as outbox:
        raised, _, escalated, _ = await _store_across_a_tier_change(outbox)
        async with CmmsServer(db=tmp_path / "cmms.db", token=test_cmms.TOKEN) as cmms:
            async with Running(test_cmms.uplink(test_cmms.cfg(cmms.url), outbox)):
                await until(lambda: _drained(outbox))
            orders = [o for o in await cmms.work_orders() if "fan-2" not in o["title"]]
    [order] = orders
    assert order["request_key"] == raised["alert_id"]
    assert [n["request_key"] for n in order["notes"]] == [escalated["alert_id"]]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def broker(tmp_path: Path, certs: Certs) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", certs=certs) as m:
        yield m


@pytest.mark.network
async def test_mqtt_subscribers_get_the_raise_before_its_clear(
    tmp_path: Path, broker: Mosquitto
) -> None:
    collector = Collector(broker, f"edge-agent/{test_mqtt.GW}/#")
    await collector.subscribe()
    async with _outbox(tmp_path / "outbox.db", test_mqtt.UP) as outbox:
        records = await _store_across_a_tier_change(outbox)
        async with Running(test_mqtt.mqtt(test_mqtt.cfg(broker), outbox)):
            await until(lambda: _drained(outbox))
    want = {r["alert_id"] for r in records}
    await asyncio.wait_for(collector.collect(want), 20)
    got = [m["alert_id"] for _, m in collector.messages if m.get("alert_id") in want]
    raised, other, escalated, cleared = (r["alert_id"] for r in records)
    episode = [a for a in dict.fromkeys(got) if a != other]
    assert episode == [raised, escalated, cleared], got
