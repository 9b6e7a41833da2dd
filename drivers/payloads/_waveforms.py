"""Waveform payloads: per-axis samples in JSON (float arrays or base64 int16), or a binary
little-endian int16 block after a header described in YAML.

The agent computes the features itself (agent.analysis.features via Reading.waveform).
An axis with a NaN or infinite sample, or one beyond the decoder's max_g, is flagged, never
analysed. So is a clipped one (``waveform:saturated``): int16 samples whose share at the
int16 limits (within SATURATION_CODES of 32767 / -32768; float samples: at
``limits.full_scale_g``) reaches ``limits.clip_share``. Clipping cuts the peaks off, so
its RMS and kurtosis are wrong (a severity from them is not the machine's), as a
saturated register's value is.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from drivers.errors import PayloadError
from drivers.payloads._common import (
    BAD_WAVEFORM,
    MALFORMED,
    MISSING_FIELD,
    WRONG_TYPE,
    Decoded,
    Payload,
    lookup,
    number,
    parse_timestamp,
)
from drivers.profiles import NOT_FINITE, OUT_OF_RANGE, SATURATED
from drivers.profiles._profile import SATURATION_CODES
from drivers.reading import Waveform

WAVE_FLAG = f"waveform:{NOT_FINITE}"
WAVE_RANGE_FLAG = f"waveform:{OUT_OF_RANGE}"
WAVE_CLIP_FLAG = f"waveform:{SATURATED}"
# Share of an axis's samples at full scale that makes it clipped. Gaussian vibration
# clipped at 3 sigma has 0.27 % of its samples there; a live signal that touches full
# scale once (1 sample in 25600) is not clipped. At least MIN_CLIPPED samples either way.
CLIP_SHARE = 0.001
MIN_CLIPPED = 3
INT16_TOP, INT16_BOTTOM = 32767 - SATURATION_CODES, -32768 + SATURATION_CODES
FULL_SCALE_TOLERANCE = 0.001  # a float at full scale less its converter's top step
# No vibration accelerometer measures beyond this (industrial IEPE: 50-500 g, MEMS: 2-64 g): a
# larger sample is a bad scale (a float32 header field read as 3e38 g/count) or a corrupt
# body, whose velocity RMS (1e42 mm/s) would otherwise be ISO zone D. A decoder for a shock
# sensor raises it (limits.max_g).
MAX_G = 2000.0
ENCODINGS = ("float-array", "int16-b64")
HEADER_TYPES = {
    "uint8": "B", "int8": "b", "uint16": "H", "int16": "h", "uint32": "I", "int32": "i",
    "uint64": "Q", "int64": "q", "float32": "f", "float64": "d",
}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class WaveLimits:
    """Plausible bounds of a snapshot: samples per axis, sampling rate, largest |sample| (g)."""

    min_samples: int = 64
    max_samples: int = 65_536
    rate_hz: tuple[float, float] = (100.0, 200_000.0)
    max_g: float = MAX_G
    clip_share: float = CLIP_SHARE
    full_scale_g: float | None = None  # float samples: the sensor's range (None: unknown)

    def clipped(self, samples: np.ndarray, raw: np.ndarray | None) -> bool:
        """Whether an axis is clipped: its share of samples at full scale (the int16
        limits of ``raw`` counts, else ``full_scale_g``) reaches clip_share."""
        if raw is not None:
            n = int(np.count_nonzero((raw >= INT16_TOP) | (raw <= INT16_BOTTOM)))
        elif self.full_scale_g is not None:
            at = self.full_scale_g * (1 - FULL_SCALE_TOLERANCE)
            n = int(np.count_nonzero(np.abs(samples) >= at))
        else:
            return False
        return n >= max(MIN_CLIPPED, self.clip_share * samples.size)

    def check(self, n: int, fs: float, axis: str) -> None:
        if not self.min_samples <= n <= self.max_samples:
            raise PayloadError(
                BAD_WAVEFORM,
                f"axis {axis}: {n} samples, expected {self.min_samples}..{self.max_samples}",
            )
        if not (math.isfinite(fs) and self.rate_hz[0] <= fs <= self.rate_hz[1]):
            raise PayloadError(BAD_WAVEFORM, f"sampling rate {fs!r} Hz out of range")


def _store(
    out: Decoded,
    axis: str,
    samples: np.ndarray,
    fs: float,
    limits: WaveLimits,
    raw: np.ndarray | None = None,
) -> None:
    """Keep an axis's samples, or flag why not (``raw``: its int16 counts, if sent so)."""
    if not np.isfinite(samples).all():
        out.flags.setdefault(axis, []).append(WAVE_FLAG)
        return
    if samples.size and float(np.abs(samples).max()) > limits.max_g:
        out.flags.setdefault(axis, []).append(WAVE_RANGE_FLAG)
        return
    if limits.clipped(samples, raw):
        out.flags.setdefault(axis, []).append(WAVE_CLIP_FLAG)
        return
    out.waveforms[axis] = Waveform(samples, fs)


@dataclass(frozen=True, slots=True, kw_only=True)
class WaveformJsonDecoder:
    """``format: waveform-json``: ``{rate: Hz, axes: {x: [g...] | "base64"}}``.

    Attributes:
        rate: path of the sampling rate (Hz).
        axes: path of the mapping axis -> samples.
        encoding: path of the encoding name (absent: float-array); int16-b64 samples are
            base64 of little-endian int16, times the value at ``scale`` (g per count).
        scale: path of the g-per-count factor for int16-b64.
    """

    name: str
    source: str
    rate: tuple[str, ...]
    axes: tuple[str, ...]
    encoding: tuple[str, ...] | None = None
    scale: tuple[str, ...] | None = None
    timestamp: tuple[str, ...] | None = None
    key_field: tuple[str, ...] | None = None
    axis_names: tuple[str, ...] = ("x", "y", "z")
    limits: WaveLimits = WaveLimits()
    description: str = ""
    kind = "waveform-json"
    json_payload = True

    @property
    def channels(self) -> tuple[str, ...]:
        return self.axis_names

    def decode(self, payload: Payload, received_at: datetime) -> Decoded:
        """Waveforms by axis from one message (see the class docstring).

        Raises:
            PayloadError: malformed, missing or mistyped fields, a bad encoding, sizes or
                rate out of bounds, an implausible timestamp.
        """
        doc = payload.json
        out = Decoded()
        if self.timestamp is not None and (ts := lookup(doc, self.timestamp)) is not None:
            out.timestamp = parse_timestamp(ts, received_at)
        rate = lookup(doc, self.rate)
        if rate is None:
            raise PayloadError(MISSING_FIELD, f"{'.'.join(self.rate)} is missing")
        fs = number(rate, ".".join(self.rate))
        axes = lookup(doc, self.axes)
        if not isinstance(axes, dict) or not axes:
            raise PayloadError(MISSING_FIELD, f"{'.'.join(self.axes)} is not an axis mapping")
        encoding = "float-array"
        if self.encoding is not None:
            given = lookup(doc, self.encoding)
            if given is not None:
                if given not in ENCODINGS:
                    raise PayloadError(WRONG_TYPE, f"unknown encoding {str(given)[:30]!r}")
                encoding = given
        scale = 1.0
        if encoding == "int16-b64":
            raw_scale = lookup(doc, self.scale) if self.scale is not None else None
            if raw_scale is None:
                raise PayloadError(MISSING_FIELD, "int16-b64 samples need a scale")
            scale = number(raw_scale, "scale")
            if not (math.isfinite(scale) and scale > 0):
                raise PayloadError(BAD_WAVEFORM, f"scale {scale!r} must be positive")
        for axis, data in axes.items():
            if axis not in self.axis_names:
                continue  # an axis nobody asked for
            samples, raw = self._samples(data, encoding, scale, axis)
            self.limits.check(len(samples), fs, axis)
            _store(out, axis, samples, fs, self.limits, raw)
        if not out.waveforms and not out.flags:
            raise PayloadError(MISSING_FIELD, f"no axis among {', '.join(self.axis_names)}")
        return out

    def _samples(
        self, data: Any, encoding: str, scale: float, axis: str
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The samples in g, and the int16 counts they came from (None: floats)."""
        limit = self.limits.max_samples
        if encoding == "int16-b64":
            if not isinstance(data, str):
                raise PayloadError(WRONG_TYPE, f"axis {axis}: expected a base64 string")
            if len(data) > (limit * 2 * 4) // 3 + 4:
                raise PayloadError(BAD_WAVEFORM, f"axis {axis}: more than {limit} samples")
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise PayloadError(MALFORMED, f"axis {axis}: not base64") from None
            if len(raw) % 2:
                raise PayloadError(BAD_WAVEFORM, f"axis {axis}: odd byte count {len(raw)}")
            counts = np.frombuffer(raw, dtype="<i2")
            with np.errstate(over="ignore"):  # a huge scale gives inf: flagged, not analysed
                return counts.astype(np.float64) * scale, counts
        if not isinstance(data, list):
            raise PayloadError(WRONG_TYPE, f"axis {axis}: expected a list of numbers")
        if len(data) > limit:
            raise PayloadError(BAD_WAVEFORM, f"axis {axis}: more than {limit} samples")
        try:
            arr = np.array(data)
        except (ValueError, OverflowError, RecursionError):  # ragged nested lists
            raise PayloadError(WRONG_TYPE, f"axis {axis}: not a flat list of numbers") from None
        # strings, None, nested lists and huge integers give another dtype or shape
        if arr.ndim != 1 or arr.dtype.kind not in "fiu":
            raise PayloadError(WRONG_TYPE, f"axis {axis}: a sample is not a number")
        return arr.astype(np.float64, copy=False), None


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderField:
    """One header field: name, byte offset, type (little-endian), optional fixed value."""

    name: str
    offset: int
    type: str
    equals: float | None = None

    @property
    def size(self) -> int:
        return struct.calcsize("<" + HEADER_TYPES[self.type])


@dataclass(frozen=True, slots=True, kw_only=True)
class RawInt16Decoder:
    """``format: raw-int16``: a binary header, then little-endian int16 samples.

    Attributes:
        header: the header's fields.
        data_offset: where the samples start.
        sample_rate: header field name of the sampling rate (Hz).
        sample_count: header field name of the samples per axis (None: all that follow).
        axis_count: header field name of the number of axes (None: len(axis_names)).
        scale: g per count: a number, or the name of a header field.
        layout: planar (all x, then all y...) or interleaved (x y z x y z ...).
    """

    name: str
    source: str
    header: tuple[HeaderField, ...]
    data_offset: int
    sample_rate: str
    scale: float | str
    sample_count: str | None = None
    axis_count: str | None = None
    axis_names: tuple[str, ...] = ("x", "y", "z")
    layout: str = "planar"
    limits: WaveLimits = WaveLimits()
    description: str = ""
    kind = "raw-int16"
    json_payload = False
    timestamp = None
    key_field = None

    @property
    def channels(self) -> tuple[str, ...]:
        return self.axis_names

    def fields(self, raw: bytes) -> dict[str, float]:
        """The header's values.

        Raises:
            PayloadError: too short, or a fixed value (magic) that does not match.
        """
        if len(raw) < self.data_offset:
            raise PayloadError(MALFORMED, f"{len(raw)} bytes, shorter than the header")
        values: dict[str, float] = {}
        for f in self.header:
            (v,) = struct.unpack_from("<" + HEADER_TYPES[f.type], raw, f.offset)
            if f.equals is not None and v != f.equals:
                raise PayloadError(MALFORMED, f"header {f.name} is {v!r}, expected {f.equals!r}")
            values[f.name] = v
        return values

    def decode(self, payload: Payload, received_at: datetime) -> Decoded:
        """Waveforms by axis from one binary message (see the class docstring).

        Raises:
            PayloadError: a short or foreign header, counts that do not fit the body, a
                rate or size out of bounds.
        """
        raw = payload.raw
        head = self.fields(raw)
        fs = float(head[self.sample_rate])
        scale = head[self.scale] if isinstance(self.scale, str) else self.scale
        if not (math.isfinite(scale) and scale > 0):
            raise PayloadError(BAD_WAVEFORM, f"scale {scale!r} must be positive")
        n_axes = int(head[self.axis_count]) if self.axis_count else len(self.axis_names)
        if not 1 <= n_axes <= len(self.axis_names):
            raise PayloadError(BAD_WAVEFORM, f"{n_axes} axes, expected 1..{len(self.axis_names)}")
        body = len(raw) - self.data_offset
        if body % (2 * n_axes):
            raise PayloadError(BAD_WAVEFORM, f"{body} data bytes do not fit {n_axes} axes")
        n = body // (2 * n_axes)
        if self.sample_count is not None and int(head[self.sample_count]) != n:
            raise PayloadError(
                BAD_WAVEFORM, f"header says {int(head[self.sample_count])} samples, body has {n}"
            )
        self.limits.check(n, fs, self.axis_names[0])
        counts = np.frombuffer(raw, dtype="<i2", offset=self.data_offset)
        data = counts.astype(np.float64)
        with np.errstate(over="ignore"):  # a huge scale gives inf: flagged, not analysed
            data *= scale
        out = Decoded()
        for i, axis in enumerate(self.axis_names[:n_axes]):
            part = slice(i * n, (i + 1) * n) if self.layout == "planar" else slice(i, None, n_axes)
            _store(out, axis, data[part], fs, self.limits, counts[part])
        return out
