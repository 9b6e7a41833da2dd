"""Uplinks: deliver the outbox to the portfolio backend, per uplink (HTTP, MQTT 5)."""

from agent.uplink._backoff import full_jitter, parse_retry_after, retry_delay
from agent.uplink._build import build_uplinks, delivery
from agent.uplink._delivery import Delivery, UplinkStatus
from agent.uplink._http import HttpTransport
from agent.uplink._mqtt import MqttTransport
from agent.uplink._transport import SendResult, Transport
from agent.uplink.errors import UplinkError, UplinkRejected, UplinkUnavailable

__all__ = [
    "Delivery",
    "HttpTransport",
    "MqttTransport",
    "SendResult",
    "Transport",
    "UplinkError",
    "UplinkRejected",
    "UplinkStatus",
    "UplinkUnavailable",
    "build_uplinks",
    "delivery",
    "full_jitter",
    "parse_retry_after",
    "retry_delay",
]
