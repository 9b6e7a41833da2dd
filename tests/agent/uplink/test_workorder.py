"""Alert record -> work-order request: the YAML mapping, priority from tier and zone, the
due-date rules, byte-identical retries, and what opens no work order."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.config import CmmsUplink, load_config
from agent.records import AlertDraft, parse_ts
from agent.uplink import AssetFacts, asset_facts, no_work_order
from agent.uplink._workorder import build
from simulators.cmms import WorkOrderRequest
from tests.agent.uplink._alerts import maintenance, sensor_fault, severity, trend, ttf

CONFIG = """\
gateway: {{id: gw-01, site: plant-a}}
assets:
  - id: press-7
    name: Press 7 main motor
    tier: 1
    machine: {{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}}
    planning_horizon_hours: 100
  - id: fan-3
    tier: 3
    machine: {{standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}}
sensors:
  - {{id: m1-de, asset: press-7, modbus: {{host: 10.0.0.21}}}}
uplinks:
  - cmms:
      url: https://cmms.example/api/v1/work-orders
{cmms}
store: {{path: /var/lib/edge-agent/outbox.db}}
"""


def setup(tmp_path: Path, cmms: str = "") -> tuple[CmmsUplink, dict[str, AssetFacts]]:
    path = tmp_path / "agent.yaml"
    path.write_text(CONFIG.format(cmms=cmms))
    config = load_config(path)
    assert config.uplinks[0].cmms is not None
    return config.uplinks[0].cmms, asset_facts(config)


def record(draft: AlertDraft, seq: int = 42) -> dict[str, Any]:
    """The record as the store freezes it (through its JSON text)."""
    return dict(json.loads(json.dumps(draft.record(gateway_id="gw-01", seq=seq))))


def body(draft: AlertDraft, cfg: CmmsUplink, facts: dict[str, AssetFacts]) -> dict[str, Any]:
    return dict(json.loads(build(record(draft), cfg, facts, gateway_site="plant-a").body))


def test_the_request_follows_the_yaml_mapping(tmp_path: Path) -> None:
    cfg, facts = setup(
        tmp_path,
        "      mapping:\n"
        "        fields: {asset: assetId, priority: priorityLevel, due_date: dueDate,\n"
        "                 description: details, source: null}\n"
        "        assets: {press-7: A-10023}\n"
        "        priority: {1: {C: 1}}\n"
        "        static: {type: predictive, custom_fields: {line: L2, critical: true}}\n",
    )
    got = body(severity("C", estimate=ttf(150.0)), cfg, facts)
    assert set(got) == {"title", "assetId", "priorityLevel", "dueDate", "details", "type",
                        "custom_fields"}  # fmt: skip
    assert got["assetId"] == "A-10023" and got["priorityLevel"] == 1  # a number, as given
    assert got["custom_fields"] == {"line": "L2", "critical": True}
    assert got["title"] == "press-7 Press 7 main motor: zone C vibration - plan maintenance"
    assert got["dueDate"] == "2026-11-26T14:15:02Z"  # +150 h lower bound - 24 h margin


def test_default_mapping_is_accepted_by_edge_sim_cmms(tmp_path: Path) -> None:
    cfg, facts = setup(tmp_path)
    for draft in (severity("C"), severity("D", "escalated"), trend(), trend("escalated",
                  estimate=ttf(0.01))):  # fmt: skip
        got = body(draft, cfg, facts)
        WorkOrderRequest.model_validate(got)  # strict: no unknown field, no coercion
        assert got["source"]["alert_id"] == "gw-01-000000000042"
        assert got["type"] == "predictive" and got["asset_id"] == "press-7"


@pytest.mark.parametrize(
    ("tier", "zone", "expected"),
    [(1, "C", "urgent"), (1, "D", "urgent"), (2, "C", "high"), (2, "D", "urgent"),
     (3, "C", "medium"), (3, "D", "high")],
)  # fmt: skip
def test_priority_from_tier_and_zone(tmp_path: Path, tier: int, zone: str, expected: str) -> None:
    cfg, facts = setup(tmp_path)
    assert body(severity(zone, tier=tier), cfg, facts)["priority"] == expected


def test_priority_zone_from_the_velocity_when_the_record_has_none(tmp_path: Path) -> None:
    cfg, facts = setup(tmp_path, "      mapping: {priority: {1: {B: high, A: medium}}}\n")
    # A health-index early warning carries no ISO zone; its velocity (1.43 mm/s) is zone B
    # on press-7's table, 0.9 mm/s zone A; without a velocity the zone is unknown.
    assert body(trend(velocity=1.43), cfg, facts)["priority"] == "high"
    assert body(trend(velocity=0.9), cfg, facts)["priority"] == "medium"
    assert body(trend(velocity=None), cfg, facts)["priority"] == "high"  # default unknown
    assert "zone ?" in body(trend(velocity=None), cfg, facts)["description"]


def _due(got: dict[str, Any], draft: AlertDraft) -> timedelta:
    detected = parse_ts(record(draft)["detected_at"]).replace(microsecond=0)
    return parse_ts(got["due_date"].replace("Z", ".000Z")) - detected


def test_due_date_rules(tmp_path: Path) -> None:
    cfg, facts = setup(tmp_path)  # margin 24 h by default; press-7's horizon 100 h
    with_estimate = severity("C", estimate=ttf(150.0))
    assert _due(body(with_estimate, cfg, facts), with_estimate) == timedelta(hours=126)
    # The margin is larger than the lower bound: at once, never before the detection.
    soon = trend("escalated", estimate=ttf(5.0))
    got = body(soon, cfg, facts)
    assert _due(got, soon) == timedelta(0) and ": at once" in got["description"]
    # No estimate: the planning horizon minus the margin.
    unknown = severity("C")
    got = body(unknown, cfg, facts)
    assert _due(got, unknown) == timedelta(hours=76)
    assert (
        "planning horizon (4.2 d after detection) minus the safety margin (24 h)"
        in (got["description"])
    )
    # Zone D, damage likely: due at the detection whatever the estimate says.
    severe = severity("D", "escalated", velocity=5.2, estimate=ttf(400.0))
    assert _due(body(severe, cfg, facts), severe) == timedelta(0)
    # A configured lead without estimate, and another margin.
    cfg, facts = setup(tmp_path, "      safety_margin_hours: 2\n"
                                 "      due_without_estimate_hours: 48\n")  # fmt: skip
    assert _due(body(unknown, cfg, facts), unknown) == timedelta(hours=46)
    assert _due(body(with_estimate, cfg, facts), with_estimate) == timedelta(hours=148)


def test_a_retry_is_byte_identical(tmp_path: Path) -> None:
    cfg, facts = setup(tmp_path)
    draft = trend("escalated", estimate=ttf(20.0))
    first = build(record(draft), cfg, facts, gateway_site="plant-a")
    again = build(json.loads(json.dumps(record(draft))), cfg, facts, gateway_site="plant-a")
    assert first == again and first.key == "gw-01-000000000042"
    # Another alert is another key; the same alert under another config is another body.
    other = build(record(draft, seq=43), cfg, facts, gateway_site="plant-a")
    assert other.key != first.key
    cfg2, _ = setup(tmp_path, "      safety_margin_hours: 1\n")
    assert build(record(draft), cfg2, facts, gateway_site="plant-a").body != first.body


def test_description_tells_the_planner_the_evidence(tmp_path: Path) -> None:
    cfg, facts = setup(tmp_path)
    text = body(severity("C", velocity=4.9, estimate=ttf(150.0, 212.0, 300.0)), cfg, facts)[
        "description"
    ]
    lines = text.splitlines()
    assert lines[0].startswith("press-7 Press 7 main motor: zone C - vibration 4.90 mm/s over")
    assert "Plan the repair by 2026-11-26 14:15 UTC: the earliest estimated failure (6.2 d " \
           "after detection) minus the safety margin (24 h)." in lines  # fmt: skip
    assert (
        "Vibration: velocity RMS 4.9 mm/s, zone C (ISO 10816-3 group 2 rigid: zone B from "
        "1.4, C from 2.8, D from 4.5 mm/s)." in lines
    )
    assert any(
        line.startswith("Estimated failure: 8.8 d after detection (95 % bounds 6.2 d to 12 d)")
        and "velocity RMS reaches 7.1 mm/s" in line
        for line in lines
    )
    assert "Progression: 0.31 mm/s per day over the last 3 d." in lines
    assert "Bearing fault frequencies: BPFO 168 Hz." in lines
    assert lines[-1] == (
        "Alert gw-01-000000000042 (severity raised) from gateway gw-01 at site plant-a, "
        "sensor m1-de channel z (modbus), detected 2026-11-21 08:15:02 UTC."
    )
    hi = body(trend(), cfg, facts)["description"]
    assert "Health index: 0.246 against its alarm level 0.2" in hi
    assert "No failure estimate yet: trend not yet informative." in hi


def test_long_texts_are_cut_to_the_configured_length(tmp_path: Path) -> None:
    cfg, facts = setup(
        tmp_path, "      mapping: {title_max_chars: 30, description_max_chars: 200}\n"
    )
    got = body(severity("C", estimate=ttf(150.0)), cfg, facts)
    assert len(got["title"]) == 30 and got["title"].endswith("...")
    assert len(got["description"]) <= 200 and got["description"].endswith("...")


@pytest.mark.parametrize(
    ("draft", "opens", "why"),
    [
        (severity("C"), True, None),
        (severity("D", "escalated"), True, None),
        (trend(), True, None),
        (trend("escalated", estimate=ttf(1.0)), True, None),
        (severity("B", "cleared", velocity=2.0), False, "a clear opens no work order"),
        (trend("cleared"), False, "a clear opens no work order"),
        (maintenance(), False, "it is the repair"),
        (sensor_fault(), False, "a sensor fault opens no work order"),
        (sensor_fault("cleared"), False, "a sensor fault opens no work order"),
    ],
)
def test_only_raised_and_escalated_findings_open_a_work_order(
    draft: AlertDraft, opens: bool, why: str | None
) -> None:
    reason = no_work_order(record(draft))
    assert (reason is None) == opens
    assert why is None or (reason is not None and why in reason)
