"""MQTT sensors: broker links (aiomqtt), routing by topic and key, per-sensor decoding."""

from drivers.mqtt._connect import enter_client
from drivers.mqtt._handshake import HandshakeAware
from drivers.mqtt._link import BrokerLink, BrokerSettings, SessionLog
from drivers.mqtt._router import (
    NO_KEY,
    UNKNOWN_SENSOR,
    Route,
    Router,
    parse_key_from,
    topic_matches,
)
from drivers.mqtt._sensor import MqttSensor, SensorState

__all__ = [
    "NO_KEY",
    "UNKNOWN_SENSOR",
    "BrokerLink",
    "BrokerSettings",
    "HandshakeAware",
    "MqttSensor",
    "Route",
    "Router",
    "SensorState",
    "SessionLog",
    "enter_client",
    "parse_key_from",
    "topic_matches",
]
