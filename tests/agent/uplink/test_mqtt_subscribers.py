"""MQTT uplink, PUBACK 0x10 "No matching subscribers" through a real mosquitto: with nobody
subscribed the broker discards the message, so (require_subscriber) it is no delivery."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.config import MqttUplink as MqttUplinkConfig
from agent.store import Outbox
from agent.uplink import Delivery, MqttTransport, delivery
from tests.agent.store._drafts import draft
from tests.agent.uplink._running import Running, true, until
from tests.mosquitto import Mosquitto

pytestmark = [pytest.mark.network, pytest.mark.slow]

UP = "broker"
GW = "gw-01"
TOPIC = f"edge-agent/{GW}/severity"
N = 12


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as m:
        yield m


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(
        tmp_path / "outbox.db", gateway_id=GW, max_bytes=1 << 30, first_seq=1, uplinks=(UP,)
    ) as ob:
        yield ob


def uplink(broker: Mosquitto, outbox: Outbox, **kw: Any) -> Delivery:
    base: dict[str, Any] = {"host": "127.0.0.1", "port": broker.port, "tls": None,
                            "timeout_s": 2.0, "max_backoff_s": 1.5, "probe_interval_s": 0.3,
                            "batch_size": 5}  # fmt: skip
    c = MqttUplinkConfig(**(base | kw))
    return delivery(UP, MqttTransport(c, name=UP, gateway_id=GW), outbox, c)


async def pending(outbox: Outbox) -> int:
    return (await outbox.stats()).uplinks[UP].pending


class Subscriber:
    """A backend consumer with a clean session: connected at once, subscribed on cue."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = aiomqtt.Client("127.0.0.1", broker.port, identifier="test-consumer",
                                     protocol=aiomqtt.ProtocolVersion.V5)  # fmt: skip
        self.ids: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        await self.client.__aenter__()
        self._task = asyncio.create_task(self._take())
        return self

    async def _take(self) -> None:
        async for msg in self.client.messages:
            self.ids.append(json.loads(bytes(msg.payload))["alert_id"])  # type: ignore[arg-type]

    async def subscribe(self) -> None:
        await self.client.subscribe(f"edge-agent/{GW}/#", qos=1)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.client.__aexit__(None, None, None)


async def test_with_no_subscriber_alerts_stay_pending_then_arrive_once_each_in_order(
    broker: Mosquitto, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.uplink")
    records = await outbox.append([draft(i=i) for i in range(N)])
    want = [r["alert_id"] for r in records]
    async with Subscriber(broker) as consumer, Running(uplink(broker, outbox)) as up:
        await until(lambda: true(up.status.consecutive_failures >= 3))
        # The broker answered 0x10 and dropped them: nothing delivered, nothing dead.
        assert await pending(outbox) == N
        stats = await outbox.stats()
        assert stats.dead_lettered == 0 and up.status.dead_lettered_total == 0
        assert up.status.delivered_total == 0
        err = up.status.last_error or ""
        assert "PUBACK 0x10 No matching subscribers on topic " + TOPIC in err, err
        assert "require_subscriber: false" in err
        # The broker answered: no probing (a TCP probe cannot see a subscriber come).
        assert up.status.probes_total == 0
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "0x10" in errors[0].getMessage(), errors  # per episode
        log = await asyncio.to_thread(broker.log.read_text)
        assert f"Sending PUBACK to edge-agent-{GW}-{UP} (m1, rc16)" in log, log[-2000:]
        # The consumer subscribes while the uplink waits out a backoff (not during a
        # batch: a subscription landing mid-batch would let later alerts through first).
        await a_long_backoff_begins(up)
        await consumer.subscribe()
        await until(lambda: _eq(pending(outbox), 0))
        await until(lambda: true(len(consumer.ids) >= N))
        await asyncio.sleep(0.5)  # a duplicate would come now
    assert consumer.ids == want  # every alert exactly once, in order
    assert up.status.delivered_total == N and up.status.consecutive_failures == 0
    assert (await outbox.stats()).dead_lettered == 0
    assert any("recovered" in r.getMessage() for r in caplog.records)


async def test_require_subscriber_false_counts_a_puback_0x10_as_delivered(
    broker: Mosquitto, outbox: Outbox
) -> None:
    await outbox.append([draft(i=i) for i in range(N)])
    async with Running(uplink(broker, outbox, require_subscriber=False)) as up:
        await until(lambda: _eq(pending(outbox), 0))
    assert up.status.delivered_total == N and up.status.failures_total == 0
    log = await asyncio.to_thread(broker.log.read_text)
    assert log.count(f"Sending PUBACK to edge-agent-{GW}-{UP} (") == N
    assert log.count(", rc16)") == N, log[-2000:]  # each one a 0x10, nobody subscribed


async def a_long_backoff_begins(up: Delivery, at_least_s: float = 0.5) -> None:
    """Return as a backoff of at least at_least_s starts (the jitter may draw less)."""
    for _ in range(20):
        attempts = up.status.attempts_total
        await until(lambda a=attempts: true(up.status.attempts_total > a
                                            and up.status.state == "backoff"))  # fmt: skip
        if (up.status.next_retry_in_s or 0.0) >= at_least_s:  # fresh: set as it began
            return
    raise AssertionError("no backoff long enough")


async def _eq(value: Any, expected: int) -> bool:
    return bool(await value == expected)
