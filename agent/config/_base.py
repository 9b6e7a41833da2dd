"""What every configuration model shares: frozen, unknown keys refused; the id pattern."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Id = Annotated[str, Field(pattern=_ID_PATTERN)]


class _Model(BaseModel):
    # No NaN or infinity anywhere: a .inf threshold or rate passes every bound check
    # (inf > 0) and then turns estimates into NaN (the replay ended in an internal error).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
