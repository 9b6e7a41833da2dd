"""The backend's own YAML (`edge-sim backend --config FILE`): what each asset's downtime costs.

```yaml
currency: EUR
defaults:                        # for assets without an entry (every key optional)
  unplanned_downtime_hours: 24
  planned_downtime_hours: 4
assets:
  press-7:
    cost_per_hour: 8000          # production lost per hour the machine stands still
    unplanned_downtime_hours: 36 # a run to failure: stop, diagnosis, parts, secondary damage
    planned_downtime_hours: 4    # the same repair in a planned window
    zones_mm_s: {ab: 1.4, bc: 2.8, cd: 4.5}   # optional: the chart's ISO zone bands
```

Downtime avoided by a case repaired before its estimated failure is
(unplanned - planned) hours, times cost_per_hour. Zones are optional: without them the
backend learns the B/C and C/D limits from the severity records it receives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigFileError(Exception):
    """The backend's YAML is unreadable or invalid; the message names FILE:LINE:COL."""


class Zones(BaseModel):
    """ISO velocity RMS zone limits in mm/s."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ab: float = Field(gt=0)
    bc: float = Field(gt=0)
    cd: float = Field(gt=0)

    @model_validator(mode="after")
    def _increasing(self) -> Zones:
        if not self.ab < self.bc < self.cd:
            raise ValueError("zone limits must increase: ab < bc < cd")
        return self


class AssetCosts(BaseModel):
    """Downtime figures of one asset; a missing figure makes its savings unknown."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    cost_per_hour: float | None = Field(default=None, ge=0)
    unplanned_downtime_hours: float | None = Field(default=None, ge=0)
    planned_downtime_hours: float | None = Field(default=None, ge=0)
    zones_mm_s: Zones | None = None

    def merged(self, defaults: AssetCosts) -> AssetCosts:
        """These figures, each missing one taken from `defaults`."""
        mine = self.model_dump(exclude_none=True)
        return AssetCosts(**{**defaults.model_dump(exclude_none=True), **mine})


class BackendConfig(BaseModel):
    """The whole file."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    currency: str = Field(default="EUR", min_length=1, max_length=8)
    defaults: AssetCosts = AssetCosts()
    assets: dict[str, AssetCosts] = Field(default_factory=dict)

    def asset(self, asset_id: str) -> AssetCosts:
        """The figures of an asset, with the defaults filled in."""
        return self.assets.get(asset_id, AssetCosts()).merged(self.defaults)


def _node_at(
    root: yaml.Node | None, loc: tuple[int | str, ...], *, key_node: bool = False
) -> yaml.Node | None:
    """The YAML node at a pydantic error location (the deepest one that exists); with
    `key_node`, the last key itself rather than its value (for an unknown key)."""
    node = root
    for i, key in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == key), None)
            if pair is None:
                return node
            node = pair[0] if key_node and i == len(loc) - 1 else pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            node = node.value[key] if key < len(node.value) else node
        else:
            break
    return node


def load_backend_config(path: Path) -> BackendConfig:
    """Read and validate the file.

    Raises:
        ConfigFileError: every problem, one per line, as FILE:LINE:COL: key: message.
    """
    try:
        text = path.read_text(encoding="utf-8")
        data: Any = yaml.safe_load(text)
        root = yaml.compose(text)
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigFileError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    try:
        return BackendConfig.model_validate(data if data is not None else {})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            node = _node_at(root, tuple(err["loc"]), key_node=err["type"] == "extra_forbidden")
            mark = node.start_mark if node is not None else None
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"{where}: {key}: {err['msg']}")
        raise ConfigFileError("\n".join(lines)) from None
