"""Sensor faults as alerts: a sensor that stops answering, or answers garbage, is a
monitoring gap.

A reliability engineer must know that a machine is no longer watched. When a poller's
circuit breaker opens (several failed polls in a row), or when a sensor has answered only
implausible values (sentinels such as 0xFFFF, out of its valid range, NaN, all zero,
saturated at full scale, or one exact value repeated: frozen, see drivers.stuck) for
longer than its ``bad_values_fault_s``, a `sensor_fault` alert is raised for the sensor's
asset; when the sensor answers plausible values again it is cleared. The raised state is
persisted with the alert, so a restart neither repeats nor forgets it. A sensor that leaves
its asset (a reload, or a restart with an edited file) has its fault there cleared: no
status of it will ever clear it on that asset (agent.analysis.removed).

A sensor that comes back for a poll or two and fails again (a device whose firmware stalls
a few requests into each connection, a marginal radio link) would raise and clear its
fault every few seconds: 64 alerts in 3 minutes from one device, each forwarded (and a
CMMS work order per raise). A fault raised again within FLAP_WINDOW_S of its clear makes
the sensor *flapping*: its next clear waits until it has answered plausibly for
FLAP_CLEAR_HOLD_S without looking faulty again (a single missed poll is no break), so the
whole unsteady stretch is one episode. A first
fault still clears at the first good answer.

A whole endpoint falling silent (a host:port, gateway or serial line whose devices all
fail at once: a restart, a switch port, a cable) is one fault, not one per device: 2000
raised and 2000 cleared for a 10 s blip before. Its devices' own faults are held while
it is silent (drivers.modbus._peers tells the two apart), and one fault for its host (a
host's silent endpoints together: its 9 ports are one episode), on the gateway's asset,
is raised only once the silence has lasted sensor_faults.endpoint_silent_s (default
30 s): a shorter blip raises nothing (it is counted in /metrics). It clears when every
endpoint of the host answers again; a device still silent then raises its own fault. A
restart keeps it raised (one episode, not a clear and a new raise per restart).
A device failing while no other device behind its endpoint has answered, with no outage
declared (its peers poll every 10 minutes: an outage waits for them), is held for
endpoint_silent_s at most, then raises its own fault: two dead devices beside one polled
every 600 s raised nothing for up to 10 minutes before.
An MQTT broker link down is one fault the same way (sensor id broker:<id>): its sensors'
staleness is held while it is down and judged alone from the reconnect on (from the first
message after it, when their publishers come back later: endpoint_silent_s at most).
A TCP host's devices on endpoints too small to group are judged together as the host
(a switch of several down is a fault per silent host, not per device). Devices each on
their own host are judged together as the gateway's TCP network
(drivers.modbus._peers.NETWORK): none of them answering is one fault, network:modbus-tcp,
which supersedes the faults of the hosts silent with it (agent.sensor_watch).
The endpoint faults are agent.endpoint_faults'; the record both build, agent.fault_draft.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from agent.analysis.monitor import Update
from agent.analysis.removed import (
    CLOSED_AT_START,
    CLOSED_BY_RELOAD,
    asset_ref,
    closing_draft,
    why_left,
)
from agent.config import Asset, Config
from agent.endpoint_faults import EndpointFaults, EndpointHealth
from agent.fault_draft import (
    ALL_CHANNELS,
    BROKER_PREFIX,
    FLAP_CLEAR_HOLD_S,
    FLAP_WINDOW_S,
    HOST_PREFIX,
    MAX_NAMED,
    NETWORK_PREFIX,
    PREFIXES,
    fault_draft,
    fault_key,
)
from agent.records import AssetRef, SensorRef, format_ts
from drivers.reading import utc_now

__all__ = [
    "ALL_CHANNELS",
    "BROKER_PREFIX",
    "FLAP_CLEAR_HOLD_S",
    "FLAP_WINDOW_S",
    "HOST_PREFIX",
    "MAX_NAMED",
    "NETWORK_PREFIX",
    "EndpointHealth",
    "SensorFaultTracker",
    "SensorHealth",
    "fault_key",
]


@dataclass(frozen=True, slots=True)
class SensorHealth:
    """What the tracker needs from a poller's status."""

    sensor_id: str
    state: str  # "starting", "ok", "failing", "backoff"
    consecutive_failures: int
    last_error: str | None
    last_ok_at: datetime | None
    bad_for_s: float = 0.0  # seconds of implausible values only (0: the values are fine)
    last_bad: tuple[str, ...] = ()  # their flags, "feature:reason"
    silent_for_s: float = 0.0  # an MQTT sensor: seconds since its last usable message
    # It fails with its whole endpoint, or may (none of the devices behind it answers):
    # the endpoint's fault, not its own (see EndpointHealth).
    with_endpoint: bool = False
    # Seconds it has failed with no other device behind its endpoint answering and no
    # outage declared (the others poll slower, or not yet): held up to endpoint_silent_s.
    undecided_for_s: float = 0.0
    # Its values have not moved since it began (a restart, a reload): whether they are
    # frozen is not known yet (drivers.stuck), so they do not clear a raised fault.
    values_undecided: bool = False


class SensorFaultTracker:
    """Turns poller state changes into sensor_fault raised/cleared drafts.

    Args:
        config: the validated configuration (sensor -> asset).
        state: persisted state by key, as the store returned it.
        breaker_failures: failed polls in a row that open a poller's breaker (the threshold
            the record names).
        transport: the transport name for the records.
        clock: monotonic seconds (tests pass their own), for the flapping hold.
    """

    def __init__(
        self,
        config: Config,
        *,
        state: Mapping[str, str] | None = None,
        breaker_failures: int = 3,
        transport: str = "modbus",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = float(breaker_failures)
        self._transport = transport
        self._clock = clock
        # Flapping (in memory only: a restart forgets it, and at worst clears early once).
        self._cleared_at: dict[str, float] = {}  # monotonic time of each sensor's last clear
        self._flapping: set[str] = set()  # sensors whose next clear waits FLAP_CLEAR_HOLD_S
        self._ok_since: dict[str, float] = {}  # since when each answers plausibly, unbroken
        # Only the fault states are kept: a sensor a reload adds later resumes its own.
        self._saved = {k: v for k, v in (state or {}).items() if k.endswith("/sensor_fault")}
        self._raised: dict[str, bool] = {}
        self._raised_on: dict[str, str] = {}  # the asset each sensor's raised state is for
        # Sensors whose raised fault is for their values (implausible, frozen), not silence:
        # only those are held while their values are undecided (drivers.stuck).
        self._for_values: set[str] = set()
        self._assets: dict[str, Asset] = {}
        self._transports: dict[str, str] = {}
        self._endpoints = EndpointFaults(self._saved, transport, clock)
        self._place(config)
        self._endpoints.restore()

    def reconfigure(self, config: Config, at: datetime | None = None) -> Update:
        """Take a reloaded configuration; a "cleared" record (at: its time) for each fault
        a removed or moved sensor leaves raised on its old asset, with its state."""
        before, transports = self._assets, self._transports
        self._place(config)
        return self._close_left(before, {**self._transports, **transports}, at, CLOSED_BY_RELOAD)

    def close_unconfigured(self, at: datetime | None = None) -> Update:
        """At start: clear the persisted faults of sensors no longer on that asset."""
        return self._close_left(self._assets, self._transports, at, CLOSED_AT_START)

    def _place(self, config: Config) -> None:
        """Take a (re)loaded configuration: sensor -> asset, fault delays; a sensor seen
        before keeps its raised state, a new one starts from what the store held. A sensor
        removed, or moved to another asset, leaves its state with the old one and takes the
        new asset's (as a restart would find them in the store)."""
        self._assets = {s.id: config.asset(s.asset) for s in config.sensors}
        gw = config.gateway
        self._endpoint_after = config.sensor_faults.endpoint_silent_s
        gateway = AssetRef(gw.id, f"gateway {gw.id}" + (f" ({gw.site})" if gw.site else ""), 1)
        self._endpoints.place(gateway, config.sensor_faults.endpoint_silent_s)
        self._bad_after = {s.id: s.bad_values_fault_s for s in config.sensors}
        self._transports = {
            s.id: "mqtt" if s.mqtt is not None else self._transport for s in config.sensors
        }
        self._stale_after = {s.id: s.mqtt.stale_after_s for s in config.sensors if s.mqtt}
        for flaps in (self._cleared_at, self._ok_since):
            for sid in [sid for sid in flaps if sid not in self._assets]:
                del flaps[sid]
        self._flapping &= self._assets.keys()
        for sid in [s for s in self._raised if s not in self._assets]:
            kept = json.dumps({"raised": self._raised.pop(sid), "values": sid in self._for_values})
            self._saved[fault_key(self._raised_on.pop(sid), sid)] = kept
        for sid, a in self._assets.items():
            was = self._raised_on.get(sid)
            if sid in self._raised and was is not None and was != a.id:
                kept = json.dumps(
                    {"raised": self._raised.pop(sid), "values": sid in self._for_values}
                )
                self._saved[fault_key(was, sid)] = kept
            if sid not in self._raised:
                saved = json.loads(self._saved.get(fault_key(a.id, sid), "{}"))
                self._raised[sid] = bool(saved.get("raised", False))
                self._raised_on[sid] = a.id
                if saved.get("raised") and saved.get("values"):
                    self._for_values.add(sid)

    def _close_left(
        self, before: dict[str, Asset], transports: dict[str, str], at: datetime | None, when: str
    ) -> Update:
        out = Update()
        assets = {a.id: a for a in [*before.values(), *self._assets.values()]}
        for k in sorted(self._saved):
            asset_id, sid = k.split("/")[:2]
            placed = (self._assets[sid].id, ()) if sid in self._assets else None
            if sid.startswith(tuple(PREFIXES.values())):
                # A host's fault open when the agent stopped stays raised (_restore_hosts);
                # one saved by an older version (no host) or for another gateway id is
                # closed: its silence is measured anew, raised again if it lasts.
                if when != CLOSED_AT_START or sid in self._endpoints.raised.values():
                    continue
                reason = "closed at start: the endpoint is watched anew, raised again if silent"
            elif (reason := why_left(asset_id, sid, None, placed, when)) is None:
                continue
            try:
                saved = json.loads(self._saved[k])
            except ValueError:
                continue
            if not isinstance(saved, dict) or not saved.get("raised"):
                continue
            now = at or utc_now()
            ref = asset_ref(assets.get(asset_id), asset_id)
            sref = SensorRef(sid, ALL_CHANNELS, transports.get(sid, self._transport))
            draft = closing_draft(ref, sref, "sensor_fault", 1, saved.get("at"), now, reason)
            out.drafts.append(draft)
            self._saved[k] = out.state[k] = json.dumps({"raised": False, "at": format_ts(now)})
        return out

    def _answering_for(self, health: SensorHealth, faulty: bool) -> float | None:
        """Seconds since the sensor last looked faulty (`faulty`: breaker open, stale, or
        implausible for its bad_after), None unless it answers plausibly right now. A
        single failed poll (state failing) or a moment of implausible values does not
        restart the count: it would never raise a fault itself, and a sensor that misses
        one poll a minute would otherwise be held in fault forever while its readings are
        analysed."""
        sid = health.sensor_id
        if faulty:
            self._ok_since.pop(sid, None)
            return None
        since = self._ok_since.setdefault(sid, self._clock())
        if health.state != "ok" or health.bad_for_s != 0:
            return None
        return self._clock() - since

    def implausible_too_long(self, sensor_id: str, bad_for_s: float) -> bool:
        """Whether `bad_for_s` seconds of implausible values only (flagged: sentinel,
        saturated, stuck...) raise the sensor's fault (its bad_values_fault_s): the one
        condition for the alert and for /healthz's "degraded"."""
        after = self._bad_after.get(sensor_id)
        return after is not None and bad_for_s > 0 and bad_for_s >= after

    def update(self, health: SensorHealth, now: datetime) -> Update:
        """One status observation; a draft only when the fault starts or ends."""
        out = Update()
        asset = self._assets.get(health.sensor_id)
        if asset is None:  # removed by a reload an instant ago
            return out
        sid = health.sensor_id
        raised = self._raised[sid]
        garbage = self.implausible_too_long(sid, health.bad_for_s)
        # Failing with its whole endpoint: that is the endpoint's fault (update_endpoint).
        # Undecided for endpoint_silent_s (the other devices poll every 10 minutes, so no
        # outage is declared and none answers yet): its own fault, not held any longer.
        undecided = health.undecided_for_s
        held = health.with_endpoint and undecided < max(self._endpoint_after, 1e-9)
        down = health.state in ("backoff", "stale") and not held
        answering_for = self._answering_for(health, down or garbage)
        if not raised and (down or garbage):
            transition = "raised"
            cleared_at = self._cleared_at.get(sid)
            if cleared_at is not None and self._clock() - cleared_at < FLAP_WINDOW_S:
                self._flapping.add(sid)
        elif (
            raised
            and answering_for is not None
            and not (
                # A fault for frozen values is not ended by values not yet known to be live
                # (a restart); a silent sensor's first message ends a silence fault.
                health.values_undecided and sid in self._for_values
            )
        ):
            if sid in self._flapping and answering_for < FLAP_CLEAR_HOLD_S:
                return out  # back for a moment only, as before: the episode goes on
            transition = "cleared"
            self._cleared_at[sid] = self._clock()
        else:
            return out
        self._raised[health.sensor_id] = transition == "raised"
        for_values = transition == "raised" and garbage and not down
        if for_values:
            self._for_values.add(sid)
        else:
            self._for_values.discard(sid)
        self._saved.pop(fault_key(asset.id, health.sensor_id), None)  # superseded
        saved: dict[str, object] = {"raised": transition == "raised", "at": format_ts(now)}
        if for_values:
            saved["values"] = True
        out.state[fault_key(asset.id, health.sensor_id)] = json.dumps(saved)
        evidence: dict[str, object] = {
            "consecutive_failures": health.consecutive_failures,
            "last_error": health.last_error,
            "last_ok_at": format_ts(health.last_ok_at) if health.last_ok_at else None,
        }
        if health.state == "stale":
            evidence["silent_for_s"] = round(health.silent_for_s, 1)
        if transition == "raised" and undecided > 0:
            # No other device behind its endpoint has answered since (they poll slower):
            # whether the endpoint is silent too is not known yet.
            evidence["endpoint_unconfirmed_for_s"] = round(undecided, 1)
        if garbage and not down:
            evidence["implausible_values"] = list(health.last_bad)
            evidence["implausible_for_s"] = round(health.bad_for_s, 1)
        if sid in self._flapping:
            evidence["flapping"] = True  # raised again soon after a clear
            if transition == "cleared":
                evidence["answering_for_s"] = round(answering_for or 0.0, 1)
                self._flapping.discard(sid)
        if transition == "raised" and garbage and not down:
            metric, value = "implausible_values_seconds", health.bad_for_s
            threshold = self._bad_after[health.sensor_id]
            reason = "the sensor answers implausible values: the machine is not watched"
            if any(f.endswith(":saturated") for f in health.last_bad):
                # At its full scale: most often the machine shakes beyond the sensor's
                # range, the worst case a reliability engineer can be told is "garbage".
                reason = (
                    "the sensor is at its full scale (saturated): the vibration may exceed its"
                    " measuring range, check the machine; its readings are not analysed"
                )
            elif health.last_bad and all(f.endswith(":stuck") for f in health.last_bad):
                # drivers.stuck: plausible numbers, but one exact value over and over
                reason = "the sensor repeats one exact value (frozen): the machine is not watched"
        elif health.sensor_id in self._stale_after:
            metric, value = "seconds_without_message", health.silent_for_s
            threshold = self._stale_after[health.sensor_id]
            reason = "no messages from this sensor: the machine is not watched"
        else:
            metric, value = "consecutive_poll_failures", float(health.consecutive_failures)
            threshold = self._threshold
            reason = "no readings from this sensor: the machine is not watched"
        sensor = SensorRef(health.sensor_id, ALL_CHANNELS, self._transports[health.sensor_id])
        why = reason if transition == "raised" else "sensor answers again"
        out.drafts.append(
            fault_draft(AssetRef(asset.id, asset.name, asset.tier), sensor, transition, now,
                         (metric, round(value, 3), threshold), why, evidence)
        )  # fmt: skip
        return out

    @property
    def endpoint_silent_s(self) -> float:
        """sensor_faults.endpoint_silent_s: how long a group's silence is waited for."""
        return self._endpoint_after

    @property
    def endpoint_faults(self) -> int:
        """Endpoint faults raised (for /metrics)."""
        return self._endpoints.raised_total

    def close_unwatched(self, watched: Collection[str], now: datetime) -> Update:
        """Clear the fault of a host no longer watched (agent.endpoint_faults)."""
        return self._endpoints.close_unwatched(watched, now)

    def update_endpoint(self, health: EndpointHealth, now: datetime) -> Update:
        """One host's (network's, broker's) endpoints observed (agent.endpoint_faults)."""
        return self._endpoints.update(health, now)
