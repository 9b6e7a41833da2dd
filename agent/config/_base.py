"""What every configuration model shares: frozen, unknown keys refused; the id pattern."""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Id = Annotated[str, Field(pattern=_ID_PATTERN)]


def _leaves(annotation: Any) -> set[Any]:
    """The plain types an annotation is made of (through Optional, unions, tuples, lists)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _leaves(get_args(annotation)[0])
    if origin in (Union, types.UnionType, tuple, list, frozenset, set):
        return {leaf for arg in get_args(annotation) if arg is not ... for leaf in _leaves(arg)}
    return {annotation}


def _numbers_only(annotation: Any) -> bool:
    """A number field (float or int, possibly optional or a sequence of them), no bool or text."""
    leaves = _leaves(annotation) - {type(None)}
    return bool(leaves) and leaves <= {float, int}


class _Model(BaseModel):
    # No NaN or infinity anywhere: a .inf threshold or rate passes every bound check
    # (inf > 0) and then turns estimates into NaN (the replay ended in an internal error).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_true_false_as_number(cls, data: Any) -> Any:
        # pydantic reads true as 1 and false as 0, and YAML reads yes/no/on/off as true/false:
        # `lives_hours: [true]` became a 1 h fleet life, `rpm: on` 1 rpm. Given as text, such
        # a value fails the field's own number check, reported at its line.
        if not isinstance(data, dict):
            return data
        out = data
        for name, field in cls.model_fields.items():
            key = field.alias if field.alias in data else name
            v = data.get(key)
            values = v if isinstance(v, list | tuple) else (v,)
            if any(isinstance(x, bool) for x in values) and _numbers_only(field.annotation):
                shown = [str(x).lower() if isinstance(x, bool) else x for x in values]
                out = {**out, key: shown if isinstance(v, list | tuple) else shown[0]}
        return out
