"""Endpoint faults: one sensor_fault for a silent host, the gateway's TCP network or an
MQTT broker, on the gateway's asset, instead of one per device behind it (see
agent.sensor_faults for the rules; drivers.modbus._peers tells the two apart)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

from agent.analysis.monitor import Update
from agent.fault_draft import (
    ALL_CHANNELS,
    FLAP_CLEAR_HOLD_S,
    FLAP_WINDOW_S,
    MAX_NAMED,
    PREFIXES,
    fault_draft,
    fault_key,
    transport_of,
)
from agent.records import AssetRef, SensorRef, format_ts

log = logging.getLogger("edge_agent.drivers.modbus")
NAMED_IN_LINE = 5  # hosts a log line names (the rest are counted)


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    """The endpoints (host:port, gateway, serial line) of one host, each with several
    devices behind it."""

    host: str
    devices: int  # behind all of them
    silent_for_s: float  # the longest silence of one of them now (0: all answer)
    silent: tuple[str, ...] = ()  # the endpoints silent now
    silenced: tuple[str, ...] = ()  # the devices that failed during those silences
    error: str = ""  # an example of their errors
    # Every endpoint has answered (or its host shown life) since the agent started: a
    # fault kept raised across a restart is not cleared by endpoints not yet found silent
    # again.
    answered: bool = True
    # "broker": an MQTT broker link down (host: the broker id, silent: its address,
    # devices: its sensors); its fault waits for the shortest stale_after_s of them too
    # (raised_after_s), as long as they would each have waited.
    kind: str = "host"
    raised_after_s: float = 0.0
    # The network's: the hosts of its silent devices (silent: their host:port), what a
    # planner goes and looks at.
    silent_hosts: tuple[str, ...] = ()
    # The key of the wider group it is in (the network's, updated before it): while that
    # one is silent it covers this one (one fault for one outage).
    within: str = ""
    # Seconds since any device of that wider group answered (0: it cannot fall silent as
    # a whole), and how long its silence takes to be decided (its polls to the breaker's
    # threshold): a host silent with nothing answering anywhere waits for it (update).
    within_quiet_s: float = 0.0
    within_decide_s: float = 0.0
    # Every failure in its silence was a gateway's exception 10 or 11: the TCP-to-RTU
    # gateway answers, the serial line behind it (or every device on it) is what is silent.
    gateway_answers: bool = False

    @property
    def key(self) -> str:
        """What the tracker knows it by: a host by its name (as stored since), anything
        else by its sensor id (a broker id may equal a host name)."""
        return self.host if self.kind == "host" else self.sensor_id

    @property
    def sensor_id(self) -> str:
        return PREFIXES[self.kind] + self.host.replace("/", "_")  # the store key splits on /


class EndpointFaults:
    """The raised state of the hosts', network's and brokers' faults.

    Args:
        saved: the persisted fault states by key (shared with the sensor tracker: a
            state written here supersedes the one the store held).
        transport: the transport name for the records.
        clock: monotonic seconds, for the flapping hold.
    """

    def __init__(self, saved: dict[str, str], transport: str, clock: Callable[[], float]) -> None:
        self._saved = saved
        self._transport = transport
        self._clock = clock
        self._gateway = AssetRef("", "", 1)
        self._after = 0.0
        self.raised: dict[str, str] = {}  # host -> its fault's sensor id
        self._raised_at: dict[str, float] = {}  # host -> when raised (restored: unknown)
        self._cleared_at: dict[str, float] = {}  # as for sensors: a flapping host
        self._flapping: set[str] = set()
        self._ok_since: dict[str, float] = {}
        self._silent_now: dict[str, bool] = {}  # the network's key -> silent at its update
        self._back_at: dict[str, float] = {}  # the network's key -> when it answered again
        self.raised_total = 0  # endpoint faults raised (for /metrics)

    def place(self, gateway: AssetRef, endpoint_silent_s: float) -> None:
        """Take a (re)loaded configuration: the gateway's asset, the fault delay."""
        self._gateway = gateway
        self._after = endpoint_silent_s

    def restore(self) -> None:
        """The host faults raised when the agent stopped stay raised (a restart neither
        repeats nor forgets them, as a device's own): cleared when the host answers."""
        for k, v in self._saved.items():
            asset_id, sid = k.split("/")[:2]
            if not sid.startswith(tuple(PREFIXES.values())) or asset_id != self._gateway.id:
                continue
            try:
                saved = json.loads(v)
            except ValueError:
                continue
            if (
                isinstance(saved, dict)
                and saved.get("raised")
                and isinstance(saved.get("host"), str)
            ):
                self.raised[saved["host"]] = sid

    def close_unwatched(self, watched: Collection[str], now: datetime) -> Update:
        """Clear the fault of a host no longer watched as a group (a reload replaced the
        gateway, removed or moved its devices, or left fewer than 3 behind it): nothing
        would observe it answering again, and its fault stayed raised until a restart."""
        out = Update()
        reason = (
            "no longer watched: the devices behind it were removed or moved by a reload "
            "(or in the file before a restart; any left are judged one by one)"
        )
        for host in [h for h in self.raised if h not in watched]:
            self._cleared_at[host] = self._clock()
            self._close(out, host, now, reason, {"reason": reason})
        return out

    def _close(
        self, out: Update, host: str, now: datetime, reason: str, evidence: dict[str, object]
    ) -> None:
        """Clear a host's fault for a reason other than its answering again."""
        sid = self.raised.pop(host)
        self._raised_at.pop(host, None)
        self._flapping.discard(host)
        self._ok_since.pop(host, None)
        key = fault_key(self._gateway.id, sid)
        self._saved.pop(key, None)
        out.state[key] = json.dumps({"raised": False, "at": format_ts(now), "host": host})
        sensor = SensorRef(sid, ALL_CHANNELS, transport_of(sid, self._transport))
        measured = ("devices_silent", 0.0, 0.0)
        evidence = {"host": host, **evidence}
        out.drafts.append(
            fault_draft(self._gateway, sensor, "cleared", now, measured, reason, evidence)
        )

    def update(self, health: EndpointHealth, now: datetime) -> Update:
        """One host's endpoints observed: one fault for the host, raised once one of them
        has been silent for sensor_faults.endpoint_silent_s, cleared when all answer (a
        host whose 9 ports all fall silent is one episode, not 9). A host raised again
        within FLAP_WINDOW_S of its clear (a switch port flapping) clears only once it has
        answered for FLAP_CLEAR_HOLD_S without a break, as a flapping sensor."""
        out = Update()
        sid, host, clock = health.sensor_id, health.key, self._clock()
        if health.kind == "network":
            silent = health.silent_for_s > 0
            if self._silent_now.get(host, False) and not silent:
                self._back_at[host] = clock
            self._silent_now[host] = silent
        back_at = self._back_at.get(health.within)
        if host not in self.raised and back_at is not None and clock - back_at < self._after:
            # The network just answered again: a host it covered is not silent until it
            # has had endpoint_silent_s to answer too (its devices polled again after their
            # back-off); raised at once, it was raised and cleared a round later.
            return out
        if health.within and self._silent_now.get(health.within, False):
            # Silent within the network's outage, whose one fault says it (raised once all
            # has been silent for endpoint_silent_s: this one waits no longer than that):
            # not raised, and a fault raised before the network's is closed once the
            # network's is raised (raised again if still silent when the network answers).
            # One raised while the network's fault was held (a flapping network answering
            # between its drops) stays raised through the next drop: closed at each drop
            # and raised at each return, it was 2 records per flap.
            net_at = self._raised_at.get(health.within, -math.inf)
            if (
                host in self.raised
                and health.within in self.raised
                and self._raised_at.get(host, -math.inf) < net_at
            ):
                why = f"superseded by {health.within}: the whole Modbus TCP network is silent"
                self._close(out, host, now, why, {"superseded_by": health.within})
            return out
        after = max(self._after, health.raised_after_s)
        if (
            host not in self.raised
            and health.within
            and 0 < health.silent_for_s <= health.within_quiet_s
            and (
                health.within in self.raised or health.silent_for_s < after + health.within_decide_s
            )
        ):
            # No device anywhere on the network has answered since this host fell silent:
            # the network is dropping, its hosts found silent one by one (their polls are
            # spread over an interval), the network only once the last one is. Not raised
            # meanwhile (while the network's fault is raised, or until the network's
            # silence should have been decided): 200 hosts of a switch flap raised 200
            # faults, closed a round later as superseded, and while a flapping network's
            # fault was held, kept raised beside it, 400 records per flap.
            return out
        # The network answers: a host silent now is its own fault, even while a flapping
        # network's fault is held raised (FLAP_CLEAR_HOLD_S): covered by it, it was raised
        # only once that cleared, 2 minutes late or never while the switch kept flapping.
        raised = host in self.raised
        answering_for = None
        if health.silent_for_s > 0:
            self._ok_since.pop(host, None)
        else:
            answering_for = clock - self._ok_since.setdefault(host, clock)
        if not raised and health.silent_for_s > 0 and health.silent_for_s >= after:
            transition = "raised"
            self.raised[host] = sid
            self._raised_at[host] = clock
            self.raised_total += 1
            cleared_at = self._cleared_at.get(host)
            if cleared_at is not None and clock - cleared_at < FLAP_WINDOW_S:
                self._flapping.add(host)  # a switch port dropping it again and again
        elif raised and answering_for is not None and health.answered:
            if host in self._flapping and answering_for < FLAP_CLEAR_HOLD_S:
                return out  # back for a moment only: the episode goes on
            transition = "cleared"
            del self.raised[host]
            self._raised_at.pop(host, None)
            self._cleared_at[host] = clock
        else:
            return out
        key = fault_key(self._gateway.id, sid)
        self._saved.pop(key, None)
        raised_now = transition == "raised"
        out.state[key] = json.dumps({"raised": raised_now, "at": format_ts(now), "host": host})
        named = sorted(health.silenced)
        broker = health.kind == "broker"
        evidence: dict[str, object] = {health.kind: health.host}
        if host in self._flapping:
            evidence["flapping"] = True  # raised again soon after a clear
            if transition == "cleared":
                evidence["answering_for_s"] = round(answering_for or 0.0, 1)
                self._flapping.discard(host)
        if transition == "raised" and broker:
            evidence |= {
                "address": ", ".join(health.silent),
                "sensors": health.devices,
                "sensors_silent": len(named),
                "sensor_ids": named[:MAX_NAMED],
                "last_error": health.error or None,
                "down_for_s": round(health.silent_for_s, 1),
            }
        elif transition == "raised" and health.kind == "network":
            # Every silent endpoint and host named (the first MAX_NAMED, and how many).
            endpoints, hosts = sorted(health.silent), sorted(health.silent_hosts)
            _log_network_silent(hosts, len(named), health)
            evidence |= {
                "hosts_silent": hosts[:MAX_NAMED],
                "hosts_silent_count": len(hosts),
                "endpoints_silent": endpoints[:MAX_NAMED],
                "endpoints_silent_count": len(endpoints),
                "devices": health.devices,
                "devices_silent": len(named),
                "sensor_ids": named[:MAX_NAMED],
                "last_error": health.error or None,
                "silent_for_s": round(health.silent_for_s, 1),
            }
        elif transition == "raised":
            if health.gateway_answers:
                evidence["gateway_answers"] = True  # the serial side is silent, not the host
            evidence |= {
                "endpoints_silent": sorted(health.silent),
                "devices": health.devices,
                "devices_silent": len(named),
                "sensor_ids": named[:MAX_NAMED],
                "last_error": health.error or None,
                "silent_for_s": round(health.silent_for_s, 1),
            }
        sensor = SensorRef(sid, ALL_CHANNELS, transport_of(sid, self._transport))
        measured = (
            "sensors_silent" if broker else "devices_silent",
            float(len(named)),
            float(health.devices),
        )
        why = _reason(health, transition, len(named))
        out.drafts.append(
            fault_draft(self._gateway, sensor, transition, now, measured, why, evidence)
        )
        return out


def _log_network_silent(hosts: list[str], silent: int, health: EndpointHealth) -> None:
    """The one line of a network outage's start: its hosts' and endpoints' own lines are
    folded into it (drivers.modbus._peers), its return is one line too."""
    more = len(hosts) - NAMED_IN_LINE
    log.warning(
        "modbus TCP network silent: %d hosts / %d of %d devices silent for %.1f s "
        "(a network outage: check the switch or uplink; %s%s; last error: %s); their "
        "own lines are folded into this one",
        len(hosts),
        silent,
        health.devices,
        health.silent_for_s,
        ", ".join(hosts[:NAMED_IN_LINE]),
        f" and {more} more" if more > 0 else "",
        health.error or "none",
    )


def _reason(health: EndpointHealth, transition: str, silent: int) -> str:
    if health.kind == "broker":
        if transition == "raised":
            return (
                f"MQTT broker {health.host} ({', '.join(health.silent)}) not connected: "
                f"{silent} sensors are not watched"
            )
        return f"MQTT broker {health.host} connected again"
    if health.kind == "network":
        if transition == "raised":
            hosts = sorted(health.silent_hosts)
            more = f" and {len(hosts) - 3} more" if len(hosts) > 3 else ""
            return (
                f"no Modbus TCP device answers (a network outage): {silent} sensors on "
                f"{len(hosts)} hosts ({', '.join(hosts[:3])}{more}) are not watched"
            )
        return "Modbus TCP devices answer again"
    if transition == "raised" and health.gateway_answers:
        return (
            f"the Modbus gateway at {', '.join(sorted(health.silent))} answers, but no device "
            f"behind it does (exception 11, gateway target device failed to respond): check "
            f"its serial line and the devices on it; {silent} sensors are not watched"
        )
    if transition == "raised":
        return (
            f"no device behind {', '.join(sorted(health.silent))} answers: "
            f"{silent} sensors are not watched"
        )
    return "every endpoint of the host answers again"
