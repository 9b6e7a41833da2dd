"""MQTT sensors from the configuration: one link per broker, one route per topic filter.

Built in one function from (config, sink), so a configuration reload can rebuild them the
same way as the Modbus sources (agent.sources).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.config import Config
from agent.config._mqtt import Broker
from drivers.mqtt import BrokerLink, BrokerSettings, MqttSensor, Route, Router, parse_key_from
from drivers.payloads import DecoderLibrary
from drivers.reading import Reading


@dataclass(frozen=True, slots=True)
class MqttInputs:
    """What the runtime runs for the MQTT sensors.

    Attributes:
        links: one per broker that at least one sensor uses.
        sensors: one per MQTT sensor, in configuration order.
    """

    links: tuple[BrokerLink, ...] = ()
    sensors: tuple[MqttSensor, ...] = ()


def broker_settings(broker: Broker, gateway_id: str) -> BrokerSettings:
    """The drivers' view of a broker entry (its file paths are absolute after loading)."""
    tls = broker.tls
    return BrokerSettings(
        id=broker.id,
        host=broker.host,
        port=broker.effective_port,
        client_id=broker.effective_client_id(gateway_id),
        tls=tls is not None,
        ca_file=tls.ca_file if tls else None,
        cert_file=tls.cert_file if tls else None,
        key_file=tls.key_file if tls else None,
        username=broker.username,
        password=broker.password,
        password_file=broker.password_file,
        persistent=broker.session == "persistent",
        session_expiry_s=broker.session_expiry_s,
        keepalive_s=broker.keepalive_s,
        protocol=broker.protocol,
        max_payload_bytes=broker.max_payload_bytes,
        queue_size=broker.queue_size,
        reconnect_max_s=broker.reconnect_max_s,
        connect_timeout_s=broker.connect_timeout_s,
    )


def build_mqtt(
    config: Config,
    sink: Callable[[Reading], None],
    decoders: DecoderLibrary | None = None,
) -> MqttInputs:
    """Links and sensors for every MQTT sensor of the configuration.

    Args:
        config: the validated configuration.
        sink: where every sensor hands its readings.
        decoders: the payload decoders (default: shipped plus the decoders_dir's).

    Raises:
        DecoderError: a sensor names a decoder the library does not have (``check``
            reports it first).
    """
    wanted = [s for s in config.sensors if s.mqtt is not None]
    if not wanted:
        return MqttInputs()
    library = decoders or DecoderLibrary.load(config.decoders_dir)
    routes: dict[str, dict[str, Route]] = {}
    sensors = []
    for s in wanted:
        m = s.mqtt
        assert m is not None
        sensor = MqttSensor(
            s.id,
            decoder=library.get(m.decoder),
            channels=s.channels,
            stale_after_s=m.stale_after_s,
            sink=sink,
            broker=m.broker,
            topic=m.topic,
            key=m.key or (s.id if m.key_from else None),
        )
        route = routes.setdefault(m.broker, {}).setdefault(m.topic, Route(m.topic))
        route.add(sensor, parse_key_from(m.key_from), m.key, m.qos)
        sensors.append(sensor)
    links = tuple(
        BrokerLink(
            broker_settings(config.broker(broker_id), config.gateway.id),
            Router(by_topic.values()),
        )
        for broker_id, by_topic in routes.items()
    )
    return MqttInputs(links, tuple(sensors))
