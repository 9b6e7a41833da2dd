"""The broker link against brokers that misbehave on purpose: one that takes the TCP
connection and never answers CONNECT; one that refuses some subscriptions (SUBACK
failure codes) and grants them later."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiomqtt
import pytest

from drivers.mqtt import (
    BrokerLink,
    BrokerSettings,
    MqttSensor,
    Route,
    Router,
    _connect,
    _subscriptions,
)
from drivers.payloads import load_decoder
from drivers.reading import Reading
from tests.drivers.test_mqtt_link import link_running, ncd, until
from tests.drivers.test_mqtt_link_faults import DYNSEC, _Dynsec

pytestmark = [pytest.mark.network]


class _Mute:
    """A TCP server that takes every connection, reads what comes and never answers."""

    def __init__(self) -> None:
        self.accepted = 0
        self.ended = 0  # connections the client closed

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while await reader.read(4096):
                pass
        finally:
            self.ended += 1
            writer.close()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        self._server.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_broker_that_never_sends_connack_is_named_and_tried_again(protocol: str) -> None:
    mute = _Mute()
    port = await mute.start()
    _, route = _sensor("fan-3", "t/x", [])
    settings = BrokerSettings(
        id="b", host="127.0.0.1", port=port, client_id="edge-t", protocol=protocol,
        connect_timeout_s=0.3, reconnect_max_s=0.1,
    )  # fmt: skip
    try:
        async with link_running(BrokerLink(settings, Router([route]))) as link:
            await until(lambda: mute.accepted >= 3, 10)
            # Each attempt's connection is closed before the next: never more than one open.
            await until(lambda: mute.ended >= mute.accepted - 1, 5)
            assert not link.connected and link.connects_total == 0
            assert "no CONNACK within 0.3 s" in (link.last_error or "")
            assert link.status()["last_error"] == link.last_error
    finally:
        mute.close()


async def test_a_paho_without_its_socket_close_is_said_once_and_the_link_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After a connect with no CONNACK the link closes paho's socket through a private
    method. A paho that renamed it would bring back one leaked descriptor per attempt;
    before, the AttributeError was swallowed and nothing said so. Now it is logged once
    (not at every attempt) and the link goes on trying."""
    monkeypatch.setattr(_connect, "PAHO_SOCK_CLOSE", "_sock_close_renamed", raising=False)
    caplog.set_level(logging.WARNING, logger="edge_agent.drivers.mqtt")
    mute = _Mute()
    port = await mute.start()
    _, route = _sensor("fan-3", "t/x", [])
    settings = BrokerSettings(
        id="b", host="127.0.0.1", port=port, client_id="edge-t",
        connect_timeout_s=0.2, reconnect_max_s=0.1,
    )  # fmt: skip
    try:
        async with link_running(BrokerLink(settings, Router([route]))) as link:
            await until(lambda: mute.accepted >= 3, 10)
            assert "no CONNACK within 0.2 s" in (link.last_error or "")
    finally:
        mute.close()
    said = [r.getMessage() for r in caplog.records if "_sock_close_renamed" in r.getMessage()]
    assert len(said) == 1, said
    assert "internals differ" in said[0] and "descriptor" in said[0], said


CONNECT, SUBSCRIBE, SUBACK = 1, 8, 9  # MQTT control packet types


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = data[at]
        at += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, at


def _filters(body: bytes, v5: bool) -> int:
    """How many topic filters a SUBSCRIBE's body holds."""
    at = 2  # packet identifier
    if v5:
        size, at = _varint(body, at)
        at += size  # properties
    n = 0
    while at < len(body):
        at += 2 + int.from_bytes(body[at : at + 2], "big") + 1  # filter, options
        n += 1
    return n


class Tap:
    """A TCP relay in front of a real broker that reads the MQTT packets both ways: counts
    the client's SUBSCRIBE packets and the most of them awaiting their SUBACK at once, and
    drops the next `swallow` of them (a broker that stops answering SUBSCRIBE).
    `delay_s`: added to every chunk each way (a slow link)."""

    def __init__(self, broker_port: int, delay_s: float = 0.0) -> None:
        self.broker_port = broker_port
        self.delay_s = delay_s
        self.subscribes = 0  # SUBSCRIBE packets the client sent
        self.subacks = 0
        self.in_flight_max = 0  # SUBSCRIBEs forwarded and not yet answered, at most
        self.filters: list[int] = []  # topic filters in each SUBSCRIBE, in order
        self.v5 = False
        self.swallow = 0
        self.swallowed = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        self._server.close()
        for t in self._tasks:
            t.cancel()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        b_reader, b_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        for job in (self._relay(c_reader, b_writer, True), self._relay(b_reader, c_writer, False)):
            task = asyncio.create_task(job)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _keep(self, kind: int, up: bool, body: bytes) -> bool:
        if up and kind == SUBSCRIBE:
            self.subscribes += 1
            self.filters.append(_filters(body, self.v5))
            if self.swallow:
                self.swallow -= 1
                self.swallowed += 1
                return False
            forwarded = self.subscribes - self.swallowed
            self.in_flight_max = max(self.in_flight_max, forwarded - self.subacks)
        elif not up and kind == SUBACK:
            self.subacks += 1
        return True

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
    ) -> None:
        """Packet by packet (fixed header, remaining length), each forwarded delay_s after
        it came, in order (latency, not bandwidth)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    writer.close()
                    return
                writer.write(data)

        sender = asyncio.create_task(send())
        try:
            while head := await reader.read(1):
                size, shift, raw = 0, 0, head
                while True:
                    b = await reader.readexactly(1)
                    raw += b
                    size |= (b[0] & 0x7F) << shift
                    shift += 7
                    if not b[0] & 0x80:
                        break
                body = await reader.readexactly(size)
                raw += body
                if up and head[0] >> 4 == CONNECT:
                    self.v5 = body[6] == 5  # protocol level, after "\0\4MQTT"
                if self._keep(head[0] >> 4, up, body):
                    queue.put_nowait((loop.time() + self.delay_s, raw))
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            queue.put_nowait((loop.time() + self.delay_s, b""))
            await asyncio.wait([sender], timeout=5)


class _DynsecAdmin(_Dynsec):
    """_Dynsec with user admin (password secret) allowed to change its ACLs ($CONTROL)."""

    def _conf(self) -> Path:
        conf = super()._conf()
        path = self.folder / "dynsec.json"
        rules = json.loads(path.read_text())
        gw = rules["clients"][0]
        admin = {**gw, "username": "admin", "roles": [{"rolename": "admin"}]}
        acl = {
            "acltype": "publishClientSend",
            "topic": "$CONTROL/dynamic-security/#",
            "allow": True,
        }
        rules["clients"].append(admin)
        rules["roles"].append({"rolename": "admin", "acls": [acl]})
        path.write_text(json.dumps(rules))
        return conf


async def _grant_every_subscription(admin: aiomqtt.Client) -> None:
    """Sets the broker's default for subscriptions to allow, through `admin` (not a role's
    ACL: mosquitto would disconnect the role's clients, and the link subscribe again
    anyway; other brokers change ACLs without a word)."""
    grant = {"command": "setDefaultACLAccess", "acls": [{"acltype": "subscribe", "allow": True}]}
    await admin.publish("$CONTROL/dynamic-security/v1", json.dumps({"commands": [grant]}))


def _sensor(sensor_id: str, topic: str, got: list[Reading]) -> tuple[MqttSensor, Route]:
    sensor = MqttSensor(
        sensor_id, decoder=load_decoder("ncd-processed"), channels=["z"], stale_after_s=60,
        sink=got.append, broker="b", topic=topic,
    )  # fmt: skip
    route = Route(topic)
    route.add(sensor, None, None, 1)
    return sensor, route


def _gw(port: int, protocol: str, **settings: object) -> BrokerSettings:
    """The link's settings as user gw (whose ACL _DynsecAdmin's admin changes)."""
    return BrokerSettings(
        id="b", host="127.0.0.1", port=port, client_id="edge-t", protocol=protocol,
        username="gw", password="secret", **settings,  # type: ignore[arg-type]
    )  # fmt: skip


def _admin(broker: _DynsecAdmin) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", broker.port, username="admin", password="secret")


@pytest.fixture
def quick_retry(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> pytest.LogCaptureFixture:
    """Refused subscriptions asked again every 0.2 s; the MQTT driver's warnings kept."""
    monkeypatch.setattr(_subscriptions, "REFUSED_SUB_RETRY_S", 0.2)
    caplog.set_level(logging.WARNING, logger="edge_agent.drivers.mqtt")
    return caplog


needs_dynsec = pytest.mark.skipif(
    not Path(DYNSEC).exists(), reason=f"{DYNSEC} is missing (mosquitto)"
)


@needs_dynsec
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_refused_subscription_is_asked_again_and_its_sensor_heard_once_granted(
    tmp_path: Path, protocol: str, quick_retry: pytest.LogCaptureFixture
) -> None:
    """One filter of two refused (SUBACK 0x87 / 0x80): the other sensor is heard, the
    refused one named; once the broker's ACL grants it, it is heard without a reconnect
    (before: only at the next reconnect, which a healthy link may never have)."""
    got: list[Reading] = []
    _, a_route = _sensor("fan-1", "ncd/allowed/1", got)
    refused, r_route = _sensor("fan-2", "ncd/vibration/2", got)
    with _DynsecAdmin(tmp_path / "acl") as broker:
        settings = _gw(broker.port, protocol)
        async with link_running(BrokerLink(settings, Router([a_route, r_route]))) as link:
            await until(lambda: link.refused, 10)
            assert list(link.refused) == ["ncd/vibration/2"]
            assert "refused" in (refused.last_error or "")
            async with _admin(broker) as c:
                await c.publish("ncd/allowed/1", ncd(1.0), qos=1)
                await until(lambda: got, 5)
                # The broker's ACL changes while the link stays connected.
                await _grant_every_subscription(c)
                await until(lambda: not link.refused, 5)
                await c.publish("ncd/vibration/2", ncd(2.0), qos=1)
                await until(lambda: len(got) == 2, 5)
            assert link.connects_total == 1
            assert refused.last_error is None and link.last_error is None
            assert any("granted now" in r.getMessage() for r in quick_retry.records)
    assert [r.sensor_id for r in got] == ["fan-1", "fan-2"]


@needs_dynsec
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_retry_of_refused_subscriptions_that_times_out_is_tried_again(
    tmp_path: Path, protocol: str, quick_retry: pytest.LogCaptureFixture
) -> None:
    """A round of the refused subscriptions' retry whose SUBSCRIBE the broker does not
    answer (timed out) ended the retry for the rest of the connection: the refused sensor
    stayed silent, its ACL fixed, until a reconnect. Now the failure is logged once and
    the next round asks again."""
    got: list[Reading] = []
    _, a_route = _sensor("fan-1", "ncd/allowed/1", got)
    _, r_route = _sensor("fan-2", "ncd/vibration/2", got)
    with _DynsecAdmin(tmp_path / "acl") as broker:
        tap = Tap(broker.port)
        settings = _gw(await tap.start(), protocol, connect_timeout_s=0.5)
        try:
            async with link_running(BrokerLink(settings, Router([a_route, r_route]))) as link:
                await until(lambda: link.refused, 10)
                tap.swallow = 2  # the broker answers no SUBSCRIBE for a while: rounds time out
                await until(lambda: tap.swallowed == 2, 10)
                async with _admin(broker) as c:
                    await _grant_every_subscription(c)
                    await until(lambda: not link.refused, 10)
                    await c.publish("ncd/vibration/2", ncd(2.0), qos=1)
                    await until(lambda: got, 5)
                assert link.connects_total == 1
        finally:
            tap.close()
    said = [r.getMessage() for r in quick_retry.records if "asking again" in r.getMessage()]
    assert len(said) == 1, said
    assert "MqttError: Operation timed out" in said[0], said
    assert [r.sensor_id for r in got] == ["fan-2"]


@needs_dynsec
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_many_refused_subscriptions_are_asked_again_in_few_round_trips(
    tmp_path: Path, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """250 refused filters: a retry round sent 250 SUBSCRIBEs one after the other, a round
    trip each (2000 over a 40 ms link: 87 s a round). Now 3.1.1 sends them in 3 packets;
    MQTT 5, whose subscription identifier (one per filter) belongs to the whole packet,
    one per filter, several awaiting their SUBACK at once."""
    n = 250
    monkeypatch.setattr(_subscriptions, "REFUSED_SUB_RETRY_S", 0.2)
    routes = [_sensor(f"fan-{i}", f"ncd/vibration/{i}", [])[1] for i in range(n)]
    with _DynsecAdmin(tmp_path / "acl") as broker:
        tap = Tap(broker.port)
        settings = _gw(await tap.start(), protocol, sys_dropped_topic=None)
        router = Router(routes)
        try:
            async with link_running(BrokerLink(settings, router)) as link:
                # the connect's subscriptions (3.1.1: each refused packet's filters then
                # asked alone, once), then a retry round: n filters each
                rounds = 3 if protocol == "3.1.1" else 2
                await until(lambda: sum(tap.filters) >= rounds * n, 20)
        finally:
            tap.close()
    assert len(link.refused) == n
    sizes = tap.filters
    if protocol == "3.1.1":
        # A packet refused whole is asked again filter by filter, once (a filter the
        # broker will not take must not silence the others); refused alone as well, they
        # are an ACL's refusals, and the retry rounds ask them 100 a packet again.
        alone = [100, *[1] * 100, 100, *[1] * 100, 50, *[1] * 50]
        assert sizes[: len(alone)] == alone, sizes[:10]
        assert sizes[len(alone) : len(alone) + 3] == [100, 100, 50], sizes[len(alone) :]
    else:
        packets = next(i + 1 for i in range(len(sizes)) if sum(sizes[: i + 1]) == n)
        retry = next(i + 1 for i in range(len(sizes)) if sum(sizes[packets : packets + i + 1]) == n)
        assert router.by_id, "each filter has its own identifier"
        assert (packets, retry) == (n, n)
        assert tap.in_flight_max > 1, "SUBSCRIBEs pipelined, not one round trip each"


class _Picky(Tap):
    """A Tap standing for a broker that will not take one filter (too long for it,
    invalid there) and refuses the whole SUBSCRIBE that holds it: every code 0x80, or
    (`short`) a SUBACK with one code for all of them. Counts what it refused so."""

    def __init__(self, broker_port: int, bad: str, short: bool = False) -> None:
        super().__init__(broker_port)
        self.bad, self.short = bad.encode(), short
        self.refused_whole = 0
        self._client: asyncio.StreamWriter | None = None

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self._client = c_writer
        await super()._serve(c_reader, c_writer)

    def _keep(self, kind: int, up: bool, body: bytes) -> bool:
        keep = super()._keep(kind, up, body)
        if not (up and kind == SUBSCRIBE and self.bad in body) or self._client is None:
            return keep
        self.refused_whole += 1
        n = 1 if self.short else _filters(body, False)
        self._client.write(bytes([SUBACK << 4, 2 + n]) + body[:2] + b"\x80" * n)
        return False


@pytest.mark.skipif(not Path(DYNSEC).exists(), reason=f"{DYNSEC} is missing (mosquitto)")
@pytest.mark.parametrize("short", [False, True], ids=["all-0x80", "one-code"])
async def test_a_batch_refused_whole_for_one_bad_filter_still_subscribes_the_others(
    tmp_path: Path, short: bool
) -> None:
    """3.1.1, 5 filters in one SUBSCRIBE, one of which this broker will not take: it
    refuses the whole packet. The 4 good sensors stayed silent (refused with the bad one,
    and the retry asked again in the same packet every minute); now the refused packet's
    filters are asked one by one: the bad one alone is named refused, the others heard."""
    got: list[Reading] = []
    routes = [_sensor(f"fan-{i}", f"ncd/allowed/{i}", got)[1] for i in range(4)]
    routes.insert(2, _sensor("fan-bad", "ncd/allowed/bad", got)[1])
    with _DynsecAdmin(tmp_path / "acl") as broker:
        tap = _Picky(broker.port, "ncd/allowed/bad", short)
        settings = BrokerSettings(
            id="b", host="127.0.0.1", port=await tap.start(), client_id="edge-t",
            protocol="3.1.1", username="gw", password="secret", sys_dropped_topic=None,
        )  # fmt: skip
        link = BrokerLink(settings, Router(routes))
        task = asyncio.create_task(link.run())
        try:
            await until(lambda: link.refused and tap.refused_whole, 10)
            await until(lambda: list(link.refused) == ["ncd/allowed/bad"], 5)
            async with aiomqtt.Client(
                "127.0.0.1", broker.port, username="admin", password="secret"
            ) as c:
                for i in range(4):
                    await c.publish(f"ncd/allowed/{i}", ncd(1.0), qos=1)
                await until(lambda: len(got) == 4, 5)
            assert link.connects_total == 1
        finally:
            link.stop()
            task.cancel()
            await asyncio.wait([task], timeout=5)
            tap.close()
    assert sorted(r.sensor_id for r in got) == [f"fan-{i}" for i in range(4)]
