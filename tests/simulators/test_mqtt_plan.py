"""edge-sim mqtt's schedule and payloads, without a broker (Plan.next does no I/O)."""

from __future__ import annotations

import json

from simulators import ncd
from simulators._mqtt_plan import Plan, Sensor
from simulators.scenario import make_scenario


def test_a_stamp_1_ms_after_the_last_prints_as_a_later_millisecond() -> None:
    # A 2026-11-26 benchmark flood: 1795682602.9339995 and, 1 ms later, .9349995 both printed
    # as .934, with the same body (one per 100 ms tick): the agent dropped the second message,
    # byte for byte the first, as a duplicate (1 of 10 000).
    sensor = Sensor(1, "healthy", make_scenario("healthy", seed=1))
    now = 1795682602.9339995
    stamps = [ncd.iso(sensor.stamp(now)) for _ in range(3)]
    assert stamps == sorted(set(stamps)), stamps


def test_a_flood_never_repeats_a_sensors_payload() -> None:
    # Flooding, one sensor's messages come faster than one per ms: each is stamped 1 ms after
    # the last, and none may repeat another's bytes (the agent takes it for a redelivery).
    plan = Plan({1: "healthy"}, rate_hz=1.0, waveform_hz=0.0, flood=True)
    payloads = []
    for _ in range(3000):
        item = plan.next()
        assert item is not None
        payloads.append(item[1].payload)
    stamps = [json.loads(p)["timestamp"] for p in payloads]
    assert len(set(payloads)) == len(payloads)
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
