"""What every payload decoder shares: the message, its decoded form, timestamps, lookups.

A decoder never raises anything but PayloadError (one reason label each), whatever the
bytes: the caller counts the reason and drops the message.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from drivers.errors import PayloadError
from drivers.payloads._sliced_json import loads_sliced
from drivers.reading import Reading, Transport, Waveform

ALL_CHANNELS = "all"  # a value every axis shares (temperature)

# Drop reasons (counted per sensor and reason in /metrics).
TOO_LARGE = "too_large"
MALFORMED = "malformed"  # not UTF-8, not JSON, not an object, a broken binary header
WRONG_TYPE = "wrong_type"
MISSING_FIELD = "missing_field"
BAD_TIMESTAMP = "bad_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
OLD_TIMESTAMP = "old_timestamp"
BAD_WAVEFORM = "bad_waveform"
DROP_REASONS = (
    TOO_LARGE, MALFORMED, WRONG_TYPE, MISSING_FIELD, BAD_TIMESTAMP, FUTURE_TIMESTAMP,
    OLD_TIMESTAMP, BAD_WAVEFORM,
)  # fmt: skip

FUTURE_LIMIT = timedelta(minutes=5)  # clocks of gateways and sensors drift a little
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # before this: a sensor that lost its clock
_MISSING = object()


class Payload:
    """One message body, parsed as JSON at most once (key lookup and decoding share it)."""

    __slots__ = ("_json", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._json: Any = _MISSING

    @classmethod
    def parsed_in_slices(cls, raw: bytes, abandon: threading.Event | None = None) -> Payload:
        """A message body with its JSON parsed now, in short C calls (for a worker thread:
        a single json.loads call would hold the GIL, the event loop with it, for the whole
        body: drivers.payloads._sliced_json); ParseAbandoned once ``abandon`` is set."""
        payload = cls(raw)
        payload._parse(lambda b: loads_sliced(b, _unique_keys, abandon))
        return payload

    @property
    def json(self) -> dict[str, Any]:
        """The body as a JSON object.

        Raises:
            PayloadError: not UTF-8, not JSON, or not an object.
        """
        if self._json is _MISSING:
            self._parse(lambda b: json.loads(b, object_pairs_hook=_unique_keys))
        if isinstance(self._json, PayloadError):
            raise self._json
        return self._json  # type: ignore[no-any-return]

    def _parse(self, loads: Callable[[bytes], Any]) -> None:
        try:
            self._json = loads(self.raw)
        except _DuplicateKey as exc:
            self._json = PayloadError(MALFORMED, f"duplicate key {str(exc)[:80]!r}")
        except (ValueError, RecursionError) as exc:
            self._json = PayloadError(MALFORMED, f"not JSON ({type(exc).__name__})")
        else:
            if not isinstance(self._json, dict):
                got = type(self._json).__name__
                self._json = PayloadError(MALFORMED, f"JSON {got}, expected an object")

    def field(self, path: Sequence[str]) -> Any:
        """The JSON value at a dotted path, or None when absent."""
        return lookup(self.json, path)


class _DuplicateKey(ValueError):
    """A JSON object names one key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when it names a key twice: which of the two values the
    sensor meant is unknown (json keeps the last, other parsers the first), and a reading
    taken from either could raise a false alert."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def lookup(obj: Any, path: Sequence[str]) -> Any:
    """The value at ``path`` in nested mappings, or None when any step is absent."""
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def split_path(text: str) -> tuple[str, ...]:
    """``sensor_data.x`` -> ``("sensor_data", "x")``; the empty string is the root."""
    return tuple(p for p in text.split(".") if p) if text else ()


@dataclass(slots=True)
class Decoded:
    """One message, decoded: features and waveforms by channel, and the measurement time.

    Attributes:
        timestamp: when the sensor measured (UTC); None: use the receive time.
        features: channel -> feature -> value (``all``: shared by every channel).
        flags: channel -> ``feature:reason`` entries of implausible values (left out of
            ``features``).
        waveforms: channel -> samples in g with their sampling rate.
    """

    timestamp: datetime | None = None
    features: dict[str, dict[str, float]] = field(default_factory=dict)
    flags: dict[str, list[str]] = field(default_factory=dict)
    waveforms: dict[str, Waveform] = field(default_factory=dict)

    def channels(self) -> list[str]:
        """Channels with a value or a waveform, in first-seen order, without ``all``."""
        seen = dict.fromkeys([*self.features, *self.flags, *self.waveforms])
        seen.pop(ALL_CHANNELS, None)
        return list(seen)


def to_readings(
    sensor_id: str,
    channels: Sequence[str],
    decoded: Decoded,
    received_at: datetime,
    *,
    transport: Transport = "mqtt",
    received_mono_s: float | None = None,
) -> list[Reading]:
    """One Reading per wanted channel the message carries (shared values added to each).

    ``received_mono_s`` (the monotonic time of ``received_at``) goes with readings stamped
    at receipt; a reading with the sensor's own timestamp keeps that clock alone.

    A channel with a flagged value (its own or a shared one) is quality "bad": the monitor
    skips it, so garbage never reaches severity or trend.
    """
    at = decoded.timestamp or received_at
    mono = None if decoded.timestamp else received_mono_s
    shared = decoded.features.get(ALL_CHANNELS, {})
    shared_flags = decoded.flags.get(ALL_CHANNELS, [])
    out = []
    for channel in channels:
        own = decoded.features.get(channel)
        wave = decoded.waveforms.get(channel)
        flags = (*decoded.flags.get(channel, ()), *shared_flags)
        if own is None and wave is None and channel not in decoded.flags:
            continue  # this message does not carry the channel
        out.append(
            Reading(
                sensor_id,
                channel,
                at,
                {**shared, **(own or {})},
                transport=transport,
                quality="bad" if flags else "good",
                waveform=wave,
                flags=tuple(flags),
                mono_s=mono,
            )
        )
    return out


def parse_timestamp(value: Any, received_at: datetime) -> datetime:
    """A sensor's time: ISO 8601 (no offset: UTC) or epoch seconds (milliseconds when the
    number is too large for seconds), checked against the receive time.

    Raises:
        PayloadError: unreadable, more than FUTURE_LIMIT ahead, or before 2000.
    """
    if isinstance(value, bool):
        raise PayloadError(WRONG_TYPE, "timestamp is a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise PayloadError(BAD_TIMESTAMP, "timestamp is not finite")
        seconds = float(value) / 1000.0 if abs(value) >= 1e11 else float(value)
        try:
            at = datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise PayloadError(OLD_TIMESTAMP, f"epoch {value!r} out of range") from None
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > 64:
            raise PayloadError(BAD_TIMESTAMP, "timestamp string too long")
        try:
            at = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise PayloadError(BAD_TIMESTAMP, f"not ISO 8601: {text[:40]!r}") from None
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    else:
        raise PayloadError(WRONG_TYPE, f"timestamp is a {type(value).__name__}")
    if at > received_at + FUTURE_LIMIT:
        raise PayloadError(FUTURE_TIMESTAMP, f"{at.isoformat()} is ahead of this gateway")
    if at < EARLIEST:
        raise PayloadError(OLD_TIMESTAMP, f"{at.isoformat()} is before 2000")
    return at


def number(value: Any, what: str) -> float:
    """A JSON number as a float (NaN and infinities pass through: they are flagged).

    Raises:
        PayloadError: a bool, string, list, object...
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(WRONG_TYPE, f"{what} is a {type(value).__name__}, expected a number")
    try:
        return float(value)
    except OverflowError:  # an integer beyond float range
        return math.inf


def merge(target: dict[str, dict[str, float]], channel: str, values: Mapping[str, float]) -> None:
    target.setdefault(channel, {}).update(values)
