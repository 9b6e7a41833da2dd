"""MQTT inputs: the brokers the agent subscribes to, and a sensor's subscription.

Models as in agent.config._models (frozen, unknown keys refused). Checks that need other
entries (broker ids, decoders, shared subscriptions) live in agent.config._mqtt_check.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, WithJsonSchema, field_validator, model_validator

from agent.config._base import Id, _Model
from agent.config._delivery import MqttTls
from agent.config._hosts import Host

KEY_FROM_RE = re.compile(r"^(topic:(\d{1,3})|payload:([A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*))$")
DEFAULT_MAX_PAYLOAD = 256 * 2**10
# The decode queue's bound in payload bytes: queue_size places alone would let 10000
# messages of 256 KiB (2.5 GB) wait while decoding is held up.
DEFAULT_QUEUE_MAX_BYTES = 32 * 2**20
# mosquitto's total of messages it dropped (drivers.mqtt._broker_drops.DEFAULT_TOPIC).
DEFAULT_SYS_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"

_PAYLOAD_SIZE_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 1024},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B)?\s*$"},
    ],
    "description": "bytes, or a size such as 256KiB",
}
_QUEUE_BYTES_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 1},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B)?\s*$"},
    ],
    "description": "bytes, or a size such as 32MiB; at least max_payload_bytes",
}


# Code points brokers refuse in a topic (mosquitto's UTF-8 check): controls, surrogates,
# the non-characters U+FDD0..U+FDEF (and U+xFFFE/U+xFFFF: _noncharacter).
_REFUSED_CHAR = re.compile("[\x01-\x1f\x7f-\x9f\ufdd0-\ufdef\ud800-\udfff]")


def _noncharacter(topic: str) -> str | None:
    return next((c for c in topic if ord(c) & 0xFFFE == 0xFFFE), None)


def topic_filter_problem(topic: str) -> str | None:
    """What is wrong with an MQTT topic filter (MQTT 3.1.1 / 5 section 4.7), or None."""
    if not topic:
        return "topic must not be empty"
    if len(topic.encode(errors="surrogatepass")) > 65535 or "\0" in topic:
        return "topic is too long or holds a NUL character"
    if (bad := _REFUSED_CHAR.search(topic)) is not None or (bad := _noncharacter(topic)):
        # mosquitto takes such a filter as a malformed packet and disconnects us: every
        # reconnect would subscribe it again and be dropped again (MQTT 5 section 1.5.4).
        char = bad if isinstance(bad, str) else bad.group()
        return (
            f"topic holds U+{ord(char):04X}, a control character or Unicode non-character "
            f"that brokers refuse (mosquitto disconnects the client), got {topic!r}"
        )
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return f"'#' must be a whole level and the last one (e.g. ncd/#), got {topic!r}"
        if "+" in level and level != "+":
            return f"'+' must be a whole level (e.g. ncd/+/vibration), got {topic!r}"
    if topic.startswith("$"):
        return f"topics starting with '$' are the broker's own, got {topic!r}"
    return None


class Broker(_Model):
    """One broker the agent subscribes to (an entry of the top-level ``mqtt:`` list)."""

    id: Id
    host: Host
    port: int | None = Field(default=None, ge=1, le=65535)  # None: 1883, or 8883 with tls
    tls: MqttTls | None = None
    username: str | None = None
    password: str | None = None  # may be "${ENV_VAR}", expanded at load
    password_file: Path | None = None
    # persistent: the broker keeps our subscriptions and queues QoS 1 messages while the
    # agent is away (MQTT 5 clean start off + session expiry; 3.1.1 clean session off).
    session: Literal["clean", "persistent"] = "clean"
    session_expiry_s: int = Field(default=86_400, ge=1, le=2**32 - 1)
    client_id: str | None = Field(default=None, min_length=1, max_length=64)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    protocol: Literal["3.1.1", "5"] = "5"
    # A larger message is dropped and counted (too_large) before it is parsed.
    max_payload_bytes: Annotated[int, WithJsonSchema(_PAYLOAD_SIZE_SCHEMA)] = DEFAULT_MAX_PAYLOAD
    # Messages held between the connection and the decoders; beyond: dropped and counted.
    queue_size: int = Field(default=10_000, ge=10, le=1_000_000)
    # ...and at most this many payload bytes; beyond: dropped and counted (queue_bytes).
    queue_max_bytes: Annotated[int, WithJsonSchema(_QUEUE_BYTES_SCHEMA)] = DEFAULT_QUEUE_MAX_BYTES
    # Reconnect waits grow to at most this (full jitter), so a broker restart costs seconds.
    reconnect_max_s: float = Field(default=2.0, ge=0.1, le=60)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # The broker's counter of messages it dropped (its per-client limits), watched and
    # reported as edge_mqtt_broker_dropped; mosquitto's by default; null: not asked for.
    sys_dropped_topic: str | None = Field(default=DEFAULT_SYS_DROPPED_TOPIC, max_length=256)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, v: object) -> object:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("sys_dropped_topic")
    @classmethod
    def _sys_topic(cls, v: str | None) -> str | None:
        # Only the broker's own tree: a sensor topic here would be read as a counter.
        if v is not None and (
            not v.startswith("$SYS/") or any(c in v for c in "+#\0") or len(v) < 6
        ):
            raise ValueError(
                "sys_dropped_topic must be one topic under $SYS/ without wildcards (default "
                f"{DEFAULT_SYS_DROPPED_TOPIC}, mosquitto's), or null to not watch it"
            )
        return v

    @field_validator("max_payload_bytes", mode="before")
    @classmethod
    def _size(cls, v: object) -> int:
        from agent.config._models import parse_size

        n = parse_size(v)
        if not 1024 <= n <= 64 * 2**20:
            raise ValueError("max_payload_bytes must be between 1KiB and 64MiB")
        return n

    @field_validator("queue_max_bytes", mode="before")
    @classmethod
    def _queue_bytes(cls, v: object, info: ValidationInfo) -> int:
        from agent.config._models import parse_size

        n = parse_size(v)
        if n < 1:
            raise ValueError(
                "queue_max_bytes must be a positive size: bytes, or e.g. 32MiB (the default)"
            )
        cap = info.data.get("max_payload_bytes")  # validated before (declared first)
        if isinstance(cap, int) and n < cap:
            raise ValueError(
                f"queue_max_bytes must be at least max_payload_bytes ({cap}), or a message "
                "of the largest allowed size could never be queued; default 32MiB"
            )
        return n

    @model_validator(mode="after")
    def _checks(self) -> Broker:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("a password needs a username")
        return self

    @property
    def effective_port(self) -> int:
        """The port given, else 8883 with TLS and 1883 without."""
        return self.port or (8883 if self.tls is not None else 1883)

    def effective_client_id(self, gateway_id: str) -> str:
        """The client id given, else one derived from the gateway and the broker id (a
        persistent session is found again by it)."""
        return self.client_id or f"edge-agent-{gateway_id}-{self.id}"[:64]


class MqttSource(_Model):
    """A sensor's subscription: which broker, topic filter and decoder; which key in a
    shared subscription."""

    broker: Id
    topic: str
    decoder: str = Field(min_length=1)
    # The value that identifies this sensor when several share a subscription (default:
    # the sensor id), read from key_from: topic:N (level N, from 0) or payload:FIELD.
    key: str | None = Field(default=None, min_length=1, max_length=256)
    key_from: str | None = None
    stale_after_s: float = Field(default=300.0, ge=1, le=30 * 86_400)
    qos: Literal[0, 1, 2] = 1

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        problem = topic_filter_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("key_from")
    @classmethod
    def _key_from(cls, v: str | None) -> str | None:
        if v is not None and not KEY_FROM_RE.match(v):
            raise ValueError(
                "key_from must be topic:N (the topic level N, counted from 0) or "
                "payload:FIELD (a dotted field path such as payload:addr)"
            )
        return v

    @model_validator(mode="after")
    def _key(self) -> MqttSource:
        if self.key is not None and self.key_from is None:
            raise ValueError(
                "key needs key_from: where the key is read, topic:N or payload:FIELD "
                "(e.g. key_from: payload:addr)"
            )
        return self

    def key_location(self) -> tuple[str, int | str] | None:
        """("topic", level) or ("payload", dotted path), or None without key_from."""
        if self.key_from is None:
            return None
        kind, _, where = self.key_from.partition(":")
        return (kind, int(where)) if kind == "topic" else (kind, where)
