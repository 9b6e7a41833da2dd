"""An alert record -> the work-order request a CMMS uplink POSTs, or why it opens none.

Pure and deterministic: the request is built from the stored record (its frozen JSON
text) and the configuration only, never from the clock, so a retry sends the same bytes
under the same Idempotency-Key (the alert id) and the CMMS answers with the work order it
already opened.

Which records open a work order: severity and trend alerts that are raised, and an
escalation, when their asset has no open work order the uplink knows of. The later records
of the asset's fault (a raise or an escalation on another channel or sensor of the same
asset, a revision, a critical again after a revision) make an `update` of it instead
(agent.uplink._cmms): one work order per asset and fault, until all its channels cleared. Without a
known order, a revision (a critical back to a warning) and a critical again after one
(evidence.re_escalation) open none. None for a clear (the work order stays open until a
person closes it in the CMMS with the repair), a maintenance record (it is the repair), a
sensor or gateway fault (the machine is not measured: not a machine repair; they reach
the portfolio backend), a feature summary.

Request (keys from `mapping.fields`, then `mapping.static` merged in):
- title: asset and finding in one line;
- asset: the CMMS's asset id from `mapping.assets`, else ours;
- priority: `mapping.priority_for(tier, zone)`, the zone being the record's ISO zone, or
  the zone of the velocity in its evidence, or "unknown";
- due_date: see `due`;
- description: the evidence in words a planner reads (agent.uplink._evidence);
- source: the alert's ids, so a person can find a duplicate if the CMMS forgot the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from agent.analysis.severity import ZoneTable
from agent.config import CmmsUplink
from agent.demo_story import duration, record_zone
from agent.records import parse_ts
from agent.uplink._evidence import description

OPENS = frozenset({("severity", "raised"), ("severity", "escalated"),
                   ("trend", "raised"), ("trend", "escalated")})  # fmt: skip
ZONE_RANK = {"unknown": 0, "A": 1, "B": 2, "C": 3, "D": 4}
MAX_LEAD_HOURS = 87_600.0  # ten years: a due date further out means nothing to a planner
DEFAULT_HORIZON_HOURS = 168.0  # an asset no longer configured: the configuration's default
_NONE = {
    "cleared": "a clear opens no work order (the open one is closed in the CMMS with the repair)",
    "revision": "a revision (a critical whose predicted failure did not come, back to a "
    "warning) opens no work order: the open one stays until a person closes it",
    "re_escalation": "a critical again after a revision opens no second work order: the "
    "one this episode's first critical ({first}) opened is still open",
    "maintenance": "a maintenance record opens no work order: it is the repair",
    "sensor_fault": "a sensor fault opens no work order: the machine is not measured, not "
    "found worn (the portfolio backend has it)",
    "gateway_fault": "a gateway fault opens no work order (the portfolio backend has it)",
}
_HEADLINES = {
    "C": "zone C vibration - plan maintenance",
    "D": "zone D vibration - damage likely, stop",
}


@dataclass(frozen=True, slots=True)
class AssetFacts:
    """What the configuration says about an asset, for the request.

    Attributes:
        table: its ISO zone boundaries (a zone from a velocity when the record has none).
        horizon_hours: its planning horizon (the due date without an estimate).
    """

    table: ZoneTable
    horizon_hours: float


@dataclass(frozen=True, slots=True)
class WorkOrder:
    """One request: the Idempotency-Key, the body's bytes and what to log."""

    key: str
    body: bytes
    asset: str
    priority: str | int
    due: str
    zone: str = "unknown"  # the ISO zone its priority was chosen by
    raise_: bool = True  # its record is a raise (not an escalation opening an order)


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """The work order an episode opened, as the uplink keeps it (agent.uplink._cmms_orders).

    Attributes:
        work_order: the CMMS's id of it (from the answer that opened it).
        opened_by: the alert id whose request opened it (its Idempotency-Key).
        zone: the highest ISO zone the episode's requests carried (its priority's zone).
        due: the earliest due date they carried (UTC, whole seconds, Z).
        seq: the store seq of the record that opened it (0: kept before it was recorded):
            a record of the episode stored before it and sent after it (a requeued raise,
            a raise behind its escalation after a tier change) is late, only a note.
        by_raise: a raise opened it (a late raise is then an earlier episode's: its own
            order, and this one stays the episode's).
        channels: the channel episodes (`episode`) of the asset in fault that it covers;
            it ends when the last of them cleared.
        ended: once it ended so, the detection time of that last clear (None: open). A
            finding of the asset detected no later (its readings delivered late, the
            same reading's other axis) was in fault while the order was open: it takes
            the order up again, not a second one (`taken_up`).
    """

    work_order: str
    opened_by: str
    zone: str
    due: str
    seq: int = 0
    by_raise: bool = True
    channels: tuple[str, ...] = ()
    ended: str | None = None

    def taken_up(self, record: Mapping[str, Any]) -> bool:
        """Whether a finding (a raise, an escalation) of the asset belongs to this order
        although it ended: it was detected no later than the clear that ended it."""
        return (
            self.ended is not None
            and record.get("kind") in ("severity", "trend")
            and record.get("state") != "cleared"
            and parse_ts(record["detected_at"]) <= parse_ts(self.ended)
        )

    def joined(self, episode: str) -> OpenOrder:
        """The order once it covers the episode too (open again, if it had ended)."""
        if episode in self.channels and self.ended is None:
            return self
        channels = self.channels if episode in self.channels else (*self.channels, episode)
        return replace(self, channels=channels, ended=None)

    def left(self, episode: str, at: str) -> OpenOrder:
        """The order once the episode cleared (detected `at`); ended at that clear when no
        channel is left in fault."""
        rest = tuple(c for c in self.channels if c != episode)
        return replace(self, channels=rest, ended=None if rest else at)


@dataclass(frozen=True, slots=True)
class Update:
    """One update of an open work order: its Idempotency-Key (the record's alert id), the
    body's bytes, and the order as it stands once the update is applied."""

    key: str
    body: bytes
    order: OpenOrder
    priority: str | int | None
    due: str | None


def episode(record: Mapping[str, Any]) -> str | None:
    """The alert episode of a severity or trend record (kind, asset, sensor, channel), as
    agent.store._episodes keys it; None for any other record."""
    if record.get("kind") not in ("severity", "trend"):
        return None
    sensor = record["sensor"]
    return "/".join((record["kind"], record["asset"]["id"], sensor["id"], sensor["channel"]))


def order_key(record: Mapping[str, Any]) -> str | None:
    """The work order a record belongs to: its asset's (the machine the configuration
    names; its sensors and channels are one fault), for a severity, trend or maintenance
    record; None for any other."""
    if record.get("kind") not in ("severity", "trend", "maintenance"):
        return None
    return str(record["asset"]["id"])


def note_only(record: Mapping[str, Any]) -> bool:
    """Whether a later record of an episode only adds a note to its work order (a revision,
    a clear): its priority and due date stay as the episode's worst made them."""
    evidence = record.get("evidence")
    revision = isinstance(evidence, Mapping) and bool(evidence.get("revision"))
    return revision or record.get("state") == "cleared"


def no_work_order(record: Mapping[str, Any]) -> str | None:
    """Why this record opens no work order, or None when it opens one."""
    kind, state = record.get("kind"), record.get("state")
    evidence = record.get("evidence")
    if isinstance(evidence, Mapping) and evidence.get("revision"):
        return _NONE["revision"]
    if isinstance(evidence, Mapping) and isinstance(evidence.get("re_escalation"), Mapping):
        first = evidence["re_escalation"].get("first_critical_at")
        return _NONE["re_escalation"].format(first=first)
    if (kind, state) in OPENS:
        return None
    if state == "cleared" and kind in ("severity", "trend"):
        return _NONE["cleared"]
    return _NONE.get(str(kind), f"a {kind} {state} record opens no work order")


def due(
    record: Mapping[str, Any], zone: str, cfg: CmmsUplink, horizon_hours: float
) -> tuple[datetime, str]:
    """The due date (whole seconds, UTC) and, in words, how it was set.

    Detection time + the lower bound of the time to failure - the safety margin; without
    an estimate, + `due_without_estimate_hours` (default: the planning horizon) - the
    margin; never before the detection; in zone D (damage likely) at the detection.
    """
    detected = parse_ts(record["detected_at"])
    margin = cfg.safety_margin_hours
    ttf = record.get("time_to_failure")
    if zone == "D":
        lead, basis = 0.0, "zone D (damage likely): at once"
    elif ttf:
        lead = float(ttf["lower_hours"])
        basis = f"the earliest estimated failure ({duration(lead)} after detection)"
    else:
        lead = cfg.due_without_estimate_hours or horizon_hours
        what = "configured lead" if cfg.due_without_estimate_hours else "planning horizon"
        basis = f"no failure estimate yet, so the {what} ({duration(lead)} after detection)"
    hours = min(max(0.0, lead - margin), MAX_LEAD_HOURS)
    if zone != "D":
        basis += f" minus the safety margin ({duration(margin)})"
        if lead - margin <= 0:
            basis += ": at once"
    return (detected + timedelta(hours=hours)).replace(microsecond=0), basis


def _title(record: Mapping[str, Any], zone: str) -> str:
    asset = record["asset"]
    name = asset.get("name")
    who = f"{asset['id']} {name}" if name and name != asset["id"] else str(asset["id"])
    sev = record.get("severity") or {}
    if record["kind"] == "severity":
        what = _HEADLINES.get(zone, f"zone {zone} vibration")
    elif sev.get("metric") == "time_to_failure_hours":
        what = "failure expected within the planning horizon"
    else:
        what = "early warning - vibration departs from its baseline"
    if record["state"] == "escalated" and record["kind"] == "severity":
        what += " (escalated)"
    return f"{who}: {what}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _zone(record: Mapping[str, Any], fact: AssetFacts | None) -> str:
    tables = {record["asset"]["id"]: fact.table} if fact is not None else {}
    zone, _velocity = record_zone(record, tables)
    return zone if zone in ZONE_RANK else "unknown"


def _assessed(
    record: Mapping[str, Any],
    cfg: CmmsUplink,
    facts: Mapping[str, AssetFacts],
    gateway_site: str | None,
) -> tuple[str, datetime, str]:
    """What a record says for its work order: its zone, its due date and its description
    (clipped to mapping.description_max_chars), by its asset's zone table and horizon."""
    asset_id = record["asset"]["id"]
    fact = facts.get(asset_id)
    tables = {asset_id: fact.table} if fact is not None else {}
    horizon = fact.horizon_hours if fact is not None else DEFAULT_HORIZON_HOURS
    zone = _zone(record, fact)
    due_at, due_basis = due(record, zone, cfg, horizon)
    text = description(record, tables, {asset_id: horizon}, due_at, due_basis, site=gateway_site)
    return zone, due_at, _clip(text, cfg.mapping.description_max_chars)


def opened(
    wo: WorkOrder, work_order: str, seq: int = 0, channels: tuple[str, ...] = ()
) -> OpenOrder:
    """The open order a request (of the record stored at `seq`) opened, under the id the
    CMMS answered with, covering `channels`."""
    return OpenOrder(work_order, wo.key, wo.zone, wo.due, seq, wo.raise_, channels)


def update(
    record: Mapping[str, Any],
    order: OpenOrder,
    cfg: CmmsUplink,
    facts: Mapping[str, AssetFacts],
    *,
    gateway_site: str | None = None,
    late: bool = False,
) -> Update | str:
    """The update a later record of an episode makes to its open work order, or why none.

    An escalation (or a critical again after a revision) raises the priority to its zone's
    and brings the due date forward, never the other way (the highest zone and the earliest
    due date of the episode so far, so a retry after the order was saved is byte-identical);
    each appends its evidence as a note. A revision only appends its note: the work order
    stays as urgent as the critical made it until a person decides; so does a `late` record
    (stored before the record that opened the order, sent after it).

    Raises:
        KeyError, TypeError, ValueError: the record lacks what an update needs.
    """
    m = cfg.mapping
    asset = record["asset"]
    zone, due_at, described = _assessed(record, cfg, facts, gateway_site)
    parts: dict[str, Any] = {}
    after = order
    if not (late or note_only(record)):
        top = max(order.zone, zone, key=lambda z: ZONE_RANK.get(z, 0))
        soonest = min(order.due, due_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
        after = replace(order, zone=top, due=soonest)
        parts["title"] = _clip(_title(record, top), m.title_max_chars)
        parts["priority"] = m.priority_for(int(asset["tier"]), top)
        parts["due_date"] = soonest
    parts["note"] = described
    keys = {"title": m.fields.title, "priority": m.fields.priority,
            "due_date": m.fields.due_date, "note": m.fields.note}  # fmt: skip
    body = {keys[part]: v for part, v in parts.items() if keys[part] is not None}
    if not body:
        what = record["state"] if late or record["state"] == "cleared" else "revision"
        return (
            f"a {what} updates no "
            f"work order here: mapping.fields.note is null (work order {order.work_order} "
            "stays as it is)"
        )
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return Update(
        record["alert_id"], text.encode(), after, parts.get("priority"), parts.get("due_date")
    )


def build(
    record: Mapping[str, Any],
    cfg: CmmsUplink,
    facts: Mapping[str, AssetFacts],
    *,
    gateway_site: str | None = None,
) -> WorkOrder:
    """The request for a record that opens a work order (`no_work_order` is None).

    Args:
        record: the alert record, as stored.
        cfg: the uplink's configuration (mapping, safety margin).
        facts: per configured asset id, its zone table and planning horizon.
        gateway_site: the gateway's site, for the description.

    Raises:
        KeyError, TypeError, ValueError: the record lacks what a work order needs.
    """
    m = cfg.mapping
    asset = record["asset"]
    zone, due_at, described = _assessed(record, cfg, facts, gateway_site)
    due_text = due_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    priority = m.priority_for(int(asset["tier"]), zone)
    parts: dict[str, Any] = {
        "title": _clip(_title(record, zone), m.title_max_chars),
        "asset": m.assets.get(asset["id"], asset["id"]),
        "priority": priority,
        "due_date": due_text,
        "description": described,
        "source": {
            "system": "edge-agent",
            "alert_id": record["alert_id"],
            "gateway_id": record["gateway_id"],
            "asset_id": asset["id"],
            "sensor": f"{record['sensor']['id']}/{record['sensor']['channel']}",
            "kind": record["kind"],
            "state": record["state"],
            "detected_at": record["detected_at"],
        },
    }
    body = {key: parts[part] for part, key in m.fields.used().items()}
    body.update(m.static)
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return WorkOrder(record["alert_id"], text.encode(), parts["asset"], priority, due_text, zone,
                     record["state"] == "raised")  # fmt: skip
