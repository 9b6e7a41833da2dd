"""Uplinks: deliver the outbox, per uplink (HTTP, MQTT 5, CMMS work-order requests).

MqttTransport is imported on first use: aiomqtt and paho cost an agent without an MQTT
uplink several MB of resident memory for nothing.
"""

from typing import TYPE_CHECKING, Any

from agent.uplink._backoff import full_jitter, parse_retry_after, retry_delay
from agent.uplink._build import asset_facts, build_uplinks, delivery
from agent.uplink._cmms import CmmsTransport
from agent.uplink._delivery import Delivery
from agent.uplink._http import HttpTransport
from agent.uplink._status import UplinkStatus
from agent.uplink._transport import SendResult, Transport
from agent.uplink._workorder import AssetFacts, WorkOrder, no_work_order
from agent.uplink.errors import UplinkError, UplinkRejected, UplinkUnavailable

if TYPE_CHECKING:
    from agent.uplink._mqtt import MqttTransport


def __getattr__(name: str) -> Any:
    if name == "MqttTransport":
        from agent.uplink._mqtt import MqttTransport

        return MqttTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AssetFacts",
    "CmmsTransport",
    "Delivery",
    "HttpTransport",
    "MqttTransport",
    "SendResult",
    "Transport",
    "UplinkError",
    "UplinkRejected",
    "UplinkStatus",
    "UplinkUnavailable",
    "WorkOrder",
    "asset_facts",
    "build_uplinks",
    "delivery",
    "full_jitter",
    "no_work_order",
    "parse_retry_after",
    "retry_delay",
]
