"""``format: json-features``: a JSON object whose fields are features, mapped in YAML.

Each row names a dotted path, the canonical feature and channel it feeds, and how to
check and scale it (the same checks as a register profile's rows). ``roots`` lists where
the fields may be nested (NCD firmware puts them at the top level or under
``sensor_data``): the first root holding a mapped field is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from drivers.errors import PayloadError
from drivers.payloads._common import (
    MISSING_FIELD,
    Decoded,
    Payload,
    lookup,
    number,
    parse_timestamp,
)
from drivers.profiles import NOT_FINITE, OUT_OF_RANGE, SATURATED, SENTINEL

# A value at full scale less this share is saturated (a converter's top code is a step
# below its range: 1/2048 of it for a 12-bit one).
FULL_SCALE_TOLERANCE = 0.001


@dataclass(frozen=True, slots=True, kw_only=True)
class Field:
    """One mapped field.

    Attributes:
        path: dotted path under the root.
        feature: canonical feature name (drivers.reading.FEATURE_NAMES).
        channel: axis name, or ``all`` for a value every axis shares.
        unit: unit after scaling, for humans.
        scale: multiplier from the sent number to ``unit`` (value = raw x scale + offset).
        offset: added after scaling.
        valid: (lowest, highest) plausible scaled value; None: any finite value.
        sentinels: sent values that mean "no value".
        required: a message without it is dropped (missing_field); else it is skipped.
        full_scale: the sensor's measuring limit after scaling: a value at it (either sign)
            is saturated, a clipped sensor, never analysed (None: unknown). Peaks show it;
            an RMS of a clipped signal stays below it.
    """

    path: tuple[str, ...]
    feature: str
    channel: str
    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0
    valid: tuple[float, float] | None = None
    sentinels: frozenset[float] = frozenset()
    required: bool = False
    full_scale: float | None = None

    def assess(self, raw: float) -> tuple[float, str | None]:
        """The scaled value and why it is garbage (a quality reason), or None."""
        if raw in self.sentinels:
            return raw, SENTINEL
        if not math.isfinite(raw):
            return raw, NOT_FINITE
        value = raw * self.scale + self.offset
        if not math.isfinite(value):
            return value, NOT_FINITE
        if self.full_scale is not None and abs(value) >= self.full_scale * (
            1 - FULL_SCALE_TOLERANCE
        ):
            return value, SATURATED
        if self.valid is not None and not self.valid[0] <= value <= self.valid[1]:
            return value, OUT_OF_RANGE
        return value, None


@dataclass(frozen=True, slots=True, kw_only=True)
class FeaturesDecoder:
    """Decodes JSON feature messages (see the module docstring)."""

    name: str
    source: str
    fields: tuple[Field, ...]
    roots: tuple[tuple[str, ...], ...] = ((),)
    timestamp: tuple[str, ...] | None = None
    key_field: tuple[str, ...] | None = None
    description: str = ""
    kind = "json-features"
    json_payload = True

    @property
    def channels(self) -> tuple[str, ...]:
        """Axis names in first-seen order, without ``all``."""
        return tuple(dict.fromkeys(f.channel for f in self.fields if f.channel != "all"))

    def _root(self, doc: dict[str, Any]) -> dict[str, Any]:
        for root in self.roots:
            obj = lookup(doc, root)
            if isinstance(obj, dict) and any(lookup(obj, f.path) is not None for f in self.fields):
                return obj
        raise PayloadError(MISSING_FIELD, "none of the mapped fields is present")

    def decode(self, payload: Payload, received_at: datetime) -> Decoded:
        """Features by channel from one message.

        Raises:
            PayloadError: malformed JSON, no mapped field, a required field missing, a
                field of the wrong type, or an implausible timestamp.
        """
        doc = payload.json
        root = self._root(doc)
        out = Decoded()
        if self.timestamp is not None:
            ts = lookup(doc, self.timestamp)
            if ts is None:
                ts = lookup(root, self.timestamp)
            if ts is not None:
                out.timestamp = parse_timestamp(ts, received_at)
        for f in self.fields:
            raw = lookup(root, f.path)
            if raw is None:
                if f.required:
                    raise PayloadError(MISSING_FIELD, f"{'.'.join(f.path)} is missing")
                continue
            value, reason = f.assess(number(raw, ".".join(f.path)))
            if reason is None:
                out.features.setdefault(f.channel, {})[f.feature] = value
            else:
                out.flags.setdefault(f.channel, []).append(f"{f.feature}:{reason}")
        return out
