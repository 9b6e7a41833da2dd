"""Topic filters with characters a broker refuses are refused by the configuration (so by
`edge-agent check`): mosquitto takes their SUBSCRIBE as a malformed packet and disconnects
the client, and the link would subscribe, be dropped and reconnect without end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from agent.config._mqtt import topic_filter_problem
from tests.mosquitto import Mosquitto

REFUSED = ["a/\x01b", "a/\x1f", "a/\x7fb", "a/\x85", "a/\ufdd0", "a/\ufffeb", "a/\U0010ffff"]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


async def _subscribe_outcome(port: int, topic: str) -> str:
    try:
        async with aiomqtt.Client("127.0.0.1", port, timeout=3) as client:
            await client.subscribe(topic, qos=1)
            await asyncio.sleep(0.2)
            await client.subscribe("still/here", qos=1)  # the connection still answers
            return "subscribed"
    except aiomqtt.MqttError as exc:
        return f"dropped: {exc}"


@pytest.mark.network
async def test_the_configuration_refuses_what_the_broker_drops_us_for(broker: Mosquitto) -> None:
    # What the broker takes stays accepted: a zero-width space, an accent, wildcards.
    accepted = ["a/\u200bb", "café/+/x", "ncd/#"]
    # One connection per topic, all at once: a dropped SUBSCRIBE is only seen when its
    # 3 s SUBACK wait ends, so one after the other the topics took 3 s each.
    outcomes = await asyncio.gather(
        *(_subscribe_outcome(broker.port, topic) for topic in REFUSED + accepted)
    )
    for topic, outcome in zip(REFUSED, outcomes[: len(REFUSED)], strict=True):
        assert outcome.startswith("dropped"), topic
        problem = topic_filter_problem(topic)
        assert problem is not None and "U+" in problem, topic
    for topic, outcome in zip(accepted, outcomes[len(REFUSED) :], strict=True):
        assert outcome == "subscribed", topic
        assert topic_filter_problem(topic) is None
