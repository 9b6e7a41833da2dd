"""Routing without a broker: topic filters, keys from the topic or the payload, unknowns."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from drivers.mqtt import MqttSensor, Route, Router, parse_key_from, topic_matches
from drivers.payloads import load_decoder
from drivers.reading import Reading

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("pattern", "topic", "match"),
    [
        ("ncd/vibration/a", "ncd/vibration/a", True),
        ("ncd/vibration/+", "ncd/vibration/a", True),
        ("ncd/vibration/+", "ncd/vibration/a/b", False),
        ("ncd/#", "ncd/vibration/a/b", True),
        ("ncd/#", "ncd", True),
        ("+/vibration/+", "ncd/vibration/x", True),
        ("ncd/+", "ncd/", True),
        ("#", "$SYS/broker/uptime", False),
        ("+/broker", "$SYS/broker", False),
        ("ncd/vibration/a", "ncd/vibration/b", False),
    ],
)
def test_topic_matches(pattern: str, topic: str, match: bool) -> None:
    assert topic_matches(pattern, topic) is match


def sensor(sid: str, got: list[Reading]) -> MqttSensor:
    return MqttSensor(
        sid, decoder=load_decoder("ncd-processed"), channels=["z"], stale_after_s=60,
        sink=got.append, broker="b", topic="ncd/vibration/+",
    )  # fmt: skip


def msg(addr: str, v: float = 1.0) -> bytes:
    axes = {f"{a}_velocity_mm_sec": v for a in "xyz"}
    return json.dumps({"addr": addr, **axes}).encode()


def test_shared_subscription_routes_by_payload_and_topic_keys() -> None:
    got: list[Reading] = []
    a, b, c = sensor("a", got), sensor("b", got), sensor("c", got)
    route = Route("ncd/vibration/+")
    route.add(a, parse_key_from("payload:addr"), "00:13:A2:00:41:9B:0C:01", 1)
    route.add(b, parse_key_from("payload:addr"), "00:13:a2:00:41:9b:0c:02", 0)
    route.add(c, parse_key_from("topic:2"), "dev-c", 2)
    router = Router([route])
    assert route.qos == 2
    router.dispatch("ncd/vibration/x", msg("00:13:a2:00:41:9b:0c:01", 1.5), NOW)
    router.dispatch("ncd/vibration/x", msg("00:13:a2:00:41:9b:0c:02", 2.5), NOW)
    router.dispatch("ncd/vibration/DEV-C", msg("zz", 3.5), NOW)
    router.dispatch("ncd/vibration/x", msg("00:13:a2:00:41:9b:0c:99"), NOW)
    router.dispatch("ncd/vibration/x", b"{oops", NOW)
    router.dispatch("ncd/vibration/x", json.dumps({"addr": ["x"]}).encode(), NOW)
    assert [(r.sensor_id, r.features["velocity_rms_mm_s"]) for r in got] == [
        ("a", 1.5), ("b", 2.5), ("c", 3.5)
    ]  # fmt: skip
    assert router.status() == {
        "ncd/vibration/+": {"unknown_sensor": 1, "malformed": 1, "no_key": 1}
    }


def test_drops_count_on_the_sensor_the_topic_names() -> None:
    got: list[Reading] = []
    a = sensor("a", got)
    route = Route("ncd/vibration/+")
    route.add(a, None, None, 1)
    router = Router([route])
    router.dispatch("ncd/vibration/x", b"\x00\x01", NOW)
    router.dispatch("ncd/vibration/x", msg("q", float("nan")), NOW)
    router.reject("ncd/vibration/x", "too_large", "300000 bytes")
    router.dispatch("other/topic", msg("q"), NOW)
    assert got and got[0].quality == "bad"
    assert dict(a.dropped) == {"malformed": 1, "too_large": 1}
    assert dict(a.bad) == {"not_finite": 1}
    assert a.state == "ok" and a.messages_total == 2


def test_a_copy_is_for_the_routes_its_subscription_identifiers_name() -> None:
    got: list[Reading] = []
    exact, wide = Route("ncd/vibration/a"), Route("ncd/#")
    exact.add(sensor("a", got), None, None, 1)
    wide.add(sensor("w", got), None, None, 1)
    router = Router([exact, wide])
    ids = {r.topic: i for i, r in router.by_id.items()}
    router.dispatch("ncd/vibration/a", msg("x", 1.0), NOW, sub_ids=[ids["ncd/vibration/a"]])
    router.dispatch("ncd/vibration/a", msg("x", 1.0), NOW, sub_ids=[ids["ncd/#"]])
    # A subscription a persistent session kept from an older configuration: no route.
    assert 12345 not in router.by_id
    router.dispatch("ncd/vibration/a", msg("x", 1.0), NOW, sub_ids=[12345])
    router.dispatch("ncd/vibration/a", msg("x", 2.0), NOW)  # no identifiers (3.1.1): all
    assert [(r.sensor_id, r.features["velocity_rms_mm_s"]) for r in got] == [
        ("a", 1.0), ("w", 1.0), ("a", 2.0), ("w", 2.0),
    ]  # fmt: skip


def test_a_message_on_an_exact_topic_is_not_matched_against_every_other_filter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 2000 sensors on their own topics, MQTT 3.1.1 (no subscription identifiers): each
    # message was matched against all 2000 filters (1.6 ms a message: a real mosquitto
    # link took 570 of the 2000 messages/s and the broker dropped the rest).
    from drivers.mqtt import _router

    got: list[Reading] = []
    routes = [Route(f"plant/s{i}/data") for i in range(2000)]
    for i, route in enumerate(routes):
        route.add(sensor(f"s{i}", got), None, None, 1)
    wide = Route("plant/+/status")
    wide.add(sensor("w", got), None, None, 1)
    router = Router([*routes, wide])
    calls = 0
    real = _router.topic_matches

    def counting(pattern: str, topic: str) -> bool:
        nonlocal calls
        calls += 1
        return real(pattern, topic)

    monkeypatch.setattr(_router, "topic_matches", counting)
    router.dispatch("plant/s1234/data", msg("x", 1.5), NOW)
    router.dispatch("plant/s7/status", msg("x", 2.5), NOW)
    router.dispatch("plant/nobody/data", msg("x", 3.5), NOW)
    assert [(r.sensor_id, r.features["velocity_rms_mm_s"]) for r in got] == [
        ("s1234", 1.5), ("w", 2.5),
    ]  # fmt: skip
    assert calls <= 10  # the wildcard filters only, not the 2000 exact ones
