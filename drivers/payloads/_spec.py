"""Decoder files: YAML -> frozen decoders, every error at its file:line:column and key.

Three formats (``format:``): json-features (a field map), waveform-json, raw-int16. See
docs/decoders.md; the shipped files in this folder are the examples.
"""

from __future__ import annotations

import math
import re
from typing import Any, NoReturn

from drivers.datafiles import Document, item_name, unknown_key
from drivers.errors import DecoderError
from drivers.payloads._common import ALL_CHANNELS, split_path
from drivers.payloads._features import FeaturesDecoder, Field
from drivers.payloads._waveforms import (
    HEADER_TYPES,
    HeaderField,
    RawInt16Decoder,
    WaveformJsonDecoder,
    WaveLimits,
)
from drivers.reading import FEATURE_NAMES

Decoder = FeaturesDecoder | WaveformJsonDecoder | RawInt16Decoder
FORMATS = ("json-features", "waveform-json", "raw-int16")
_PATH_RE = re.compile(r"^[^.\s][^\s]*$")
_COMMON = {"name", "format", "description", "document"}
_KEYS = {
    "json-features": {"roots", "timestamp", "key_field", "fields"},
    "waveform-json": {"rate", "axes", "encoding", "scale", "timestamp", "key_field",
                      "axis_names", "limits"},
    "raw-int16": {"header", "data_offset", "sample_rate", "sample_count", "axis_count",
                  "scale", "axis_names", "layout", "limits"},
}  # fmt: skip
_FIELD_KEYS = {"path", "feature", "channel", "unit", "scale", "offset", "valid", "sentinels",
               "required", "full_scale"}  # fmt: skip
_HEADER_KEYS = {"name", "offset", "type", "equals"}
_LIMIT_KEYS = {"min_samples", "max_samples", "rate_hz", "max_g", "clip_share", "full_scale_g"}


class _Doc:
    def __init__(self, doc: Document) -> None:
        self.doc = doc

    def fail(self, path: tuple[str | int, ...], message: str) -> NoReturn:
        raise self.doc.error(path, message, DecoderError)

    def keys(self, obj: Any, allowed: set[str], path: tuple[str | int, ...]) -> dict[str, Any]:
        if not isinstance(obj, dict):
            self.fail(path, f"expected a mapping, got {type(obj).__name__}")
        unknown = sorted(set(obj) - allowed, key=str)
        if unknown:
            self.fail((*path, unknown[0]), unknown_key(unknown[0], allowed))
        return obj

    def path(
        self, value: Any, where: tuple[str | int, ...], *, root: bool = False
    ) -> tuple[str, ...]:
        if root and value == "":
            return ()
        if not isinstance(value, str) or not _PATH_RE.match(value):
            self.fail(where, f"expected a dotted field path such as sensor_data.x, got {value!r}")
        return split_path(value)

    def opt_path(self, data: dict[str, Any], key: str) -> tuple[str, ...] | None:
        return None if data.get(key) is None else self.path(data[key], (key,))

    def number(self, value: Any, where: tuple[str | int, ...]) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.fail(where, f"expected a finite number, got {value!r}")
        return float(value)

    def integer(self, value: Any, where: tuple[str | int, ...], lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(where, f"expected an integer {lo}..{hi}, got {value!r}")
        return value

    def pair(self, value: Any, where: tuple[str | int, ...], what: str) -> tuple[float, float]:
        if (
            not isinstance(value, list)
            or len(value) != 2
            or any(isinstance(x, bool) or not isinstance(x, int | float) for x in value)
            or not value[0] <= value[1]
        ):
            self.fail(where, f"{what} must be [lowest, highest] numbers, got {value!r}")
        return float(value[0]), float(value[1])

    def axes(self, data: dict[str, Any]) -> tuple[str, ...]:
        names = data.get("axis_names", ["x", "y", "z"])
        if (
            not isinstance(names, list)
            or not names
            or any(not isinstance(n, str) or not n or n == ALL_CHANNELS for n in names)
            or len(set(names)) != len(names)
        ):
            self.fail(("axis_names",), f"axis_names must be distinct axis names, got {names!r}")
        return tuple(names)

    def limits(self, data: dict[str, Any]) -> WaveLimits:
        given = self.keys(data.get("limits") or {}, _LIMIT_KEYS, ("limits",))
        d = WaveLimits()
        lo = self.integer(given.get("min_samples", d.min_samples), ("limits", "min_samples"),
                          1, 1 << 24)  # fmt: skip
        hi = self.integer(given.get("max_samples", d.max_samples), ("limits", "max_samples"),
                          lo, 1 << 24)  # fmt: skip
        rate = d.rate_hz
        if "rate_hz" in given:
            rate = self.pair(given["rate_hz"], ("limits", "rate_hz"), "rate_hz")
        max_g = self.number(given.get("max_g", d.max_g), ("limits", "max_g"))
        if max_g <= 0:
            self.fail(("limits", "max_g"), f"max_g must be a positive number of g, got {max_g:g}")
        clip = self.number(given.get("clip_share", d.clip_share), ("limits", "clip_share"))
        if not 0 < clip <= 1:
            self.fail(
                ("limits", "clip_share"),
                f"clip_share must be a share in (0, 1] (0.001: 0.1 % of the samples), got {clip:g}",
            )
        full = given.get("full_scale_g")
        if full is not None:
            full = self.number(full, ("limits", "full_scale_g"))
            if full <= 0:
                self.fail(
                    ("limits", "full_scale_g"), f"full_scale_g must be positive, got {full:g}"
                )
        return WaveLimits(min_samples=lo, max_samples=hi, rate_hz=rate, max_g=max_g,
                          clip_share=clip, full_scale_g=full)  # fmt: skip


def _field(d: _Doc, row: Any, i: int) -> Field:
    base: tuple[str | int, ...] = ("fields", i)
    row = d.keys(row, _FIELD_KEYS, base)
    if "path" not in row:
        d.fail(base, "path is required (the field's dotted path in the JSON)")
    feature = row.get("feature")
    if feature is None:
        d.fail(base, "feature is required (the canonical feature the field feeds)")
    if feature not in FEATURE_NAMES:
        d.fail((*base, "feature"), f"unknown feature {feature!r}; expected one of "
               f"{', '.join(sorted(FEATURE_NAMES))}")  # fmt: skip
    channel = row.get("channel")
    if not isinstance(channel, str) or not channel:
        d.fail((*base, "channel"), f"channel is required (an axis name or {ALL_CHANNELS!r})")
    scale = d.number(row.get("scale", 1.0), (*base, "scale"))
    if scale == 0:
        d.fail((*base, "scale"), "scale must not be 0")
    sentinels = row.get("sentinels", [])
    if not isinstance(sentinels, list):
        d.fail((*base, "sentinels"), f"sentinels must be a list of numbers, got {sentinels!r}")
    full_scale = row.get("full_scale")
    if full_scale is not None:
        full_scale = d.number(full_scale, (*base, "full_scale"))
        if full_scale <= 0:
            d.fail((*base, "full_scale"), f"full_scale must be positive, got {full_scale:g}")
    required = row.get("required", False)
    if not isinstance(required, bool):
        d.fail((*base, "required"), f"required must be true or false, got {required!r}")
    return Field(
        path=d.path(row["path"], (*base, "path")),
        feature=feature,
        channel=channel,
        unit=str(row.get("unit", "")),
        scale=scale,
        offset=d.number(row.get("offset", 0.0), (*base, "offset")),
        valid=None if row.get("valid") is None else d.pair(row["valid"], (*base, "valid"), "valid"),
        sentinels=frozenset(d.number(s, (*base, "sentinels", j)) for j, s in enumerate(sentinels)),
        required=required,
        full_scale=full_scale,
    )


def _features(d: _Doc, data: dict[str, Any], name: str) -> FeaturesDecoder:
    rows = data.get("fields")
    if not isinstance(rows, list) or not rows:
        d.fail(("fields",), "fields must be a non-empty list")
    fields = [_field(d, row, i) for i, row in enumerate(rows)]
    seen: dict[tuple[str, str], int] = {}
    for i, f in enumerate(fields):
        j = seen.setdefault((f.channel, f.feature), i)
        if j != i:
            msg = f"feature {f.feature!r} on channel {f.channel!r} is already given by fields[{j}]"
            d.fail(("fields", i, "feature"), msg)
    roots = data.get("roots", [""])
    if not isinstance(roots, list) or not roots:
        d.fail(("roots",), f"roots must be a list of paths ('' is the top level), got {roots!r}")
    return FeaturesDecoder(
        name=name,
        source=d.doc.source,
        fields=tuple(fields),
        roots=tuple(d.path(r, ("roots", i), root=True) for i, r in enumerate(roots)),
        timestamp=d.opt_path(data, "timestamp"),
        key_field=d.opt_path(data, "key_field"),
        description=str(data.get("description", "")),
    )


def _waveform_json(d: _Doc, data: dict[str, Any], name: str) -> WaveformJsonDecoder:
    for key in ("rate", "axes"):
        if key not in data:
            d.fail((), f"{key} is required (the path of the {key} field)")
    return WaveformJsonDecoder(
        name=name,
        source=d.doc.source,
        rate=d.path(data["rate"], ("rate",)),
        axes=d.path(data["axes"], ("axes",)),
        encoding=d.opt_path(data, "encoding"),
        scale=d.opt_path(data, "scale"),
        timestamp=d.opt_path(data, "timestamp"),
        key_field=d.opt_path(data, "key_field"),
        axis_names=d.axes(data),
        limits=d.limits(data),
        description=str(data.get("description", "")),
    )


def _header(d: _Doc, data: dict[str, Any]) -> tuple[HeaderField, ...]:
    rows = data.get("header")
    if not isinstance(rows, list) or not rows:
        d.fail(("header",), "header must be a non-empty list of {name, offset, type}")
    out = []
    for i, row in enumerate(rows):
        base: tuple[str | int, ...] = ("header", i)
        row = d.keys(row, _HEADER_KEYS, base)
        name = row.get("name")
        if not isinstance(name, str) or not name:
            d.fail((*base, "name"), "name is required")
        if row.get("type") not in HEADER_TYPES:
            d.fail((*base, "type"), f"type must be one of {', '.join(HEADER_TYPES)}, "
                   f"got {row.get('type')!r}")  # fmt: skip
        equals = row.get("equals")
        out.append(
            HeaderField(
                name=name,
                offset=d.integer(row.get("offset"), (*base, "offset"), 0, 4096),
                type=row["type"],
                equals=None if equals is None else d.number(equals, (*base, "equals")),
            )
        )
    return tuple(out)


def _raw_int16(d: _Doc, data: dict[str, Any], name: str) -> RawInt16Decoder:
    header = _header(d, data)
    names = {h.name for h in header}
    data_offset = d.integer(data.get("data_offset"), ("data_offset",), 0, 4096)
    for i, h in enumerate(header):
        if h.offset + h.size > data_offset:
            d.fail(("header", i, "offset"), f"{h.name} runs past data_offset {data_offset}")

    def field_name(key: str, required: bool) -> str | None:
        value = data.get(key)
        if value is None and not required:
            return None
        if value not in names:
            d.fail((key,), f"{key} must name a header field ({', '.join(sorted(names))}), "
                   f"got {value!r}")  # fmt: skip
        return str(value)

    scale = data.get("scale")
    if isinstance(scale, str):
        scale = field_name("scale", True)
    else:
        scale = d.number(scale, ("scale",))
        if scale <= 0:
            d.fail(("scale",), "scale must be positive (g per count)")
    layout = data.get("layout", "planar")
    if layout not in ("planar", "interleaved"):
        d.fail(("layout",), f"layout must be planar or interleaved, got {layout!r}")
    rate = field_name("sample_rate", True)
    assert rate is not None
    return RawInt16Decoder(
        name=name,
        source=d.doc.source,
        header=header,
        data_offset=data_offset,
        sample_rate=rate,
        scale=scale,
        sample_count=field_name("sample_count", False),
        axis_count=field_name("axis_count", False),
        axis_names=d.axes(data),
        layout=layout,
        limits=d.limits(data),
        description=str(data.get("description", "")),
    )


def parse_decoder(doc: Document, expected_name: str | None = None) -> Decoder:
    """Validate a parsed decoder document.

    Args:
        doc: the YAML document with positions (drivers.datafiles.parse_document).
        expected_name: when given, the decoder's ``name`` must equal it (the file stem).

    Raises:
        DecoderError: the first problem, with file:line:column and key.
    """
    d = _Doc(doc)
    data = doc.data
    if not isinstance(data, dict):
        d.fail((), "expected a mapping at the top level")
    fmt = data.get("format")
    if fmt not in FORMATS:
        d.fail(("format",), f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    d.keys(data, _COMMON | _KEYS[fmt], ())
    name = item_name(doc, expected_name, DecoderError)
    if fmt == "json-features":
        return _features(d, data, name)
    if fmt == "waveform-json":
        return _waveform_json(d, data, name)
    return _raw_int16(d, data, name)
