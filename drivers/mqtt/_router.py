"""Which sensor a message is for: topic filters, then a key from the topic or the payload.

One subscription per distinct topic filter of a broker; several sensors may share one
(``ncd/vibration/+``) when each has a key read from a topic level or a payload field
(NCD's ``addr``). Keys compare case-insensitively (MAC addresses are written both ways).
Messages nobody claims are counted per topic filter and reason, never fatal.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from drivers.errors import PayloadError
from drivers.mqtt._sensor import MqttSensor
from drivers.payloads import Payload, split_path

log = logging.getLogger("edge_agent.drivers.mqtt")

UNKNOWN_SENSOR = "unknown_sensor"
NO_KEY = "no_key"  # the key field is missing or not a scalar
MAX_SUB_ID = 268_435_455  # the largest MQTT 5 subscription identifier
MAX_LOGGED_KEYS = 100  # unknown keys logged once each, up to this many per filter

KeyFrom = tuple[str, int | tuple[str, ...]]  # ("topic", level) or ("payload", path)


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching (+ one level, # the rest; $-topics never match wildcards)."""
    if pattern == topic:
        return True
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    p_levels, t_levels = pattern.split("/"), topic.split("/")
    for i, p in enumerate(p_levels):
        if p == "#":
            return True
        if i >= len(t_levels) or (p != "+" and p != t_levels[i]):
            return False
    return len(p_levels) == len(t_levels)


def parse_key_from(text: str | None) -> KeyFrom | None:
    """``topic:2`` -> ("topic", 2); ``payload:a.b`` -> ("payload", ("a", "b"))."""
    if text is None:
        return None
    kind, _, where = text.partition(":")
    return (kind, int(where)) if kind == "topic" else (kind, split_path(where))


@dataclass(slots=True)
class Route:
    """One subscription: a topic filter and the sensors it feeds.

    Attributes:
        topic: the topic filter subscribed to.
        qos: the highest QoS its sensors asked for.
        anyone: sensors that take every message on the filter (no key).
        keyed: key location -> key (case-folded) -> sensors.
        unrouted: messages no sensor took, by reason.
    """

    topic: str
    qos: int = 0
    anyone: list[MqttSensor] = field(default_factory=list)
    keyed: dict[KeyFrom, dict[str, list[MqttSensor]]] = field(default_factory=dict)
    unrouted: Counter[str] = field(default_factory=Counter)
    _logged: set[str] = field(default_factory=set)

    def add(self, sensor: MqttSensor, key_from: KeyFrom | None, key: str | None, qos: int) -> None:
        self.qos = max(self.qos, qos)
        if key_from is None:
            self.anyone.append(sensor)
        else:
            by_key = self.keyed.setdefault(key_from, {})
            by_key.setdefault((key or sensor.sensor_id).casefold(), []).append(sensor)

    def sensors(self) -> list[MqttSensor]:
        """Every sensor this subscription feeds."""
        return [*self.anyone, *(s for by_key in self.keyed.values() for v in by_key.values()
                                for s in v)]  # fmt: skip

    def sensors_for(self, topic: str, payload: Payload) -> list[MqttSensor]:
        """The sensors a message on ``topic`` is for (counts it when there are none)."""
        out = list(self.anyone)
        problem: PayloadError | None = None
        for key_from, by_key in self.keyed.items():
            try:
                key = _key(key_from, topic, payload)
            except PayloadError as exc:
                problem = exc
                continue
            out += by_key.get(key, ())
            if key not in by_key and problem is None:
                problem = PayloadError(UNKNOWN_SENSOR, f"key {key[:80]!r}")
        if not out and problem is not None:
            self.count(problem.reason, problem.detail)
        return out

    def count(self, reason: str, detail: str) -> None:
        self.unrouted[reason] += 1
        tag = f"{reason}:{detail}" if reason == UNKNOWN_SENSOR else reason
        if tag not in self._logged and len(self._logged) < MAX_LOGGED_KEYS:
            self._logged.add(tag)
            log.warning(
                "mqtt topic %s: message for no configured sensor (%s: %s); counted in "
                "edge_mqtt_unrouted, logged once",
                self.topic,
                reason,
                detail,
            )


def _key(key_from: KeyFrom, topic: str, payload: Payload) -> str:
    kind, where = key_from
    if kind == "topic":
        assert isinstance(where, int)
        levels = topic.split("/")
        if where >= len(levels):
            raise PayloadError(NO_KEY, f"topic {topic[:80]!r} has no level {where}")
        return levels[where].casefold()
    assert isinstance(where, tuple)
    value = payload.field(where)  # raises PayloadError(malformed) for non-JSON
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PayloadError(NO_KEY, f"payload field {'.'.join(where)} missing or not a scalar")
    return str(value).casefold()


def _is_wild(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


class Router:
    """Every route of one broker: delivers a message to its sensors, counts the rest."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = {r.topic: r for r in routes}
        # A filter without wildcards matches its own topic only: found by lookup. Matching
        # every message against every filter cost 2000 sensors on their own topics (MQTT
        # 3.1.1, or a reject) 1.6 ms a message, under 700 messages/s in all.
        self._wild = [r for t, r in self.routes.items() if _is_wild(t)]
        # MQTT 5 subscription identifiers: a broker that sends one copy of a message per
        # matching subscription (mosquitto does) names the subscription of each copy. From
        # the filter itself, so that one a persistent session kept from an older
        # configuration names no route of this one.
        self.by_id = {zlib.crc32(t.encode()) % MAX_SUB_ID + 1: r for t, r in self.routes.items()}
        if len(self.by_id) != len(self.routes):
            self.by_id = {}  # two filters on one identifier (rare): route by topic alone

    def matching(self, topic: str, sub_ids: Iterable[int] | None = None) -> list[Route]:
        """The routes a message is for: those its subscription identifiers name (one copy
        per subscription: each copy is for its own route only), else every match."""
        if sub_ids is not None:
            named = (self.by_id.get(i) for i in sub_ids)
            return [r for r in named if r is not None and topic_matches(r.topic, topic)]
        exact = self.routes.get(topic)
        found = [r for r in self._wild if topic_matches(r.topic, topic)]
        return found if exact is None else [exact, *found]

    def wants_json(self, topic: str, sub_ids: Iterable[int] | None = None) -> bool:
        """Whether a message on ``topic`` is read as JSON (a key in its payload, or a
        sensor's decoder), so worth parsing ahead, off the event loop."""
        for route in self.matching(topic, sub_ids):
            if any(key_from[0] == "payload" for key_from in route.keyed):
                return True
            if any(getattr(s.decoder, "json_payload", True) for s in route.sensors()):
                return True
        return False

    def dispatch(
        self,
        topic: str,
        raw: bytes | Payload,
        received_at: datetime,
        *,
        retained: bool = False,
        sub_ids: Iterable[int] | None = None,
        mid: int | None = None,
        dup: bool = False,
    ) -> None:
        """Decode a message for each sensor it is for; never raises.

        ``raw``: the body, or its Payload already parsed; ``mid``: a QoS 1 message's
        packet id; ``dup``: the broker sends it again."""
        payload = raw if isinstance(raw, Payload) else Payload(raw)
        sensors: dict[int, MqttSensor] = {}
        routes = self.matching(topic, sub_ids)
        for route in routes:
            for s in route.sensors_for(topic, payload):
                sensors[id(s)] = s
        if not routes:
            log.debug("mqtt message on %s matches no subscription", topic[:120])
        for s in sensors.values():
            s.handle(payload, received_at, retained=retained, mid=mid, dup=dup)

    def reject(self, topic: str, reason: str, detail: str) -> None:
        """Count a message refused before decoding (too large): on the sensors the topic
        alone names, else on the routes."""
        for route in self.matching(topic):
            named = list(route.anyone)
            for key_from, by_key in route.keyed.items():
                if key_from[0] == "topic":
                    with contextlib.suppress(PayloadError):
                        named += by_key.get(_key(key_from, topic, Payload(b"")), ())
            if named:
                for s in named:
                    s.drop(reason, detail)
            else:
                route.count(reason, detail)

    def status(self) -> dict[str, dict[str, int]]:
        """Unrouted messages by topic filter and reason."""
        return {t: dict(r.unrouted) for t, r in self.routes.items() if r.unrouted}
