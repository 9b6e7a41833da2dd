"""MQTT sensors from the configuration: one link per broker, one route per topic filter.

Built in one function from (config, sink), so a configuration reload rebuilds them the
same way (agent.reload: the links are replaced as a whole when an MQTT setting changes;
with a persistent session the broker keeps QoS 1 messages for the moment between).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.config import Config
from agent.config._mqtt import Broker
from drivers.mqtt import BrokerLink, BrokerSettings, MqttSensor, Route, Router, parse_key_from
from drivers.payloads import DecoderLibrary
from drivers.reading import Reading

log = logging.getLogger(__name__)

SESSION_KEY = "mqtt-session {session}/subscriptions"  # a store state key
MAX_REMEMBERED = 10_000  # topic filters per session read back from the store


class SessionSubscriptions:
    """What each persistent MQTT session was last subscribed to (drivers.mqtt.SessionLog),
    kept in the store's state table so that a restart, like a reload, unsubscribes the
    topic filters of sensors since removed.

    Args:
        persist: stores state (key -> value) in the agent's ordered write queue.
    """

    def __init__(self, persist: Callable[[dict[str, str]], None]) -> None:
        self._persist = persist
        self._filters: dict[str, frozenset[str]] = {}

    def load(self, state: Mapping[str, str]) -> None:
        """Take what the store holds (at start, before any link connects)."""
        prefix, suffix = SESSION_KEY.split("{session}")
        for key, value in state.items():
            if key.startswith(prefix) and key.endswith(suffix):
                session = key[len(prefix) : len(key) - len(suffix)]
                self._filters.setdefault(session, _filters(value))

    def subscribed(self, session: str) -> frozenset[str]:
        return self._filters.get(session, frozenset())

    def record(self, session: str, filters: frozenset[str]) -> None:
        self._filters[session] = filters
        value = json.dumps(sorted(filters))
        self._persist({SESSION_KEY.format(session=session): value})


def _filters(value: str) -> frozenset[str]:
    """A stored filter list; anything else (damaged) is nothing known."""
    try:
        data = json.loads(value)
    except ValueError:
        return frozenset()
    if not isinstance(data, list):
        return frozenset()
    return frozenset(f for f in data[:MAX_REMEMBERED] if isinstance(f, str) and f)


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
        queue_max_bytes=broker.queue_max_bytes,
        reconnect_max_s=broker.reconnect_max_s,
        connect_timeout_s=broker.connect_timeout_s,
        sys_dropped_topic=broker.sys_dropped_topic,
    )


def build_mqtt(
    config: Config,
    sink: Callable[[Reading], None],
    decoders: DecoderLibrary | None = None,
    sessions: SessionSubscriptions | None = None,
) -> MqttInputs:
    """Links and sensors for every MQTT sensor of the configuration.

    Args:
        config: the validated configuration.
        sink: where every sensor hands its readings.
        decoders: the payload decoders (default: shipped plus the decoders_dir's).
        sessions: what persistent sessions were last subscribed to (None: not kept).

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
            stuck=config.stuck_rule(s),
        )
        route = routes.setdefault(m.broker, {}).setdefault(m.topic, Route(m.topic))
        route.add(sensor, parse_key_from(m.key_from), m.key, m.qos)
        sensors.append(sensor)
    links = tuple(
        BrokerLink(
            broker_settings(config.broker(broker_id), config.gateway.id),
            Router(by_topic.values()),
            sessions=sessions,
        )
        for broker_id, by_topic in routes.items()
    )
    return MqttInputs(links, tuple(sensors))


class RunningMqtt:
    """The broker links' tasks: started at start-up, replaced as a whole by a reload that
    changes an MQTT setting, stopped certainly and within a bound at shutdown.

    Like the pollers (agent.sensor_tasks), the links run beside the agent's TaskGroup so
    that stopping can abandon one that does not end in time. A link task stays listed
    until it has ended (not merely until asked to stop), so a shutdown that overlaps a
    reload's replacement waits for the links that replacement is stopping too; and once
    `close` has begun no link starts, so a replacement that finishes after it cannot leave
    a link running past shutdown.
    """

    def __init__(self, inputs: MqttInputs) -> None:
        self.inputs = inputs
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    @property
    def links(self) -> tuple[BrokerLink, ...]:
        return self.inputs.links

    @property
    def sensors(self) -> tuple[MqttSensor, ...]:
        return self.inputs.sensors

    def start(self) -> None:
        """Run every link (each reconnects forever until stopped); none once closed."""
        if self.closed:
            for link in self.inputs.links:
                link.stop()
            log.info("MQTT links not started: the agent is stopping")
            return
        for link in self.inputs.links:
            task = asyncio.create_task(link.run(), name=f"mqtt[{link.id}]")
            task.add_done_callback(_link_ended)
            task.add_done_callback(self._tasks.discard)
            self._tasks.add(task)

    async def stop(self, *, timeout_s: float) -> None:
        """Stop every link: nothing is decoded from here on; a link still running after
        timeout_s is abandoned, and said so."""
        for link in self.inputs.links:
            link.stop()
        tasks = list(self._tasks)  # with those a replacement is stopping right now
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=timeout_s)
            if stuck:
                log.error(
                    "%d MQTT links did not stop within %.0f s; abandoned: %s",
                    len(stuck),
                    timeout_s,
                    ", ".join(sorted(t.get_name() for t in stuck)),
                )

    async def close(self, *, timeout_s: float) -> None:
        """Shutdown: stop every link and start none from here on (a reload's
        replacement still under way then starts nothing)."""
        self.closed = True
        await self.stop(timeout_s=timeout_s)

    async def replace(self, inputs: MqttInputs, *, timeout_s: float) -> None:
        """Stop the running links and start these (a reload); after `close`, only stop."""
        await self.stop(timeout_s=timeout_s)
        old = {s.sensor_id: s for s in self.inputs.sensors}
        for sensor in inputs.sensors:
            if sensor.sensor_id in old:
                sensor.carry_from(old[sensor.sensor_id])
        self.inputs = inputs
        self.start()  # no await since the stop: a close that began meanwhile is seen here

    def cancel_all(self) -> None:
        """Last resort on the way out."""
        self.closed = True
        for task in list(self._tasks):
            task.cancel()


def _link_ended(task: asyncio.Task[None]) -> None:
    """A link only ends when stopped; say so loudly if one ended any other way."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s ended unexpectedly: %r", task.get_name(), task.exception())
