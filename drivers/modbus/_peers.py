"""The devices behind one endpoint (a host:port, a gateway, a serial line) and its outages.

When a whole endpoint goes silent (a simulator or gateway restarted, a switch port
flapping, a cable pulled) every device behind it fails at once. Told apart device by
device, 2000 sensors logged 4000 lines and raised 2000 sensor faults for a 10 s blip.
`Peers` tells a device that fails alone from one that fails with its whole endpoint: a
failing device is *undecided* until another device behind the same endpoint answers
after its failure (it fails alone: its own line, its own fault, as before), or until it
has failed `threshold` polls in a row with none answering for longer than any of them
polls (an *outage* of the endpoint: one line for all, one fault episode for its host,
see agent.sensor_faults). The
outage ends at the first answer from any device behind the endpoint, with one line
saying how many devices it silenced and for how long; a device still failing then goes
back to being judged alone at its next poll.

When an outage ends, the devices whose breakers opened during it are woken (`wake_on_end`):
each polls again at its next tick instead of after its own back-off (up to backoff_max_s,
30 s by default), so readings resume within about a poll interval of the first answer.

Endpoints with fewer than MIN_PEERS devices are not grouped: one device failing is
simply that device failing; a TCP port needs HOST_MIN_PEERS (two device ids behind one
port silent together are that port's outage, its host answering on another or not). A
TCP host's devices on endpoints too small to group (a device per port) are judged
together as the host when there are HOST_MIN_PEERS of them (`host_group`): a switch of
several down, silencing 3 hosts of 9, is one outage per host, not each device failing
alone. A host that shows life while
they fail (a late answer, a connection made, or one port refusing while another times
out: the reset is the host answering) is not silent: each failing device fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["HOST_MIN_PEERS", "MIN_PEERS", "NETWORK", "Outage", "Peers"]

log = logging.getLogger("edge_agent.drivers.modbus")

MIN_PEERS = 3  # devices behind an endpoint for their common silence to be its outage
# Devices on a TCP host, on endpoints too small to group, for their common silence to be
# the host's outage: both of a host's two devices silent at once is the host.
HOST_MIN_PEERS = 2
# The Peers of every Modbus TCP device of the gateway, each on its own endpoint or not: a
# device alone on its endpoint (its own IP, the common case for TCP vibration sensors)
# is judged with them, so a switch or VLAN outage silencing them all is one outage.
NETWORK = "modbus-tcp"
MAX_NAMED = 5  # sensor ids a log line names (the rest are counted)
# An endpoint silent again and again (a gateway whose last device answers only now and
# then, a switch port flapping) would log two lines per silence forever; after a logged
# one, the next within this window are only counted, and noted in the next line logged
# (as a device's own failure episodes, drivers.modbus._status).
LOG_QUIET_S = 300.0


@dataclass(slots=True)
class Outage:
    """One silence of a whole endpoint (monotonic times)."""

    since: float  # the first failure of a device it silenced
    declared_at: float
    sensors: set[str] = field(default_factory=set)  # devices that failed during it
    error: str = ""  # the first device's error, as an example
    ended_at: float | None = None
    logged: bool = True  # its start was logged (its end is then logged too)
    # A gateway answered exception 10 or 11 (path unavailable, target failed to respond)
    # during it, and its connection has not failed since: the gateway answers, the serial
    # side behind it is silent (its queued requests may time out meanwhile).
    gateway_answers: bool = False
    # Folded into the network's outage (not logged): when the network answered again.
    network_back_at: float | None = None

    def lasted_s(self, now: float | None = None) -> float:
        end = self.ended_at if self.ended_at is not None else (now or time.monotonic())
        return max(0.0, end - self.since)


class Peers:
    """Devices behind one endpoint: who answered last, who fails undecided, the outage.

    Args:
        address: the endpoint (``host:port`` or serial port).
        host: the host it is on (default: the address): a host's silent endpoints are
            one fault.
        threshold: failed polls in a row, with no device answering, that make an outage
            (the breaker threshold).
    """

    def __init__(
        self,
        address: str,
        threshold: int = 3,
        host: str | None = None,
        *,
        level: str = "endpoint",
    ) -> None:
        self.address = address
        self.host = address if host is None else host
        # "endpoint", "host" (a TCP host's devices together) or "network".
        self.level = "network" if address == NETWORK else level
        self.label = {"network": "TCP network", "host": f"host {self.host}"}.get(
            self.level, f"endpoint {address}"
        )
        # The devices of its TCP host, and the gateway's TCP network (NETWORK): who
        # judges a device here when this endpoint has too few.
        self.host_group: Peers | None = None
        self.network: Peers | None = None
        self.threshold = threshold
        # The longest an outage waits for a slowly polled device to be asked (the agent
        # sets sensor_faults.endpoint_silent_s): see _quiet_for_all.
        self.decide_within_s = math.inf
        # sensor id -> its poll interval plus timeout: how long it may go without
        # answering while all is well.
        self.members: dict[str, float] = {}
        # sensor id -> the poller (its ledger) that joined: a reload builds a changed
        # sensor's new poller before it stops the old one, whose leave must not remove it.
        self._owners: dict[str, object] = {}
        self.last_answer = -1.0  # monotonic time of the latest good poll of any device
        # Its host showed life while its devices failed (_reachable), since the agent
        # started: its fault raised before that was known is cleared as if one answered.
        self.shown_life = False
        self.outage: Outage | None = None
        self.outages = 0  # outages ended
        self.outage_s_total = 0.0
        # Undecided failing devices: sensor id -> what logs its own line once it is clear
        # it fails alone.
        self._undecided: dict[str, tuple[float, Callable[[], None]]] = {}
        # A gateway's exception 10/11 since the last answer, and no connection failed since.
        self._gateway_answers = False
        # Host level: devices whose last failure came with a sign of their host (a late
        # answer, a new connection): the host is reachable, its failing devices fail alone.
        self._heard: set[str] = set()
        # Host level: when the last poll refused by one of its ports started (a reset: the
        # host is on the network, nothing listens on that port); see PollLedger.failed.
        self.refused_at = -math.inf
        self._log_quiet_until = -1.0
        self._hushed = 0  # outages not logged since the last line
        # Back-off sleeps to cut short when the outage ends (one per device at most).
        self._sleepers: set[asyncio.Future[None]] = set()
        # The network's: outages of its endpoints and hosts that began while no TCP device
        # anywhere answered (a switch dropping them all), logged as one line when the
        # network answers again instead of two lines per host (see _fold). Bounded: one
        # per endpoint and host, cleared at each answer.
        self._folded: list[tuple[Peers, Outage]] = []

    @property
    def judge(self) -> Peers | None:
        """Who judges a failure of a device here: this endpoint when it has enough
        devices, else its TCP host, else the gateway's TCP network, the first that has
        enough (None: judged alone)."""
        for peers in (self, self.host_group, self.network):
            if peers is not None and peers.grouped:
                return peers
        return None

    @property
    def groups(self) -> list[Peers]:
        """This endpoint and the wider groups its devices are in (each joins, answers and
        leaves every one of them)."""
        return [p for p in (self, self.host_group, self.network) if p is not None]

    @property
    def min_peers(self) -> int:
        """Devices it needs to judge them together: HOST_MIN_PEERS for a TCP host and a
        TCP port (two device ids behind one port silent together, while their host answers
        on another, are that port's outage: each was judged alone, two device faults for
        one silent port), MIN_PEERS for a serial line."""
        return HOST_MIN_PEERS if self.level == "host" or self.host_group is not None else MIN_PEERS

    @property
    def grouped(self) -> bool:
        """Whether these devices are judged together (enough of them)."""
        return len(self.members) >= self.min_peers

    @property
    def hears(self) -> bool:
        """Whether a sign of life (a late answer, a connection made) makes its failing
        devices fail alone: on a host's level, and on a port with fewer than MIN_PEERS
        devices (a device answering late beside a dead one on one port is two devices
        failing, not a silent port). Not on a bigger endpoint: a gateway answering
        exception 11 for each device is its serial side silent, one fault."""
        return self.level == "host" or (self.level == "endpoint" and len(self.members) < MIN_PEERS)

    def answered(self, sensor_id: str) -> None:
        """A device answered: the others failing now fail alone; an outage ends."""
        now = time.monotonic()
        self.last_answer = now
        self._gateway_answers = False
        self._heard.discard(sensor_id)
        self._undecided.pop(sensor_id, None)
        if self.outage is not None:
            self._end(now, sensor_id)
        if self._folded:
            self._end_folded(now, sensor_id)
        if self._undecided:
            alone = list(self._undecided.values())
            self._undecided.clear()
            for _, report in alone:
                report()

    def failed(
        self,
        sensor_id: str,
        failures: int,
        since: float,
        error: str,
        report: Callable[[], None],
        *,
        gateway_answers: bool | None = None,
        heard: bool = False,
    ) -> Outage | None:
        """A device's poll failed (its ``failures``-th in a row, the first at ``since``).

        Returns the outage it fails in (nothing to log for it: the outage's lines say it
        all), or None: ``report`` logs its own line once another device answers after
        this failure (it fails alone; at once when the endpoint is not grouped), unless
        it joins an outage first. An answer that came before this failure proves nothing:
        at a cut, requests sent just before it fail after answers sent just before it.
        ``gateway_answers``: True for a gateway's exception 10 or 11, False for a
        connection that failed (the gateway itself is gone), None for anything else.
        ``heard``: its host showed life since its previous failed poll (a late answer, a
        connection made). On a host's level, one device heard makes every failing one
        fail alone: a device refusing beside a slow one was a host silent, 'no device
        behind it answers', though its other port had just answered late.
        """
        if gateway_answers is not None:
            self._gateway_answers = gateway_answers
            if self.outage is not None:
                self.outage.gateway_answers = gateway_answers
        if self.hears:
            (self._heard.add if heard else self._heard.discard)(sensor_id)
            if self._heard:
                return self._reachable(sensor_id, report)
        if self.outage is not None:
            self.outage.sensors.add(sensor_id)
            self._undecided.pop(sensor_id, None)
            return self.outage
        if not self.grouped:
            self._undecided.pop(sensor_id, None)
            report()
            return None
        self._undecided.setdefault(sensor_id, (since, report))
        if failures < self.threshold or not self._quiet_for_all():
            return None
        return self._declare(sensor_id, error)

    def wake_on_end(self, fut: asyncio.Future[None]) -> bool:
        """Resolve ``fut`` when the current outage ends; False (not kept) when there is
        none: a device failing among answering ones keeps its own back-off."""
        if self.outage is None:
            return False
        self._sleepers.add(fut)
        return True

    def forget(self, fut: asyncio.Future[None]) -> None:
        """A back-off sleep ended (woken, due, or cancelled)."""
        self._sleepers.discard(fut)

    def undecided(self, sensor_id: str) -> bool:
        """Whether this device fails without it being known yet whether alone."""
        return sensor_id in self._undecided

    def join(self, sensor_id: str, quiet_s: float, owner: object = None) -> None:
        """A device's poller, polling every ``quiet_s`` at most while all is well."""
        self.members[sensor_id] = quiet_s
        self._owners[sensor_id] = owner

    def leave(self, sensor_id: str, owner: object = None) -> None:
        """A device's poller stopped (a reload removed or restarted it): ``owner``, when
        given, is the one that joined (a restarted sensor's new poller has joined since)."""
        if owner is not None and self._owners.get(sensor_id) is not owner:
            return  # replaced: the device is still behind this endpoint
        self._owners.pop(sensor_id, None)
        self.members.pop(sensor_id, None)
        self._undecided.pop(sensor_id, None)
        self._heard.discard(sensor_id)
        if not self.members and self.outage is not None:
            # Its last device removed: nothing behind it is watched, so nothing is silent.
            self.outage.ended_at = time.monotonic()
            self.outage_s_total += self.outage.lasted_s()
            self.outages += 1
            self.outage = None

    def _reachable(self, sensor_id: str, report: Callable[[], None]) -> None:
        """The host showed life while its devices fail: not an outage (one going on
        ends), each failing device fails alone."""
        self.shown_life = True
        if self.outage is not None:
            self._end(time.monotonic(), sensor_id)
        self._undecided.pop(sensor_id, None)
        alone = list(self._undecided.values())
        self._undecided.clear()
        for _, other in alone:
            other()
        report()
        return None

    def _quiet_for_all(self) -> bool:
        """Whether no device has answered for longer than any of them polls: a device
        polled every 60 s beside this one at 1 s has not answered yet, not failed. Only
        the devices due within decide_within_s count when MIN_PEERS of them do: one not
        due yet cannot be silent, and waiting for one polled every 600 s held a whole
        network's outage (its one fault) back for 10 minutes."""
        quiet = time.monotonic() - self.last_answer
        polls = list(self.members.values())
        due = [q for q in polls if q <= self.decide_within_s]
        return quiet >= max(due if len(due) >= MIN_PEERS else polls, default=0.0)

    def _declare(self, sensor_id: str, error: str) -> Outage:
        now = time.monotonic()
        since = min(s for s, _ in self._undecided.values())
        outage = Outage(since, now, set(self._undecided), error)
        outage.gateway_answers = self._gateway_answers
        self._undecided.clear()
        self.outage = outage
        net = self.network
        if self.level != "network" and net is not None and net.last_answer < since:
            # No TCP device anywhere has answered since this one fell silent: the network
            # is dropping (or has dropped), its one line says it (_end_folded). A switch
            # flap of 200 hosts logged 200 'silent' and 200 'answers again' lines.
            outage.logged = False
            net._folded.append((self, outage))
            return outage
        if now < self._log_quiet_until:
            outage.logged = False
            self._hushed += 1
            return outage
        self._log_silent(outage, now)
        return outage

    def _log_silent(self, outage: Outage, now: float, note: str = "") -> None:
        self._log_quiet_until = now + LOG_QUIET_S
        hushed, self._hushed = self._hushed, 0
        log.warning(
            "modbus %s silent%s: none of its %d devices answers (for %.1f s; "
            "first: %s); the devices failing with it are counted, not logged one by one%s",
            self.label,
            note,
            len(self.members),
            outage.lasted_s(now),
            outage.error,
            f" ({hushed} brief silences since the last report were counted, not logged)"
            if hushed
            else "",
            extra={"address": self.address},
        )

    def _end_folded(self, now: float, sensor_id: str) -> None:
        """The network answers again after its endpoints' outages were folded into it: one
        line with their counts; those still silent are covered until decide_within_s has
        let their devices poll again (then each logs its own line, still_silent)."""
        folded, self._folded = self._folded, []
        hosts = {p.host for p, _ in folded}
        devices = sum(len(o.sensors) for _, o in folded)
        since = min(o.since for _, o in folded)
        named = sorted(hosts)
        more = len(named) - MAX_NAMED
        log.info(
            "modbus TCP network answers again (%s first) after %.1f s: %d hosts / %d devices "
            "were silent with it (%s%s); a host still silent is logged on its own",
            sensor_id,
            max(0.0, now - since),
            len(hosts),
            devices,
            ", ".join(named[:MAX_NAMED]),
            f" and {more} more" if more > 0 else "",
            extra={"address": self.address},
        )
        for _, outage in folded:
            outage.network_back_at = now

    def still_silent(self, started: float) -> None:
        """A device failed again in this outage, its poll sent at monotonic ``started``: an
        outage folded into the network's is this host's own once a poll sent
        decide_within_s after the network answered again fails (its devices have had the
        time to answer, as a host fault waits: agent.endpoint_faults); its own line then,
        and its end's."""
        outage = self.outage
        if outage is None or outage.logged or outage.network_back_at is None:
            return
        net = self.network
        grace = (
            0.0 if net is None or not math.isfinite(net.decide_within_s) else net.decide_within_s
        )
        # The network still answering that long after its return (not a straggler's
        # answer sent before its drop) while this host's poll, sent as late, fails.
        back = outage.network_back_at + grace
        if started >= back and net is not None and net.last_answer >= back:
            outage.logged = True
            self._log_silent(
                outage, time.monotonic(), " (still, after the TCP network answered again)"
            )

    def _end(self, now: float, sensor_id: str) -> None:
        outage = self.outage
        assert outage is not None
        outage.ended_at = now
        self.outage = None
        self.outages += 1
        self.outage_s_total += outage.lasted_s(now)
        sleepers, self._sleepers = self._sleepers, set()
        for fut in sleepers:
            if not fut.done():
                fut.set_result(None)
        if not outage.logged:
            return
        named = sorted(outage.sensors)
        more = len(named) - MAX_NAMED
        log.info(
            "modbus %s answers again (%s first) after %.1f s silent: %d of its %d "
            "devices failed during it (%s%s)",
            self.label,
            sensor_id,
            outage.lasted_s(now),
            len(named),
            len(self.members),
            ", ".join(named[:MAX_NAMED]),
            f" and {more} more" if more > 0 else "",
            extra={"address": self.address},
        )
