"""How an alert becomes a CMMS work-order request: the field mapping of a `cmms` uplink.

Models as in agent.config._models (frozen, unknown keys refused). The uplink itself
(`CmmsUplink`: url, token, safety margin, mapping) is in agent.config._delivery; the
request is built by agent.uplink._workorder.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from agent.config._base import _Model

ZONE_KEYS = ("A", "B", "C", "D", "unknown")
Priority = Annotated[str, Field(min_length=1, max_length=100)] | int
Key = Annotated[str, Field(min_length=1, max_length=100)]
MAX_STATIC_DEPTH = 4

# By the asset's tier, then the ISO zone at detection ("unknown": no velocity measured).
# The words are edge-sim cmms's (low, medium, high, urgent), like UpKeep's and MaintainX's.
DEFAULT_PRIORITY: dict[int, dict[str, str]] = {
    1: {"A": "high", "B": "high", "C": "urgent", "D": "urgent", "unknown": "high"},
    2: {"A": "medium", "B": "medium", "C": "high", "D": "urgent", "unknown": "medium"},
    3: {"A": "low", "B": "low", "C": "medium", "D": "high", "unknown": "low"},
}


class ZonePriority(_Model):
    """One tier's priority per ISO zone at detection; a zone not given keeps the default."""

    A: Priority | None = None
    B: Priority | None = None
    C: Priority | None = None
    D: Priority | None = None
    unknown: Priority | None = None  # no velocity measured (a zone cannot be told)


class PriorityTable(_Model):
    """Overrides of DEFAULT_PRIORITY by tier (YAML keys 1, 2, 3)."""

    tier_1: ZonePriority = Field(default=ZonePriority(), alias="1")
    tier_2: ZonePriority = Field(default=ZonePriority(), alias="2")
    tier_3: ZonePriority = Field(default=ZonePriority(), alias="3")


def _not_json(value: Any, where: str, depth: int = 0) -> str | None:
    """What in a fixed value cannot be sent as JSON (a YAML date, deep nesting), or None."""
    if depth > MAX_STATIC_DEPTH:
        return f"{where} nests deeper than {MAX_STATIC_DEPTH} levels; flatten it"
    if isinstance(value, dict):
        for k, v in value.items():
            problem = _not_json(v, f"{where}.{k}", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, list):
        for i, v in enumerate(value):
            problem = _not_json(v, f"{where}.{i}", depth + 1)
            if problem:
                return problem
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return None
    return (
        f"{where} ({value}) is a {type(value).__name__}, not a JSON value; write it in "
        "quotes to send it as text"
    )


class CmmsFields(_Model):
    """The JSON key of each part of the request in the CMMS's API (null: leave it out)."""

    title: Key = "title"
    asset: Key = "asset_id"
    priority: Key = "priority"
    due_date: Key | None = "due_date"
    description: Key | None = "description"
    source: Key | None = "source"  # the alert's ids, so a person can find a duplicate
    # An update's evidence (a later record of the episode: its escalation, revision),
    # appended to the open work order's notes, work log or comments; null: no note.
    note: Key | None = "note"

    def used(self) -> dict[str, str]:
        """Our part -> its JSON key, for the parts a request opening a work order sends."""
        return {
            part: key
            for part, key in self.model_dump().items()
            if key is not None and part != "note"
        }


class CmmsMapping(_Model):
    """The field mapping of a `cmms` uplink (see config/example.yaml)."""

    fields: CmmsFields = CmmsFields()
    # Our asset id -> the CMMS's asset id; an asset not listed is sent under our id.
    assets: dict[Key, Key] = Field(default_factory=dict)
    priority: PriorityTable = PriorityTable()
    # Fixed keys sent with every request (a type, the site, a block of custom fields): any
    # JSON value (text, numbers, true/false, null, lists and mappings of them).
    static: dict[Key, Any] = Field(default_factory=lambda: {"type": "predictive"})
    # A clear of a channel its asset's open work order covers: "nothing" (the default: a
    # person closes it with the repair), or "note" (its evidence appended as a note, so
    # the planner sees that the vibration came back down; the order stays open).
    on_clear: Literal["nothing", "note"] = "nothing"
    # How an update of an open work order is sent: "patch" (PATCH update_url, by default
    # {url}/{id}, as UpKeep, Fiix, MaintainX take it), or "post_override" (a POST there with
    # X-HTTP-Method-Override: PATCH, for a CMMS or proxy that only passes POST: Maximo).
    update_method: Literal["patch", "post_override"] = "patch"
    title_max_chars: int = Field(default=200, ge=20, le=10_000)
    description_max_chars: int = Field(default=4000, ge=200, le=1_000_000)

    @model_validator(mode="after")
    def _distinct_keys(self) -> CmmsMapping:
        seen: dict[str, str] = {}
        for part, key in self.fields.model_dump().items():
            if key is None:
                continue
            if key in seen:
                raise ValueError(
                    f"fields.{part} uses key '{key}', which fields.{seen[key]} already uses; "
                    "give each part its own key (or null to leave one out)"
                )
            seen[key] = part
        opening = {key: part for part, key in self.fields.used().items()}
        for key, value in self.static.items():
            if key in opening:  # static keys go with the opening request only, as `used`
                raise ValueError(
                    f"static.{key} would overwrite fields.{opening[key]} (key '{key}'): rename "
                    "one of them"
                )
            problem = _not_json(value, f"static.{key}")
            if problem:
                raise ValueError(problem)
        return self

    def priority_for(self, tier: int, zone: str) -> str | int:
        """The work order's priority for an asset tier and an ISO zone (or "unknown")."""
        zone = zone if zone in ZONE_KEYS else "unknown"
        tier = tier if tier in DEFAULT_PRIORITY else 3
        given = getattr(getattr(self.priority, f"tier_{tier}"), zone)
        return given if given is not None else DEFAULT_PRIORITY[tier][zone]
