"""What a settings change invalidates in a channel's learned state (a reload or a restart).

A channel learns two things, from different inputs:
- the baseline (health index over accel RMS / HF accel RMS, else velocity RMS, and the
  velocity median behind the ISO 20816-1 alarm): learned from how the machine vibrates at
  its speed, as this sensor reports it. A new speed, a new register profile / decoder
  (other scaling; not one under another name that reads the same values: a copy), a
  profile file edited under the same name so that it reads other values
  (its rows' addresses, types, byte orders, scales, offsets, features or channels; not its
  description or valid ranges), or another physical device at the sensor id (a new Modbus
  address, MQTT broker, topic or key: a replaced sensor) makes it meaningless; nothing else
  does (a host written otherwise is the same: localhost or 127.0.0.1, capitals, a trailing
  dot, and a name and an address it resolves to when the reload or the start looks the
  name up (agent.host_names, bounded); a name that did not resolve then is not known to
  be another device: kept, and the log says so). A payload decoder file edited
  under the same name counts the same way (its fields' paths, scales, offsets, features
  and channels, a waveform's rate, axes and scale; not its description, units, valid
  ranges, sentinels or the order of its fields).
- the failure metric's binned history (time to failure): the failure metric's values in
  bins of trend_bin_s. A new metric, bin width or bearing geometry (the envelope features
  depend on it) makes it meaningless; the baseline and the degradation onset stay.

The Basis a channel learned under is saved with its model, so a restart with a
configuration edited while the agent was stopped applies the same rules as a live reload.

Relearning a baseline while the machine is degraded would learn the degradation as normal,
and the open trend alert would later clear as if the machine had recovered. So a relearn
closes that alert at once, with a record that says why (agent.analysis.monitor).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from agent.config import Asset, Config, Sensor

if TYPE_CHECKING:  # types only: `edge-agent replay` starts without the profile loader (YAML)
    from drivers.payloads import Decoder, DecoderLibrary
    from drivers.profiles import Profile, ProfileLibrary

__all__ = [
    "Basis",
    "BasisChange",
    "Resolved",
    "basis_change",
    "basis_of",
    "decoder_digest",
    "device",
    "host_key",
    "host_names",
    "names_to_compare",
    "profile_digest",
    "reading_source",
    "same_device",
    "source_digests",
]


@dataclass(frozen=True, slots=True)
class BasisChange:
    """What a channel must relearn after a settings change; each a human line per cause.

    Attributes:
        baseline: causes that invalidate the baseline (empty: it is kept).
        history: causes that invalidate the failure metric's history (and not the
            baseline); a relearned baseline rebuilds the history too.
        readings: the causes among `baseline` that make the channel's readings another
            sensor's, or another conversion's (a replaced sensor; another or an edited
            profile / decoder): an alert judged on the old readings says nothing of the
            new ones.
    """

    baseline: tuple[str, ...] = ()
    history: tuple[str, ...] = ()
    readings: tuple[str, ...] = ()

    @property
    def relearn(self) -> str | None:
        """What changed, for a record ("machine.rpm 1480 -> 990"); None: nothing."""
        return "; ".join(self.baseline) or None


@dataclass(frozen=True, slots=True)
class Basis:
    """The settings a channel's model was learned under (saved with the model).

    Attributes:
        rpm: machine.rpm.
        source: reading_source (register profile or decoder).
        device: device (the physical sensor's address).
        metric: failure.metric.
        trend_bin_s: alerting.trend_bin_s as configured (None: the agent's default).
        bearing: (balls, ball_mm, pitch_mm, contact_deg), None without one.
        source_digest: profile_digest / decoder_digest of the register profile or payload
            decoder the source names; None when unknown (a model saved before digests
            were kept).
    """

    rpm: float
    source: str
    device: str
    metric: str
    trend_bin_s: float | None
    bearing: tuple[float, ...] | None
    source_digest: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> Basis | None:
        """The saved basis; None when absent or unreadable (a store older than it)."""
        if not isinstance(data, Mapping):
            return None
        try:
            bearing = data["bearing"]
            return cls(
                rpm=float(data["rpm"]),
                source=str(data["source"]),
                device=str(data["device"]),
                metric=str(data["metric"]),
                trend_bin_s=None if data["trend_bin_s"] is None else float(data["trend_bin_s"]),
                bearing=None if bearing is None else tuple(float(x) for x in bearing),
                source_digest=_optional_str(data.get("source_digest")),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def profile_digest(profile: Profile) -> str:
    """A short hash of what in a register profile turns registers into feature values:
    each used row's place, type, byte order, scale, offset, feature and channel. Its name,
    model, description, ignored rows and valid ranges (quality flags, not values) are not
    in it: editing those relearns nothing."""
    rows = [
        (r.function_code, r.address, r.dtype.name, r.order, r.scale, r.offset, r.feature,
         r.channel)
        for r in profile.registers
    ]  # fmt: skip
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:16]


# What in each decoder format turns a payload into values (descriptions, units, valid
# ranges, sentinels, limits and the time and key fields do not change a value).
_DECODER_VALUES = {
    "json-features": ("roots",),
    "waveform-json": ("rate", "axes", "encoding", "scale", "axis_names"),
    "raw-int16": ("data_offset", "sample_rate", "sample_count", "axis_count", "scale",
                  "axis_names", "layout"),
}  # fmt: skip


def decoder_digest(decoder: Decoder) -> str:
    """A short hash of what in a payload decoder turns a message into feature values (see
    _DECODER_VALUES; json-features: each field's path, scale, offset, feature and channel;
    raw-int16: each header field's place and type). Editing anything else relearns
    nothing."""
    kind = decoder.kind
    parts: list[object] = [kind, *(getattr(decoder, a) for a in _DECODER_VALUES.get(kind, ()))]
    # Sorted: the order of the fields (one per channel and feature) or of the header's
    # fields (found by name) changes no value; a file tidied up must not relearn.
    if kind == "json-features":  # a raw-int16 decoder's `fields` is a method (its header's)
        parts += sorted((f.channel, f.feature, f.path, f.scale, f.offset) for f in decoder.fields)
    if kind == "raw-int16":
        parts += sorted((h.name, h.offset, h.type) for h in decoder.header)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def source_digests(
    config: Config, library: ProfileLibrary, decoders: DecoderLibrary | None = None
) -> dict[str, str]:
    """Sensor id -> profile_digest of its register profile (Modbus sensors whose profile
    the library has; a checked configuration names no other), and decoder_digest of its
    payload decoder (MQTT sensors, when `decoders` is given)."""
    out: dict[str, str] = {}
    for s in config.sensors:
        with contextlib.suppress(ValueError):  # an unknown name (DataFileError)
            if s.modbus is not None:
                out[s.id] = profile_digest(library.get(s.modbus.profile))
            elif s.mqtt is not None and decoders is not None:
                out[s.id] = decoder_digest(decoders.get(s.mqtt.decoder))
    return out


def reading_source(sensor: Sensor) -> str:
    """What turns the device's data into features: its register profile or its decoder."""
    if sensor.mqtt is not None:
        return f"mqtt.decoder {sensor.mqtt.decoder}"
    assert sensor.modbus is not None
    return f"modbus.profile {sensor.modbus.profile}"


def device(sensor: Sensor) -> str:
    """The physical sensor behind the id: its Modbus address (host, port and device id, or
    bus and device id) or its MQTT subscription (broker, topic, and key when shared)."""
    if (q := sensor.mqtt) is not None:
        key = f" key {q.key or sensor.id}" if q.key_from is not None else ""
        return f"mqtt broker {q.broker} topic {q.topic}{key}"
    m = sensor.modbus
    assert m is not None
    where = f"bus {m.bus}" if m.bus is not None else f"tcp {m.host}:{m.port}"
    return f"modbus {where} device_id {m.device_id}"


def basis_of(asset: Asset, sensor: Sensor, digest: str | None = None) -> Basis:
    """The basis of a channel of `sensor` on `asset` as configured; `digest`: its register
    profile's or payload decoder's digest (see source_digests)."""
    b = asset.bearing
    return Basis(
        rpm=float(asset.machine.rpm),
        source=reading_source(sensor),
        device=device(sensor),
        metric=asset.failure.metric,
        trend_bin_s=asset.alerting.trend_bin_s,
        bearing=None if b is None else (b.balls, b.ball_mm, b.pitch_mm, b.contact_deg),
        source_digest=digest,
    )


_TCP = re.compile(r"^modbus tcp (?P<host>.+):(?P<port>\d+) (?P<rest>device_id .*)$")
# This machine under its usual names: a device the gateway serves itself (a protocol
# converter) is the same whichever the configuration names it by.
_LOOPBACK = {"localhost", "localhost.localdomain", "ip6-localhost", "127.0.0.1", "::1"}


def host_key(host: str) -> str:
    """A host as compared: case, a trailing dot, brackets and IP spelling are cosmetic.
    Names are not resolved (blocking, and a DHCP address is no identity)."""
    h = host.strip().strip("[]").rstrip(".").lower()
    with contextlib.suppress(ValueError):  # a name, not an address
        h = ipaddress.ip_address(h).compressed
    return "loopback" if h in _LOOPBACK else h


Resolved = Mapping[str, frozenset[str]]
"""A host name (as host_key spells it) -> the addresses it resolved to (each as host_key
spells it), looked up without blocking before a reload or a start (agent.host_names)."""


def _addresses(host: str, resolved: Resolved | None) -> frozenset[str]:
    """The addresses a host names: an address (or this machine's loopback) itself, a name
    what it resolved to (nothing when it did not, or was not looked up)."""
    key = host_key(host)
    if key == "loopback" or _is_address(key):
        return frozenset({key})
    return frozenset(resolved.get(key, ())) if resolved is not None else frozenset()


def host_names(devices: Iterable[str]) -> set[str]:
    """The host names (not addresses) in device() strings: what a reload resolves so that
    a device written by its name, then by its address, is known to be the same."""
    out = set()
    for d in devices:
        m = _TCP.match(d)
        if m is not None:
            key = host_key(m["host"])
            if key != "loopback" and not _is_address(key):
                out.add(key)
    return out


def names_to_compare(pairs: Iterable[tuple[str, str]]) -> set[str]:
    """The host names to look up for these (before, after) device() strings: only where
    the host alone is written otherwise (the same port and device id) and is a name on
    either side; an unchanged host needs no lookup (a start with the DNS down waits for
    nothing when no device was rewritten)."""
    out: set[str] = set()
    for before, after in pairs:
        b, a = _TCP.match(before), _TCP.match(after)
        if b is None or a is None or (b["port"], b["rest"]) != (a["port"], a["rest"]):
            continue
        if host_key(b["host"]) != host_key(a["host"]):
            out |= host_names([before, after])
    return out


def same_device(before: str, after: str, resolved: Resolved | None = None) -> bool:
    """Whether two device() strings name the same physical sensor (saved strings too):
    the same port and device id at the same host, written either way, or at a name and an
    address it resolves to (`resolved`: the names looked up now; one that is not in it,
    not resolved, is taken as the same: unknown is no replacement)."""
    if before == after:
        return True
    b, a = _TCP.match(before), _TCP.match(after)
    if b is None or a is None or (b["port"], b["rest"]) != (a["port"], a["rest"]):
        return False
    if host_key(b["host"]) == host_key(a["host"]):
        return True
    was, now = _addresses(b["host"], resolved), _addresses(a["host"], resolved)
    if resolved is not None and not (was and now):
        # A name that did not resolve now (DNS down or slow, the lookup's 2 s cap): not
        # known to be another device, so its episodes are kept (agent.host_names logs
        # which); closing them would raise every fault again as new on a bad DNS day.
        return True
    return bool(was & now)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


_UNRESOLVED = "host names are not resolved: one device under its name and its address counts as two"


def _replaced(before: str, after: str, resolved: Resolved | None = None) -> str:
    """The cause line of another device at the sensor id. A host written as a name on one
    side says what the name resolved to (or that it did not, or was not looked up): the
    integrator sees why the same device under its address counted as another."""
    line = f"sensor replaced: {before} -> {after}"
    b, a = _TCP.match(before), _TCP.match(after)
    if b is None or a is None or (b["port"], b["rest"]) != (a["port"], a["rest"]):
        return line
    names = sorted(host_names([before, after]))
    if not names:
        return line
    if resolved is None:
        return f"{line} ({_UNRESOLVED})"
    said = [
        f"{n} resolves to {', '.join(sorted(resolved[n]))}"
        if resolved.get(n)
        else f"{n} did not resolve"
        for n in names
    ]
    return f"{line} ({'; '.join(said)})"


def _was(name: str, before: object, after: object) -> str:
    return f"{name} {before} -> {after}"


def basis_change(before: Basis, after: Basis, resolved: Resolved | None = None) -> BasisChange:
    """What a channel learned under `before` must relearn under `after` (`resolved`: the
    host names looked up now, see same_device). Thresholds, zones,
    debounce, holds, horizons, priors and `failure.threshold` invalidate nothing (they are
    not in the basis); `alerting.baseline_readings` applies to a baseline still being
    learned and to the next one (after a repair)."""
    readings: list[str] = []
    known = None not in (before.source_digest, after.source_digest)
    if before.source != after.source:
        # Another name for the same conversion (a profile or decoder copied under a new
        # name, unchanged) reads the same values: nothing to relearn.
        if not known or before.source_digest != after.source_digest:
            readings.append(f"{before.source} -> {after.source}")
    elif known and before.source_digest != after.source_digest:
        # The same name, other values: the file was edited (a scale corrected, a register
        # moved). Unknown on either side (an older saved model): kept, as before.
        readings.append(f"{after.source} edited: it reads other values")
    if not same_device(before.device, after.device, resolved):
        readings.append(_replaced(before.device, after.device, resolved))
    baseline: list[str] = []
    if before.rpm != after.rpm:
        baseline.append(_was("machine.rpm", f"{before.rpm:g}", f"{after.rpm:g}"))
    baseline += readings
    history: list[str] = []
    if before.metric != after.metric:
        history.append(_was("failure.metric", before.metric, after.metric))
    if before.trend_bin_s != after.trend_bin_s:
        history.append(_was("alerting.trend_bin_s", before.trend_bin_s, after.trend_bin_s))
    if before.bearing != after.bearing:
        history.append("bearing geometry changed")
    return BasisChange(tuple(baseline), tuple(history), tuple(readings))
