"""Walk the pydantic models along an error location to learn what was expected there.

A pydantic error says *where* (a ``loc`` tuple) and *which rule* broke. To tell an
integrator what to write instead, this module finds the model field at that location
(allowed keys, literal values, numeric bounds, id pattern) and the path in the data, which
for a discriminated union differs from ``loc`` (pydantic inserts the tag, e.g. 'limits').
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from agent.config._errors import KeyPath
from agent.config._models import Config

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_PATTERNS = {
    ID_PATTERN: "an id: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
    r"^https?://": "a URL starting with http:// or https://",
}

# Units by key suffix, so "expected a number" can say "of seconds".
_UNITS = {
    "_mm_s": " of mm/s (velocity RMS)",  # before "_s": not seconds
    "_s": " of seconds",
    "_hours": " of hours",
    "_mm": " in mm",
    "_deg": " in degrees",
    "rpm": " (shaft speed in rpm)",
}


@dataclass(frozen=True, slots=True)
class Located:
    """The data path and the schema found for one error location.

    Attributes:
        path: key path into the YAML data (tags of discriminated unions removed).
        annotation: the expected type at that path (Annotated and Optional removed).
        field: the model field at that path, when the path ends on a field.
        parent: the model that contains the field.
    """

    path: KeyPath
    annotation: Any
    field: FieldInfo | None
    parent: type[BaseModel] | None


def strip(annotation: Any) -> Any:
    """The core type: without Annotated[...] and without a None member of a union."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if is_union(annotation):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def is_union(annotation: Any) -> bool:
    """True for ``X | Y`` and ``Union[X, Y]``."""
    return get_origin(annotation) in (Union, types.UnionType)


def is_model(annotation: Any) -> bool:
    """True for a pydantic model class."""
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def field_by_key(model: type[BaseModel], key: str) -> FieldInfo | None:
    """The field a YAML key names (its alias if it has one, e.g. ``class``)."""
    for name, info in model.model_fields.items():
        if (info.alias or name) == key:
            return info
    return None


def keys_of(model: type[BaseModel]) -> list[str]:
    """The keys a mapping of this model accepts, in declaration order."""
    return [info.alias or name for name, info in model.model_fields.items()]


def required_keys(model: type[BaseModel]) -> list[str]:
    """The keys a mapping of this model must have."""
    return [info.alias or name for name, info in model.model_fields.items() if info.is_required()]


def union_tags(annotation: Any, discriminator: str) -> dict[str, type[BaseModel]]:
    """Tag value -> member model for a discriminated union."""
    out: dict[str, type[BaseModel]] = {}
    for member in get_args(annotation):
        info = member.model_fields.get(discriminator) if is_model(member) else None
        if info is not None and get_origin(info.annotation) is Literal:
            for tag in get_args(info.annotation):
                out[str(tag)] = member
    return out


def locate(loc: tuple[str | int, ...]) -> Located:
    """Follow a pydantic error location through the models, starting at Config."""
    path: list[str | int] = []
    ann: Any = Config
    field: FieldInfo | None = None
    parent: type[BaseModel] | None = None
    discriminator: str | None = None
    for part in loc:
        ann = strip(ann)
        if is_union(ann) and isinstance(part, str) and discriminator:
            member = union_tags(ann, discriminator).get(part)
            if member is not None:
                ann, discriminator = member, None
                continue
        if is_model(ann) and isinstance(part, str):
            parent, field = ann, field_by_key(ann, part)
            ann = field.annotation if field else Any
            discriminator = field.discriminator if field else None
            if not isinstance(discriminator, str):
                discriminator = None
            path.append(part)
        elif isinstance(part, int):
            args = get_args(ann)
            ann = args[0] if args else Any
            field = None
            path.append(part)
        # Anything else is a pydantic-internal step (e.g. 'function-after[...]'): skip it.
    return Located(tuple(path), strip(ann), field, parent)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def bounds(field: FieldInfo | None) -> str:
    """Numeric bounds of a field as words: 'from 1 to 65535', 'greater than 0'."""
    if field is None:
        return ""
    lo = hi = ""
    lo_incl = hi_incl = False
    for m in field.metadata:
        if isinstance(m, Gt):
            lo = _num(m.gt)
        elif isinstance(m, Ge):
            lo, lo_incl = _num(m.ge), True
        elif isinstance(m, Lt):
            hi = _num(m.lt)
        elif isinstance(m, Le):
            hi, hi_incl = _num(m.le), True
    if lo and hi and lo_incl and hi_incl:
        return f"from {lo} to {hi}"
    parts = []
    if lo:
        parts.append(f"at least {lo}" if lo_incl else f"greater than {lo}")
    if hi:
        parts.append(f"at most {hi}" if hi_incl else f"less than {hi}")
    return " and ".join(parts)


def pattern_of(field: FieldInfo | None) -> str | None:
    """The regex a string field must match, if any: on the field itself, or on the text
    member of an optional field (``Annotated[str, Field(pattern=...)] | None``, whose
    pattern pydantic keeps inside the union, not in the field's metadata)."""
    if field is None:
        return None
    metadata = list(field.metadata)
    ann = field.annotation
    for member in get_args(ann) if is_union(ann) else (ann,):
        if get_origin(member) is Annotated:
            for m in get_args(member)[1:]:
                metadata.extend(getattr(m, "metadata", ()) or (m,))
    for m in metadata:
        pattern = getattr(m, "pattern", None)
        if pattern:
            return str(pattern)
    return None


def expected(located: Located) -> str:
    """What the value at this location must look like, in words."""
    ann, field = located.annotation, located.field
    if get_origin(ann) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(ann))
    if is_model(ann):
        req = required_keys(ann)
        need = f" (required: {', '.join(req)})" if req else ""
        return f"a mapping with keys {', '.join(keys_of(ann))}{need}"
    if is_union(ann):
        members = [strip(a) for a in get_args(ann) if a is not type(None)]
        if any(is_model(m) or m is Any for m in members):
            return "a mapping"
        return " or ".join(
            expected(Located(located.path, m, field, located.parent)) for m in members
        )
    if get_origin(ann) in (tuple, list):
        item = strip(get_args(ann)[0]) if get_args(ann) else Any
        if is_model(item):
            return "a list of mappings, one '- key: value' entry each"
        return "a list, such as [z, x]"
    rng = bounds(field)
    rng = f" {rng}" if rng else ""
    key = str(located.path[-1]) if located.path else ""
    unit = next((u for suffix, u in _UNITS.items() if key.endswith(suffix)), "")
    if ann is int:
        return f"a whole number{unit}{rng}"
    if ann is float:
        return f"a number{unit}{rng}"
    if ann is Path:
        return "a file path"
    if ann is str:
        pattern = pattern_of(field)
        if pattern:
            return _PATTERNS.get(pattern, f"text matching the pattern {pattern}")
        return "text"
    return f"a value of type {getattr(ann, '__name__', ann)}"
