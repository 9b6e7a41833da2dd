"""A broker link's subscriptions (a BrokerLink's part): one per route, each SUBACK
checked; the filters an earlier run left in a persistent session unsubscribed; the
broker's dropped-messages counter.

A broker may close the connection at a SUBSCRIBE instead of refusing it in the SUBACK
(mosquitto for a filter it takes as malformed, other brokers for an ACL denial): the link
then reconnected, subscribed, was dropped again, without end, every sensor of the broker
silent, and each round waited out the SUBACK's timeout. Here a drop while SUBSCRIBEs are
in flight fails them at once; filters lost in flight twice in a row (once: most likely a
broker restarting, asked for together again) become suspects, asked for one at a time
after the others at the next connections; one the connection is lost at, alone in
flight, QUARANTINE_STRIKES times in a row is quarantined: reported as refused, its
sensors told why, and asked for again alone only after a back-off (QUARANTINE_RETRY_S,
doubled each time up to QUARANTINE_RETRY_MAX_S; a reload or a restart asks at once). A
broker that crashes, or a network that blips, twice at a good filter's SUBSCRIBE looks
the same as a broker refusing it: held back for good, that filter's sensors stayed
silent until someone reloaded. A filter the broker really drops us for costs the link
one reconnect per back-off."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from drivers.mqtt._broker_drops import DEFAULT_TOPIC as SYS_DROPPED_TOPIC
from drivers.mqtt._broker_drops import BrokerDrops
from drivers.mqtt._client import BoundedClient
from drivers.mqtt._connect import raise_if_cancelled
from drivers.mqtt._router import Router
from drivers.mqtt._settings import BrokerSettings, SessionLog

log = logging.getLogger("edge_agent.drivers.mqtt")

UNSUBSCRIBE_BATCH = 100  # topic filters per UNSUBSCRIBE packet (a few KiB)
SUBSCRIBE_BATCH = 100  # topic filters per SUBSCRIBE packet (3.1.1, MQTT 5 without identifiers)
SUBSCRIBE_BATCH_BYTES = 16 * 1024  # and their bytes per packet (a filter may be 64 KiB)
SUBSCRIBE_WINDOW = 32  # MQTT 5 with identifiers: SUBSCRIBEs in flight at once
NO_RETAINED = SubscribeOptions.RETAIN_DO_NOT_SEND  # MQTT 5 retain handling 2
REFUSED_SUB_RETRY_S = 60.0  # a refused subscription is asked for again this often
QUARANTINE_STRIKES = 2  # a broker restart may coincide once with a suspect's SUBSCRIBE
# A broker that will not take a filter drops us as it reads the SUBSCRIBE: a drop later
# than this, or our own keepalive giving up (a deaf link), is no strike against the filter.
STRIKE_WITHIN_S = 3.0
KEEPALIVE_TIMEOUT = 0x8D  # MQTT 5's reason code, which paho gives for its own timeout too
QUARANTINE_RETRY_S = 300.0  # a quarantined filter is asked for again after this (jittered),
QUARANTINE_RETRY_MAX_S = 3600.0  # the wait doubled each time it is dropped again, up to this


@dataclass
class Quarantine:
    """A filter quarantined, until the broker answers a SUBSCRIBE of it."""

    text: str  # what its sensors were told
    rounds: int  # times quarantined since the broker last answered it
    due: float  # monotonic: asked for again from then on


class SubscriptionLost(aiomqtt.MqttError):
    """The connection closed while SUBSCRIBEs were in flight (their filters named)."""

    def __init__(self, filters: list[str], reason: str) -> None:
        shown = ", ".join(repr(f) for f in filters[:5])
        more = f" and {len(filters) - 5} more" if len(filters) > 5 else ""
        super().__init__(f"connection lost at the SUBSCRIBE of {shown}{more} ({reason})")
        self.filters = filters


class Subscribing:
    """The link's subscriptions (the attributes are the link's own)."""

    settings: BrokerSettings
    router: Router
    broker_drops: BrokerDrops
    last_error: str | None
    refused: dict[str, str]
    quarantined: dict[str, str]  # filter -> why (see the module docstring)
    _suspects: set[str]  # filters in flight when a connection was lost (twice, or alone)
    _doubted: set[str]  # filters in flight, with others, when a connection was lost once
    _strikes: dict[str, int]  # connections lost with the filter alone in flight, in a row
    _quarantines: dict[str, Quarantine]  # quarantined, or released and not yet answered
    _refused_alone: set[str]  # filters the broker refused in a SUBSCRIBE of their own
    _sessions: SessionLog | None
    _sys_unsubscribed: bool
    _gone_tried: bool
    _rng: random.Random
    session: str  # drivers.mqtt._link

    async def _subscribe(self, client: BoundedClient, only: frozenset[str] | None = None) -> None:
        """Every route's filter, the SUBACK checked. In MQTT 5 with an identifier (see
        Router) and without retained copies (retain handling 2): a retained copy is never
        analysed (MqttSensor), yet the broker would send one per sensor topic at every
        subscription: with 2000 sensors, 2000 messages through the decode queue and 2000
        "dropped (retained)" warnings at each reconnect. 3.1.1 has no such option.
        `only`: these filters alone (those the broker refused, tried again).

        Several filters per SUBSCRIBE (bounded by SUBSCRIBE_BATCH and SUBSCRIBE_BATCH_BYTES),
        one round trip each, not one per filter: 2000 refused filters over a 40 ms round
        trip took 87 s a round. An MQTT 5 identifier belongs to the whole packet and each
        route has its own, so with identifiers it is one filter a packet, SUBSCRIBE_WINDOW
        of them in flight at once."""
        v5 = self.settings.protocol == "5"
        ids = {r.topic: i for i, r in self.router.by_id.items()}
        routes = self.router.routes
        self._release_due(only)
        wanted = [
            (t, r)
            for t, r in routes.items()
            if (only is None or t in only) and t not in self.quarantined
        ]
        self._refused_alone &= routes.keys()  # a reload's removed routes
        self._suspects &= routes.keys()
        self._doubted &= routes.keys()
        # Suspects last, one at a time: a drop then names its filter, the others heard.
        suspects = [(t, r) for t, r in wanted if t in self._suspects]
        wanted = [(t, r) for t, r in wanted if t not in self._suspects]
        await self._subscribe_together(client, wanted, v5, ids)
        for topic, route in suspects:
            sub_id = ids.get(topic)
            result = await self._in_flight(
                client,
                [topic],
                self._subscribe_one(client, topic, route, sub_id)
                if v5
                else client.subscribe(topic, qos=route.qos),
            )
            raise_if_cancelled()
            self._suspects.discard(topic)
            self._answered(topic)
            self._granted(topic, route, result)

    def _release_due(self, only: frozenset[str] | None) -> None:
        """Quarantined filters whose back-off is over become suspects on their last strike:
        asked for alone, after the others; one more drop at it holds it back again, longer."""
        now = time.monotonic()
        for topic in [t for t in self._quarantines if t not in self.router.routes]:
            del self._quarantines[topic]  # a reload removed it
            self.quarantined.pop(topic, None)
        for topic, held in self._quarantines.items():
            if topic in self.quarantined and now >= held.due and (only is None or topic in only):
                del self.quarantined[topic]
                self._suspects.add(topic)
                self._strikes[topic] = QUARANTINE_STRIKES - 1

    def _quarantine_due(self) -> frozenset[str]:
        now = time.monotonic()
        return frozenset(t for t in self.quarantined if now >= self._quarantines[t].due)

    async def _subscribe_together(
        self, client: BoundedClient, wanted: list[tuple[str, Any]], v5: bool, ids: dict[str, int]
    ) -> None:
        """``wanted`` pipelined or batched (see _subscribe)."""
        if v5 and ids:
            for i in range(0, len(wanted), SUBSCRIBE_WINDOW):
                window = wanted[i : i + SUBSCRIBE_WINDOW]
                results = await self._in_flight(
                    client,
                    [t for t, _ in window],
                    asyncio.gather(
                        *(self._subscribe_one(client, t, r, ids.get(t)) for t, r in window)
                    ),
                )
                raise_if_cancelled()
                for (topic, route), result in zip(window, results, strict=True):
                    self._answered(topic)
                    self._granted(topic, route, result)
            return
        for batch in _batches(wanted):
            filters: list[Any] = [
                (t, SubscribeOptions(qos=r.qos, retainHandling=NO_RETAINED) if v5 else r.qos)
                for t, r in batch
            ]
            codes = list(
                await self._in_flight(client, [t for t, _ in batch], client.subscribe(filters))
            )
            raise_if_cancelled()
            for topic, _ in batch:
                self._answered(topic)
            whole = len(codes) != len(batch) or all(map(_failure, codes))
            if len(batch) > 1 and whole and not all(t in self._refused_alone for t, _ in batch):
                # The whole packet refused, or not one code per filter: maybe for one filter
                # the broker will not take (too long, invalid there), the others then lost
                # with it. Each asked alone, once: the bad one is named, the others heard.
                codes = await self._singly(client, batch, filters)
            elif len(codes) != len(batch):  # not one code per filter: none taken as granted
                codes = [_Unanswered(f"SUBACK with {len(codes)} codes for {len(batch)} filters")]
                codes *= len(batch)
            for (topic, route), code in zip(batch, codes, strict=True):
                self._granted(topic, route, code)

    async def _singly(
        self, client: BoundedClient, batch: list[tuple[str, Any]], filters: list[Any]
    ) -> list[Any]:
        """A refused batch's filters, one per SUBACK, SUBSCRIBE_WINDOW in flight at once.
        Those refused alone are remembered: in later rounds a packet of them alone, all
        refused again (an ACL), is taken as it is, not split again every minute."""
        codes: list[Any] = []
        for i in range(0, len(filters), SUBSCRIBE_WINDOW):
            window = filters[i : i + SUBSCRIBE_WINDOW]
            results = await self._in_flight(
                client,
                [t for t, _ in batch[i : i + SUBSCRIBE_WINDOW]],
                asyncio.gather(*(client.subscribe([f]) for f in window)),
            )
            raise_if_cancelled()
            for result in results:
                got = list(result)
                codes.append(
                    got[0]
                    if len(got) == 1
                    else _Unanswered(f"SUBACK with {len(got)} codes for 1 filter")
                )
        for (topic, _), code in zip(batch, codes, strict=True):
            if _failure(code):
                self._refused_alone.add(topic)
        return codes

    async def _in_flight(self, client: BoundedClient, filters: list[str], answer: Any) -> Any:
        """The SUBACK(s) ``answer`` awaits, or SubscriptionLost at once when the connection
        closes first (aiomqtt would wait out its timeout: 10 s a round); the filters in
        flight are then suspects (one alone: a strike, see QUARANTINE_STRIKES)."""
        sent = time.monotonic()
        waiting = asyncio.ensure_future(answer)
        lost: asyncio.Future[None] = client._disconnected
        if lost.done():  # lost before these were sent: no sign against them
            waiting.cancel()
            await asyncio.wait([waiting])
            raise aiomqtt.MqttError("connection lost before the SUBSCRIBE")
        try:
            await asyncio.wait({waiting, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiting.done():
                waiting.cancel()
                await asyncio.wait([waiting])
        good = waiting.done() and not waiting.cancelled()
        if not lost.done() or (good and waiting.exception() is None):
            return waiting.result()  # the SUBACK (even when the drop came with it), or its error
        error = None if lost.cancelled() else lost.exception()
        reason = "closed" if error is None else str(error)
        code = getattr(getattr(error, "rc", None), "value", getattr(error, "rc", None))
        struck = time.monotonic() - sent <= STRIKE_WITHIN_S and code != KEEPALIVE_TIMEOUT
        self._lost_at(filters, reason, struck=struck)
        raise SubscriptionLost(filters, reason)

    def _answered(self, topic: str) -> None:
        """The broker answered a SUBSCRIBE of ``topic``: no sign against it."""
        self._strikes.pop(topic, None)
        self._doubted.discard(topic)

    def _lost_at(self, filters: list[str], reason: str, *, struck: bool) -> None:
        if len(filters) > 1:
            # Lost with others once: most likely the broker restarting or a blip, asked for
            # together again (one at a time, 2000 filters over a 40 ms link took 80 s, each
            # lone SUBSCRIBE a chance for the next blip to strike a good filter). Twice in a
            # row: suspects.
            self._suspects.update(f for f in filters if f in self._doubted)
            self._doubted.update(filters)
            return
        if not struck:
            self._suspects.update(filters)
            return
        topic = filters[0]
        strikes = self._strikes[topic] = self._strikes.get(topic, 0) + 1
        if strikes < QUARANTINE_STRIKES:
            self._suspects.add(topic)
            return
        self._suspects.discard(topic)
        self._strikes.pop(topic, None)
        why = (
            f"the broker closed the connection at its SUBSCRIBE {strikes} times in a row ({reason})"
        )
        self.quarantined[topic] = why
        text = f"subscription to {topic!r} quarantined: {why}"
        held = self._quarantines.get(topic)
        rounds = 1 if held is None else held.rounds + 1
        wait = min(QUARANTINE_RETRY_MAX_S, QUARANTINE_RETRY_S * 2 ** (rounds - 1))
        wait *= self._rng.uniform(0.8, 1.0)
        self._quarantines[topic] = Quarantine(text, rounds, time.monotonic() + wait)
        route = self.router.routes.get(topic)
        for sensor in route.sensors() if route is not None else ():
            sensor.refused(text)
        (log.error if rounds == 1 else log.warning)(
            "mqtt broker %s at %s: %s; its sensors get no messages, the other subscriptions "
            "go on; asked for again alone in %.0f s (check the filter and the broker's ACL "
            "for user %s)",
            self.settings.id,
            self.settings.address,
            text,
            wait,
            self.settings.username,
        )

    async def _subscribe_one(
        self, client: BoundedClient, topic: str, route: Any, sub_id: int | None
    ) -> Any:
        """One filter, MQTT 5: no retained copies, with its identifier if it has one."""
        props = None
        if sub_id is not None:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sub_id
        options = SubscribeOptions(qos=route.qos, retainHandling=NO_RETAINED)
        # paho takes the QoS from the options
        return await client.subscribe(topic, qos=0, options=options, properties=props)

    async def _retry_refused(self, client: BoundedClient) -> None:
        """While connected, subscribe again every REFUSED_SUB_RETRY_S to the filters the
        broker refused: an ACL fixed at the broker (mosquitto's dynamic security takes
        effect at once) then reaches the sensors without waiting for a reconnect, which a
        healthy link may never have. A round that fails (a SUBSCRIBE the broker does not
        answer in time, or anything else) is logged once per connection and the next round
        comes as planned: the refused sensors must not stay silent until a reconnect. Ends
        when the link cancels it, with the connection (the link's consumer sees that)."""
        said = False
        while True:
            await asyncio.sleep(REFUSED_SUB_RETRY_S * self._rng.uniform(0.8, 1.0))
            due = self._quarantine_due()
            if not self.refused and not due:
                continue
            try:
                await self._subscribe(client, frozenset(self.refused) | due)
            except Exception as exc:  # CancelledError is no Exception: a stop still ends it
                if not said:
                    said = True
                    log.warning(
                        "mqtt broker %s: asking again for the %d refused subscription(s) "
                        "failed (%s: %s); tried again every %.0f s",
                        self.settings.id,
                        len(self.refused),
                        type(exc).__name__,
                        exc,
                        REFUSED_SUB_RETRY_S,
                        exc_info=not isinstance(exc, aiomqtt.MqttError),  # a bug: its trace
                    )

    def _granted(self, topic: str, route: Any, result: Any) -> None:
        """Check the SUBACK: a subscription the broker refuses (an ACL: 0x80 in 3.1.1,
        0x87 in 5) must be said, or its sensors would only look stale for no visible reason.
        """
        codes = result if isinstance(result, list | tuple) else [result]
        failed = [c for c in codes if _failure(c)]
        held = self._quarantines.pop(topic, None)  # answered: no longer drops us
        if not failed:
            self._refused_alone.discard(topic)
            if held is not None:
                for sensor in route.sensors():
                    if sensor.last_error == held.text:
                        sensor.refused(None)
                log.warning(
                    "mqtt broker %s: subscription to %s, quarantined, granted now; its "
                    "sensors get messages",
                    self.settings.id,
                    topic,
                )
            was = self.refused.pop(topic, None)
            if was is not None:
                text = _refused_text(topic, was)
                if self.last_error == text:
                    self.last_error = None
                for sensor in route.sensors():
                    if sensor.last_error == text:
                        sensor.refused(None)
                log.warning(
                    "mqtt broker %s: subscription to %s granted now; its sensors get messages",
                    self.settings.id,
                    topic,
                )
            return
        reason = str(failed[0])
        first = self.refused.get(topic) != reason
        self.refused[topic] = reason
        text = _refused_text(topic, reason)
        self.last_error = text
        for sensor in route.sensors():
            sensor.refused(text)
        if first:
            log.error(
                "mqtt broker %s at %s: %s; its sensors get no messages (check the broker's "
                "ACL for user %s); tried again every %.0f s and at every reconnect",
                self.settings.id,
                self.settings.address,
                text,
                self.settings.username,
                REFUSED_SUB_RETRY_S,
            )

    async def _unsubscribe_gone(self, client: BoundedClient) -> None:
        """A persistent session: unsubscribe the filters its last run subscribed and this
        configuration does not (a removed sensor's topic); then record this run's. The
        broker sends what it queued for them before this (decoded for no sensor); nothing
        after. Recorded only once they are gone; tried once per link (a broker that drops
        us for it must not cost the sensors every connection): the next run tries again."""
        if self._sessions is None or not self.settings.persistent or self._gone_tried:
            return
        self._gone_tried = True
        wanted = frozenset(self.router.routes)
        before = self._sessions.subscribed(self.session)
        gone = sorted(before - wanted)
        for i in range(0, len(gone), UNSUBSCRIBE_BATCH):
            await client.unsubscribe(gone[i : i + UNSUBSCRIBE_BATCH])
            raise_if_cancelled()
        if gone:
            log.info(
                "mqtt broker %s: unsubscribed %d topic filter(s) an earlier configuration "
                "left in the persistent session of client id %s: %s",
                self.settings.id,
                len(gone),
                self.settings.client_id,
                ", ".join(gone[:10]) + (f" and {len(gone) - 10} more" if len(gone) > 10 else ""),
            )
        if before != wanted:
            self._sessions.record(self.session, wanted)

    async def _watch_broker_drops(self, client: BoundedClient) -> None:
        """Subscribe to the broker's dropped-messages counter, after the sensors' own
        subscriptions (a broker that refuses it, or even disconnects us for it, costs them
        nothing): QoS 0, it is refreshed every few seconds anyway."""
        drops = self.broker_drops
        if (
            self.settings.persistent
            and drops.topic != SYS_DROPPED_TOPIC
            and not self._sys_unsubscribed
        ):
            await self._unsubscribe_default_sys(client)
        if not drops.wanted:
            return
        assert drops.topic is not None
        drops.connected()
        try:
            result = await client.subscribe(drops.topic, qos=0)
        except aiomqtt.MqttError as exc:
            drops.lost(f"{type(exc).__name__}: {exc}")  # twice in a row: not asked again
            raise
        raise_if_cancelled()
        codes = result if isinstance(result, list | tuple) else [result]
        failed = [c for c in codes if getattr(c, "is_failure", False) or c == 0x80]
        if failed:
            drops.refused(f"SUBACK {failed[0]}")
        else:
            drops.granted()

    async def _unsubscribe_default_sys(self, client: BoundedClient) -> None:
        """A persistent session keeps what an earlier run subscribed: the broker's default
        dropped-messages counter, when sys_dropped_topic was on then and is off (or names
        another topic) now. Its updates would keep coming, counted as sensor messages.
        Unsubscribing a topic the session does not hold is harmless. Once per link: this
        link never subscribes it, and a broker that drops us for it is not asked again."""
        self._sys_unsubscribed = True
        await client.unsubscribe(SYS_DROPPED_TOPIC)
        raise_if_cancelled()


@dataclass(frozen=True, slots=True)
class _Unanswered:
    """A filter the broker's SUBACK gave no code for (a broker out of the protocol)."""

    text: str
    is_failure: bool = True

    def __str__(self) -> str:
        return self.text


def _batches(items: list[tuple[str, Any]]) -> list[list[tuple[str, Any]]]:
    """The filters in packets of at most SUBSCRIBE_BATCH filters and SUBSCRIBE_BATCH_BYTES
    (a filter longer than that alone in its packet)."""
    out: list[list[tuple[str, Any]]] = []
    size = 0
    for item in items:
        n = len(item[0].encode()) + 3  # length prefix and options byte
        if not out or len(out[-1]) >= SUBSCRIBE_BATCH or size + n > SUBSCRIBE_BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(item)
        size += n
    return out


def _failure(code: Any) -> bool:
    """A SUBACK code that refuses its filter (0x80 in 3.1.1, >= 0x80 in 5)."""
    return bool(getattr(code, "is_failure", False) or code == 0x80)


def _refused_text(topic: str, reason: str) -> str:
    return f"subscription to {topic} refused by the broker ({reason})"
