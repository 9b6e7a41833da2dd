"""The decode queue's bound in payload bytes (real mosquitto): while decoding is held up,
messages past queue_max_bytes are dropped and counted as queue_bytes, what was queued is
decoded once it resumes, and below the bound nothing is dropped.

Decoding is held up as an analysis stall holds it: the link's consumer does not run (a
gate before it), while paho goes on reading the socket and queueing, as it does in the
agent whenever the link's task gets no turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.health_mqtt import mqtt_metrics
from drivers.mqtt import BrokerLink
from tests.drivers.test_mqtt_link import MAC, TOPIC, Rig, broker, publish, until
from tests.mosquitto import Mosquitto

pytestmark = [pytest.mark.network]
__all__ = ["broker"]  # the fixture

KIB = 1024
PAYLOAD = 100 * KIB  # well under the 256 KiB cap: only the queue's bound can drop these


def big(v: float, size: int = PAYLOAD) -> bytes:
    """An NCD reading padded to exactly `size` bytes (a waveform-sized message)."""
    head = {"addr": MAC, **{f"{a}_velocity_mm_sec": v for a in "xyz"}, "pad": ""}
    pad = size - len(json.dumps(head).encode())
    return json.dumps({**head, "pad": "x" * pad}).encode()


class StalledRig(Rig):
    """A rig whose link decodes nothing until `resume()` (the consumer held up)."""

    def __init__(self, broker: Mosquitto, **settings: Any) -> None:
        super().__init__(broker, **settings)
        gate = self.gate = asyncio.Event()

        class _Held(BrokerLink):
            async def _consume(self, client: Any) -> None:
                await gate.wait()
                await super()._consume(client)

        self.link = _Held(self.link.settings, self.link.router)  # the consumer behind a gate

    def resume(self) -> None:
        self.gate.set()


async def publish_big(port: int, values: range) -> None:
    """Publish one padded reading per value, each made just before it is sent (the test's
    own memory must not hold what the link is asked to bound)."""
    async with aiomqtt.Client("127.0.0.1", port) as c:
        for v in values:
            await c.publish(TOPIC, big(float(v)), qos=1)


def arrived(link: BrokerLink) -> int:
    """Messages paho handed over: queued (not yet decoded) or dropped at the queue."""
    s = link.status()
    return int(s["queue_depth"]) + int(s["queue_dropped_total"])


def dropped_samples(link: BrokerLink) -> dict[str, float]:
    """edge_mqtt_queue_dropped as /metrics shows it: reason -> count."""
    families = mqtt_metrics({"mqtt": [link.status()]})
    family = next(m for m in families if m.name == "edge_mqtt_queue_dropped")
    return {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")}


def rss_mib() -> float:
    """This process's resident set now (Linux: /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


async def test_past_queue_max_bytes_messages_are_dropped_as_queue_bytes_and_the_link_goes_on(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    bound = 1024 * KIB  # room for 10 messages of 100 KiB
    rig = StalledRig(broker, queue_max_bytes=bound)
    sent = 300  # 30 MB of payload against a 1 MiB bound
    caplog.set_level(logging.WARNING, logger="edge_agent.drivers.mqtt")
    async with rig.running() as link:
        before = rss_mib()
        await publish_big(broker.port, range(sent))
        await until(lambda: arrived(link) == sent, 30)
        held = link.status()
        grown = rss_mib() - before
        assert held["queue_bytes"] == 10 * PAYLOAD <= bound
        assert held["queue_bytes_peak"] <= bound
        assert held["queue_depth"] == 10
        assert held["queue_dropped"] == {"queue_full": 0, "queue_bytes": sent - 10}
        assert dropped_samples(link) == {"queue_full": 0.0, "queue_bytes": sent - 10.0}
        # Memory: the queue holds 1 MiB, not the 30 MB sent (slack for the publisher's
        # buffers and the allocator, which need not give freed memory back at once).
        assert grown < 10.0, f"resident set grew {grown:.1f} MiB while 1 MiB was queued"
        # Logged once (the first drop), not once per message.
        said = [r for r in caplog.records if "queue_bytes" in r.getMessage()]
        assert len(said) == 1 and f"{bound} bytes of payload" in said[0].getMessage()
        rig.resume()
        await until(lambda: len(rig.got) == 10, 10)
        assert rig.values() == [float(i) for i in range(10)]  # the first ten, in order
        assert link.status()["queue_bytes"] == 0
        # The link keeps going: later messages are decoded, none dropped.
        await publish(broker.port, [(TOPIC, big(float(v))) for v in (200, 201, 202)])
        await until(lambda: len(rig.got) == 13, 10)
        after = link.status()
    assert rig.values()[10:] == [200.0, 201.0, 202.0]
    assert after["queue_dropped"] == {"queue_full": 0, "queue_bytes": sent - 10}
    assert after["messages_total"] == sent + 3
    assert after["connects_total"] == 1


async def test_below_queue_max_bytes_nothing_is_dropped(broker: Mosquitto) -> None:
    rig = StalledRig(broker, queue_max_bytes=1024 * KIB)
    async with rig.running() as link:
        # 10 x 100 KiB fill the bound exactly (1000 KiB of 1024 KiB): all kept.
        await publish(broker.port, [(TOPIC, big(float(i))) for i in range(10)])
        await until(lambda: arrived(link) == 10, 10)
        held = link.status()
        rig.resume()
        await until(lambda: len(rig.got) == 10, 10)
        after = link.status()
    assert held["queue_bytes"] == 10 * PAYLOAD and held["queue_depth"] == 10
    assert after["queue_dropped_total"] == 0 and after["queue_bytes"] == 0
    assert rig.values() == [float(i) for i in range(10)]


async def test_the_message_count_bound_still_drops_as_queue_full(broker: Mosquitto) -> None:
    rig = StalledRig(broker, queue_size=10)  # small messages: the count binds first
    async with rig.running() as link:
        await publish(broker.port, [(TOPIC, big(float(i), 200)) for i in range(15)])
        await until(lambda: arrived(link) == 15, 10)
        rig.resume()
        await until(lambda: len(rig.got) == 10, 10)
        status = link.status()
    assert status["queue_dropped"] == {"queue_full": 5, "queue_bytes": 0}
    assert dropped_samples(link) == {"queue_full": 5.0, "queue_bytes": 0.0}
