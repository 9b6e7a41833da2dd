"""The configuration file's shape: pydantic models that forbid unknown keys.

Every model is frozen: runtime code receives these objects and never a raw dict.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from agent.config._base import _ID_PATTERN, Id, _Model
from agent.config._delivery import MAX_UPLINKS, Summaries, Uplink, uplink_names
from agent.config._hosts import Host, ListenHost
from agent.config._mqtt import Broker, MqttSource
from drivers.reading import FEATURE_NAMES
from drivers.stuck import (
    DEFAULT_FEATURES,
    DEFAULT_MIN_DURATION_S,
    DEFAULT_MIN_READINGS,
    WAVEFORM,
    StuckRule,
)

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as "512MiB" or "2GB"."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MiB or 2GB")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ValueError("expected a size such as 512MiB or 2GB")


class Gateway(_Model):
    id: Id
    site: str | None = None


# Velocity RMS (mm/s) under which a reading is of a machine that is not running: a
# vibration sensor's noise and the ambient vibration of an isolated machine at standstill
# are about 0.01-0.03 mm/s, while a running machine, even a slow, well-balanced one, shows
# 0.15 mm/s and more (ISO 10816-1's zone A of the smallest machines ends at 0.71 mm/s): a
# third of that, so the slow machine's quieter readings still count as running. (0.1 took
# a FEMTO rig snapshot of 0.076 mm/s at a tenth of its neighbours' level, a dropout,
# for a stop; it is as well learned.)
RUNNING_ABOVE_MM_S = 0.05


class _Machine(_Model):
    """What every machine block has: when the machine counts as running."""

    # A reading under it is of a stopped machine: it never forms the channel's baseline (a
    # gateway commissioned during a planned stop waits for the machine to run), and it
    # neither raises nor clears an alert. 0: every reading counts as running.
    running_above_mm_s: float = Field(default=RUNNING_ABOVE_MM_S, ge=0, le=10)


class Iso10816_3(_Machine):
    """ISO 10816-3 / 20816-3: group 1 (300 kW-50 MW) or 2 (15-300 kW), rigid or flexible."""

    standard: Literal["iso10816-3"]
    group: Literal[1, 2]
    foundation: Literal["rigid", "flexible"]
    rpm: float = Field(gt=0, le=100_000)


class Iso10816_1(_Machine):
    """ISO 10816-1 machine classes I-IV."""

    standard: Literal["iso10816-1"]
    class_: Literal["I", "II", "III", "IV"] = Field(alias="class")
    rpm: float = Field(gt=0, le=100_000)


class ZoneLimits(_Model):
    """Explicit zone boundaries, velocity RMS in mm/s: A/B, B/C, C/D."""

    ab: float = Field(gt=0)
    bc: float = Field(gt=0)
    cd: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> ZoneLimits:
        if not self.ab < self.bc < self.cd:
            raise ValueError("zone limits must rise: ab < bc < cd")
        return self


class ExplicitLimits(_Machine):
    standard: Literal["limits"]
    limits: ZoneLimits
    rpm: float = Field(gt=0, le=100_000)


Machine = Annotated[Iso10816_3 | Iso10816_1 | ExplicitLimits, Field(discriminator="standard")]


class Bearing(_Model):
    """Rolling-element bearing geometry, for the fault frequencies."""

    balls: int = Field(ge=3, le=100)
    ball_mm: float = Field(gt=0)
    pitch_mm: float = Field(gt=0)
    contact_deg: float = Field(default=0.0, ge=0, lt=90)

    @model_validator(mode="after")
    def _balls_inside_the_pitch_circle(self) -> Bearing:
        # The fault frequencies need it; without this check such a file passed `check`
        # and every waveform of the asset then failed in the analysis.
        if not self.ball_mm < self.pitch_mm:
            raise ValueError(
                f"ball_mm ({self.ball_mm:g}) must be smaller than pitch_mm ({self.pitch_mm:g}): "
                "the pitch diameter runs through the balls' centres"
            )
        return self


class Failure(_Model):
    """What "failed" means for time-to-failure: a metric reaching a threshold."""

    metric: str = "velocity_rms_mm_s"
    threshold: float | None = Field(default=None, gt=0)  # None: the machine's C/D boundary


class Alerting(_Model):
    """Alert lifecycle tuning."""

    debounce: int = Field(default=3, ge=1, le=100)  # consecutive readings to raise or clear
    hysteresis: float = Field(default=0.1, ge=0, lt=1)  # clear below threshold x (1 - h)
    # Readings after install or repair that form the channel's healthy baseline.
    baseline_readings: int = Field(default=60, ge=10, le=100_000)
    # After a clear, the same alert may raise again only this many seconds later.
    resend_holdoff_s: float = Field(default=600.0, ge=0, le=30 * 86400)
    # Hysteresis in time: an active alert clears only after its value has stayed below the
    # clear level this many seconds, so a level that dips and returns is one episode.
    clear_hold_s: float = Field(default=1800.0, ge=0, le=30 * 86400)
    # Prior on the growth of ln(failure metric) per day after degradation onset;
    # None: reach the failure threshold in one planning horizon.
    prior_rate_per_day: float | None = Field(default=None, gt=0)
    # Spread of that prior (ln units). The default is vague (x20 per sd): without a configured
    # rate the planning-horizon guess must not outweigh a clear trend in the data.
    prior_log_sd: float = Field(default=3.0, gt=0, le=5)
    # Width of one trend-history bin, seconds of reading time; None: 60. The time-to-failure
    # fit needs a few bins after onset, so a machine that fails within minutes (a demo, a
    # test bench) needs shorter bins.
    trend_bin_s: float | None = Field(default=None, ge=1, le=86_400)


# Hours of a life, an L10, a Weibull scale or an age: at most ~114 years. With shapes in
# [MIN_SHAPE, MAX_SHAPE] every power of such hours stays a finite float (no inf/NaN bounds).
MAX_LIFE_HOURS = 1_000_000.0
MIN_SHAPE, MAX_SHAPE = 0.1, 20.0
MIN_INSTALLED_YEAR = 1900
_ISO_EXAMPLE = "2025-03-01T06:00:00Z"


class WeibullLife(_Model):
    """A catalogue life distribution: Weibull shape and scale (63.2 % have failed by then)."""

    shape: float = Field(ge=MIN_SHAPE, le=MAX_SHAPE)
    scale_hours: float = Field(gt=0, le=MAX_LIFE_HOURS)


class Reliability(_Model):
    """The asset's life prior and age, for time to failure at every stage of its life."""

    # Fleet history is kept per class; an id (pattern on the field, so messages can explain it).
    class_: str | None = Field(default=None, alias="class", pattern=_ID_PATTERN)
    lives_hours: tuple[float, ...] | None = Field(default=None, min_length=1, max_length=10_000)
    weibull: WeibullLife | None = None
    l10_hours: float | None = Field(default=None, gt=0, le=MAX_LIFE_HOURS)
    # for lives_hours and l10_hours
    shape: float | None = Field(default=None, ge=MIN_SHAPE, le=MAX_SHAPE)
    installed_at: datetime | None = None  # UTC when it carries no offset
    age_hours: float | None = Field(default=None, ge=0, le=MAX_LIFE_HOURS)

    @field_validator("lives_hours")
    @classmethod
    def _positive_lives(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        bad = [x for x in v or () if not 0 < x <= MAX_LIFE_HOURS]
        if bad:
            raise ValueError(
                f"every life must be hours greater than 0 and at most {MAX_LIFE_HOURS:.0f} "
                f"({bad[0]:g} is not)"
            )
        return v

    @field_validator("installed_at", mode="before")
    @classmethod
    def _iso_time(cls, v: object) -> object:
        # A bare number would be read as Unix seconds: `installed_at: 2025` is 1970.
        if isinstance(v, int | float):
            raise ValueError(f"expected an ISO-8601 time such as {_ISO_EXAMPLE}, in quotes")
        if isinstance(v, str):
            try:
                return datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"expected an ISO-8601 time such as {_ISO_EXAMPLE}") from None
        return v

    @field_validator("installed_at")
    @classmethod
    def _plausible_time(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.year < MIN_INSTALLED_YEAR:
            raise ValueError(
                f"expected a time in {MIN_INSTALLED_YEAR} or later (the part's installation)"
            )
        return v

    @model_validator(mode="after")
    def _one_prior_one_age(self) -> Reliability:
        problems = []
        given = [k for k in ("lives_hours", "weibull", "l10_hours") if getattr(self, k)]
        if len(given) > 1:
            problems.append(
                f"give one life prior, not {' and '.join(given)}: lives_hours (completed lives "
                "of comparable machines), weibull {shape, scale_hours} or l10_hours"
            )
        if self.shape is not None and self.weibull is not None:
            problems.append("weibull carries its own shape; remove reliability.shape")
        if self.installed_at is not None and self.age_hours is not None:
            problems.append("give installed_at or age_hours, not both")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def installed_at_utc(self) -> datetime | None:
        at = self.installed_at
        if at is None or at.tzinfo is not None:
            return at
        return at.replace(tzinfo=UTC)


class Asset(_Model):
    id: Id
    name: str = ""
    tier: Literal[1, 2, 3] = 2
    machine: Machine
    bearing: Bearing | None = None
    failure: Failure = Failure()
    # At most ten years, as a work order's lead (due_without_estimate_hours): 1e308 was
    # accepted, and every estimate then escalated as "within the planning horizon".
    planning_horizon_hours: float = Field(default=168, gt=0, le=87_600)
    alerting: Alerting = Alerting()
    reliability: Reliability | None = None


class ModbusTcp(_Model):
    """A sensor's Modbus access: its own TCP endpoint (host), or a device on a bus."""

    host: Host | None = None
    port: int = Field(default=502, ge=1, le=65535)
    bus: Id | None = None  # the id of an entry under buses
    device_id: int = Field(default=1, ge=0, le=247)
    profile: str = "banner-qm30vt2"
    timeout_s: float = Field(default=0.5, gt=0, le=30)
    # Longest wait between probes of a device that stopped answering (its breaker is open).
    backoff_max_s: float = Field(default=30.0, ge=0.5, le=3600)

    @model_validator(mode="after")
    def _one_endpoint(self) -> ModbusTcp:
        if (self.host is None) == (self.bus is None):
            raise ValueError(
                "give host (the device's own TCP endpoint) or bus (the id of a serial line "
                "or gateway under buses), not both and not neither"
            )
        if self.bus is not None and "port" in self.model_fields_set:
            raise ValueError("port belongs to the bus entry, not to a device on a bus")
        if self.bus is not None and self.device_id == 0:
            # On a serial line (and behind a TCP-to-RTU gateway) 0 is the broadcast
            # address: every device obeys it and none answers, so each read times out.
            raise ValueError(
                "device_id 0 is the Modbus broadcast address on a shared line: no device "
                "answers it; give the device's own address, 1 to 247"
            )
        return self


class TcpBus(_Model):
    """A Modbus TCP endpoint whose devices share one line (a TCP-to-RTU gateway)."""

    host: Host
    port: int = Field(default=502, ge=1, le=65535)
    # Connections the gateway serves at once; 1 = one request at a time (DXM, MGate).
    max_connections: int = Field(default=1, ge=1, le=16)
    # Speed of the RS-485 line behind the gateway; only for the capacity plan.
    line_baudrate: int | None = Field(default=None, ge=300, le=4_000_000)
    # After a device times out, wait up to this long for the gateway's late answer or its
    # exception 11 before the next request (the gateway holds its line until then).
    settle_s: float = Field(default=1.0, ge=0, le=30)


class RtuBus(_Model):
    """A local serial port (RS-485) with Modbus RTU devices."""

    port: str  # e.g. /dev/ttyUSB0 or /dev/serial/by-id/...
    baudrate: int = Field(default=19200, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stop_bits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    # Silence before each request; None: 3.5 characters (1.75 ms above 19200 baud).
    inter_frame_s: float | None = Field(default=None, ge=0, le=1)
    # After a timeout or a garbled answer, discard bytes until the line is this quiet.
    late_flush_s: float = Field(default=0.05, ge=0, le=2)
    # Least time between a device's answer and the next request to it: a device that
    # answers twice (flaky slave, repeater) cannot have its repeat taken as the next answer.
    repeat_guard_s: float = Field(default=0.02, ge=0, le=1)

    @field_validator("port")
    @classmethod
    def _serial_device(cls, v: str) -> str:
        # Caught here so `check` says it at its line; at run time the sensors on the
        # line only failed with "cannot open" again and again (and a sensor_fault).
        problem = serial_port_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v


class Bus(_Model):
    """One scheduled resource that several devices share: a serial line or a gateway."""

    id: Id
    tcp: TcpBus | None = None
    rtu: RtuBus | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Bus:
        if (self.tcp is None) == (self.rtu is None):
            raise ValueError("give tcp (a gateway endpoint) or rtu (a serial port), not both")
        return self


class StuckValues(_Model):
    """When a value that repeats exactly is a frozen sensor (drivers.stuck): a
    transmitter stuck at its last value, a gateway serving a cached register. Its
    readings are then not analysed and its bad_values_fault_s runs towards a
    sensor_fault; the first reading that moves clears it."""

    enabled: bool = True
    # The same exact value this many readings in a row (more for a coarse value that
    # has repeated before: learned from its own history) ...
    min_readings: int = Field(default=DEFAULT_MIN_READINGS, ge=2, le=1_000_000)
    # ... over at least this long.
    min_duration_s: float = Field(default=DEFAULT_MIN_DURATION_S, ge=0, le=30 * 86_400)
    # Features judged (canonical names, or "waveform": a snapshot's samples, byte for byte).
    features: tuple[str, ...] = DEFAULT_FEATURES

    @field_validator("features")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        known = FEATURE_NAMES | {WAVEFORM}
        unknown = [f for f in v if f not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown feature {unknown[0]!r}{hint}; known: {sorted(known)}")
        return v

    def rule(self, at_rest_below_mm_s: float = 0.0) -> StuckRule | None:
        """The detector's rule (None: not judged); under ``at_rest_below_mm_s`` of
        velocity RMS a channel is a stopped machine, not judged."""
        if not self.enabled or not self.features:
            return None
        return StuckRule(
            self.min_readings,
            self.min_duration_s,
            frozenset(self.features),
            at_rest_below_mm_s,
        )


class Sensor(_Model):
    id: Id
    asset: Id
    modbus: ModbusTcp | None = None
    mqtt: MqttSource | None = None
    poll_interval_s: float = Field(default=1.0, ge=0.05, le=3600)
    channels: tuple[str, ...] = ("z", "x")
    # Seconds of implausible values (sentinels, out of range, NaN, all zero) in a row
    # before a sensor_fault alert is raised.
    bad_values_fault_s: float = Field(default=30.0, ge=0, le=86_400)
    # This sensor's stuck-value rule: the keys given replace sensor_faults.stuck's.
    stuck: StuckValues | None = None

    @model_validator(mode="after")
    def _timeout_fits(self) -> Sensor:
        if (self.modbus is None) == (self.mqtt is None):
            raise ValueError(
                "give modbus (a polled device) or mqtt (a subscription), not both and not neither"
            )
        if self.modbus is not None and self.modbus.timeout_s >= self.poll_interval_s:
            raise ValueError(
                f"modbus.timeout_s ({self.modbus.timeout_s}) must be shorter than "
                f"poll_interval_s ({self.poll_interval_s}); lower modbus.timeout_s or raise "
                "poll_interval_s"
            )
        return self


_SIZE_JSON_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 2**20},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B)?\s*$"},
    ],
    "description": "bytes, or a size such as 512MiB or 2GB",
}


def serial_port_problem(port: str) -> str | None:
    """What is wrong with an RTU bus's serial port, or None. A port that does not exist
    now is fine (a USB adapter plugged in later); one that exists must be a device."""
    if not port.startswith("/"):
        return (
            "expected the serial device's full path, such as /dev/ttyUSB0 or "
            "/dev/serial/by-id/... (ls /dev/serial/by-id/ lists the adapters)"
        )
    try:
        mode = os.stat(port).st_mode
    except (OSError, ValueError):
        return None  # absent now, or not ours to look at: opening it says why
    if stat.S_ISCHR(mode):
        return None
    what = "a directory" if stat.S_ISDIR(mode) else "a file, not a serial device"
    return f"{port} is {what}: give the serial device, such as /dev/ttyUSB0"


_WINDOWS_PATH = re.compile(r"^[A-Za-z]:|\\")


def local_path_problem(path: Path, example: str) -> str | None:
    """What is wrong with a path every command must find alike (the store, the control
    socket), or None: a Windows path (copied from a laptop; on Linux it is a relative
    file name with backslashes in it) or a relative one, which names another file for each
    folder a command runs in (the service runs in /, an operator's `status` in his own)."""
    text = str(path)
    if _WINDOWS_PATH.search(text):
        return (
            "this is a Windows path; the gateway runs Linux, where paths use / and start "
            f"at /: give an absolute path such as {example}"
        )
    if not path.is_absolute():
        return (
            "a relative path names another file for each folder a command runs in (the "
            f"service runs in /): give an absolute path such as {example}"
        )
    return None


def _is_dir(path: Path) -> bool:
    """Whether path is a directory; False when this user may not look (Python 3.11's
    Path.is_dir raises PermissionError then)."""
    try:
        return path.is_dir()
    except OSError:
        return False


class Store(_Model):
    path: Path
    max_bytes: Annotated[int, WithJsonSchema(_SIZE_JSON_SCHEMA)] = 2 * 2**30

    @field_validator("path")
    @classmethod
    def _not_a_directory(cls, v: Path) -> Path:
        problem = local_path_problem(v, "/var/lib/edge-agent/outbox.db")
        if problem:
            raise ValueError(problem)
        # Caught here so `edge-agent check` says it; SQLite would say "disk I/O error".
        # A folder this user may not enter (the service's state directory, read by an
        # operator's `status`) cannot be looked into: that is not this file's error.
        if _is_dir(v):
            raise ValueError(
                f"{v} is a directory: name the database file inside it (e.g. {v / 'outbox.db'})"
            )
        return v

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, v: object) -> int:
        n = parse_size(v)
        if n < 1 * 2**20:
            raise ValueError("max_bytes must be at least 1MiB")
        return n


class SensorFaults(_Model):
    """How sensor faults are raised beyond each sensor's own settings."""

    # A whole endpoint (host:port, gateway, serial line) whose devices all fail at once
    # raises one fault for its host once it has been silent this long; a shorter
    # silence raises nothing (counted in /metrics), its devices' own faults held meanwhile.
    # An MQTT broker link down likewise: one fault for the broker once down this long
    # (and as long as its sensors' shortest stale_after_s).
    endpoint_silent_s: float = Field(default=30.0, ge=0, le=86_400)
    # Values that repeat exactly (a frozen sensor): every sensor's rule unless its own
    # `stuck:` overrides some keys.
    stuck: StuckValues = StuckValues()


class Health(_Model):
    """The read-only TCP endpoint (/healthz, /metrics); never a state-changing operation."""

    host: ListenHost = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)  # 0: pick a free port
    # Binding beyond loopback must be asked for explicitly (checked in _crossref).
    expose: bool = False


# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH_BYTES = 107


class Control(_Model):
    """The Unix socket that carries every state-changing operation (maintenance)."""

    socket: Path = Path("/run/edge-agent/control.sock")
    # Group that may use the socket (mode 0660); None: the agent's own group only.
    group: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")] | None = None

    @field_validator("socket")
    @classmethod
    def _fits(cls, v: Path) -> Path:
        problem = local_path_problem(v, "/run/edge-agent/control.sock")
        if problem:
            raise ValueError(problem)
        if len(os.fsencode(v)) > _MAX_SOCKET_PATH_BYTES:
            raise ValueError(
                f"socket path is {len(os.fsencode(v))} bytes; a Unix socket path may have at "
                f"most {_MAX_SOCKET_PATH_BYTES}: choose a shorter path"
            )
        return v


class Config(_Model):
    gateway: Gateway
    assets: tuple[Asset, ...] = Field(min_length=1)
    sensors: tuple[Sensor, ...] = Field(min_length=1)
    uplinks: tuple[Uplink, ...] = Field(default=(), max_length=MAX_UPLINKS)
    store: Store
    health: Health = Health()
    control: Control = Control()
    sensor_faults: SensorFaults = SensorFaults()
    summaries: Summaries | None = None
    buses: tuple[Bus, ...] = ()
    # Folder of extra register profiles (*.yaml, one per sensor model); relative to this file.
    profiles_dir: Path | None = None
    # Brokers MQTT sensors subscribe through; folder of extra payload decoders (*.yaml).
    mqtt: tuple[Broker, ...] = ()
    decoders_dir: Path | None = None

    def broker(self, broker_id: str) -> Broker:
        for b in self.mqtt:
            if b.id == broker_id:
                return b
        raise KeyError(broker_id)

    def bus(self, bus_id: str) -> Bus:
        for b in self.buses:
            if b.id == bus_id:
                return b
        raise KeyError(bus_id)

    def asset(self, asset_id: str) -> Asset:
        for a in self.assets:
            if a.id == asset_id:
                return a
        raise KeyError(asset_id)

    def stuck_rule(self, sensor: Sensor) -> StuckRule | None:
        """The sensor's stuck-value rule: its own keys over sensor_faults.stuck."""
        rule = self.sensor_faults.stuck
        if sensor.stuck is not None:
            given = {k: getattr(sensor.stuck, k) for k in sensor.stuck.model_fields_set}
            rule = rule.model_copy(update=given)
        return rule.rule(self.asset(sensor.asset).machine.running_above_mm_s)

    def uplink_names(self) -> tuple[str, ...]:
        """Each uplink's name: as given, else its kind (only one uplink may then have it)."""
        return uplink_names(self.uplinks)
