"""Cases: scripted record sequences grouped by the backend, over real HTTP and SQLite."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from simulators.backend import BackendServer
from simulators.backend_config import BackendConfig, ConfigFileError, load_backend_config
from simulators.cases import Confirmation, build_portfolio, case_id
from simulators.portfolio import totals
from simulators.portfolio_page import render_page
from tests.simulators._records import Script

TOKEN = "case-token"
COSTS = """\
currency: EUR
assets:
  press-7:
    cost_per_hour: 8000
    unplanned_downtime_hours: 36
    planned_downtime_hours: 4
    zones_mm_s: {ab: 1.4, bc: 2.8, cd: 4.5}
"""
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _post(s: aiohttp.ClientSession, b: BackendServer, records: list[dict[str, Any]]) -> None:
    async with s.post(b.url, json={"alerts": records}, headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()


async def _get(s: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, Any]:
    async with s.get(url, params=params, headers=AUTH) as resp:
        return resp.status, await resp.json()


async def test_detect_escalate_confirm_repair_then_redetect_and_clear(tmp_path: Path) -> None:
    (tmp_path / "backend.yaml").write_text(COSTS)
    config = load_backend_config(tmp_path / "backend.yaml")
    s = Script(datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6))
    warn = s.early_warning(0.0)  # detection: zone B from the YAML limits, no estimate yet
    esc = s.ttf_escalation(1.0, (20.0, 12.0, 30.0))  # earliest failure at +13 h
    zone_c = s.zone(3.0, "C", 3.1, ttf=(9.0, 7.0, 12.0))  # earliest failure at +10 h
    gap = [
        s.record(4.0, "sensor_fault", "raised", channel="all", metric="polls", value=3),
        s.record(4.5, "sensor_fault", "cleared", channel="all", metric="polls", value=0),
    ]
    repair = s.repair(8.0)  # lead time 8 h, 2 h before the earliest failure
    again, cleared = s.zone(20.0, "C", 3.0), s.clear(21.0)
    base_cases = ""
    async with (
        BackendServer(db=tmp_path / "b.db", token=TOKEN, config=config) as b,
        aiohttp.ClientSession() as http,
    ):
        base_cases = f"{b.base_url}/v1/cases"
        # The escalation arrives before the raise (a backlog drained tier 1 first).
        await _post(http, b, [esc])
        await _post(http, b, [warn, zone_c, *gap])
        status, listing = await _get(http, base_cases)
        assert status == 200 and [c["state"] for c in listing["cases"]] == ["open"]
        first_id = listing["cases"][0]["id"]
        assert first_id == case_id(warn["alert_id"])  # the case starts at the raise
        # The id the case had while only the escalation was there still finds it.
        status, one = await _get(http, f"{base_cases}/{case_id(esc['alert_id'])}")
        assert status == 200 and one["id"] == first_id and len(one["timeline"]) == 5

        async with http.post(f"{base_cases}/{first_id}/confirm", json={"by": "ann"}) as resp:
            assert resp.status == 401  # a write needs the bearer token
        body = {"by": "ann", "note": "bearing noise confirmed"}
        async with http.post(f"{base_cases}/{first_id}/confirm", json=body, headers=AUTH) as r:
            confirmed = await r.json()
        assert confirmed["confirmed_now"] and confirmed["case"]["state"] == "confirmed"
        async with http.post(f"{base_cases}/{first_id}/confirm", json=body, headers=AUTH) as r:
            assert (await r.json())["confirmed_now"] is False  # once is enough

        await _post(http, b, [repair, again, cleared])
        status, listing = await _get(http, base_cases)
        assert (await b.stats())["confirmations"] == 1
    first, second = sorted(listing["cases"], key=lambda c: c["opened_at"])
    assert first["id"] == first_id and first["state"] == "repaired"
    assert first["detection"]["alert_id"] == warn["alert_id"]
    assert first["detection"]["zone"] == "B" and first["detection"]["time_to_failure"] is None
    assert first["detection"]["health_index"] == 0.25
    assert first["first_estimate"]["hours"] == 20.0 and first["latest_estimate"]["hours"] == 9.0
    assert [e["alert_id"] for e in first["escalations"]] == [esc["alert_id"]]
    assert first["confirmation"]["by"] == "ann" and first["repair"]["note"] == "bearing replaced"
    assert first["lead_time_hours"] == 8.0
    assert first["repair_before_failure"] is True and first["repair_margin_hours"] == 2.0
    assert first["repair_window"]["hours"] == 10.0
    assert first["failure_reached_at"] is None and first["peak"]["zone"] == "C"
    assert first["downtime_avoided"] == {
        "hours": 32.0,
        "cost": 256000.0,
        "currency": "EUR",
        "basis": "unplanned 36 h - planned 4 h, x 8000 EUR/h",
    }
    assert [(g["sensor"], g["to"] is not None) for g in first["monitoring_gaps"]] == [
        ("m1-de", True)
    ]
    assert first["records"] == 6 and "timeline" not in first  # the list leaves timelines out
    # Re-detected 12 h after the repair, then cleared without repair, never confirmed.
    assert second["state"] == "cleared" and second["repair"] is None
    assert second["follows"] == {"case": first_id, "closed_as": "repaired", "hours_after": 12.0}
    assert second["lead_time_hours"] is None and second["downtime_avoided"] is None
    assert second["downtime_avoided_reason"] == "not repaired yet"
    assert listing["totals"]["repaired_before_failure"] == 1
    assert listing["totals"]["downtime_avoided_cost"] == 256000.0


async def test_case_filters_and_bad_queries(tmp_path: Path) -> None:
    s = Script(datetime(2026, 11, 21, 8, tzinfo=UTC))
    async with (
        BackendServer(db=tmp_path / "b.db", token=TOKEN) as b,
        aiohttp.ClientSession() as http,
    ):
        await _post(http, b, [s.zone(0.0, "C", 3.0), s.repair(1.0), s.zone(5.0, "C", 3.2)])
        url = f"{b.base_url}/v1/cases"
        assert [c["state"] for c in (await _get(http, url, state="repaired"))[1]["cases"]] == [
            "repaired"
        ]
        assert len((await _get(http, url, state="open,repaired"))[1]["cases"]) == 2
        assert (await _get(http, url, tier="2"))[1]["cases"] == []
        assert len((await _get(http, url, since="2026-11-21T12:00:00.000Z"))[1]["cases"]) == 1
        for bad in ({"state": "done"}, {"stat": "open"}, {"since": "yesterday"}, {"limit": "0"}):
            status, body = await _get(http, url, **bad)
            assert status == 400 and body["error"], bad
        assert (await _get(http, f"{url}/c-000000000000"))[0] == 404
        async with http.get(url) as resp:
            assert resp.status == 401  # reads need the token (or the page's cookie) too


def _cases(*records: dict[str, Any], confirm: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    confs = [Confirmation(a, datetime(2026, 1, 1, tzinfo=UTC), "ann", "") for a in confirm]
    return build_portfolio(records, confs, BackendConfig()).cases


def test_repair_after_the_failure_threshold_or_without_estimate_is_not_counted() -> None:
    s = Script(datetime(2026, 11, 21, 8, tzinfo=UTC))
    late = _cases(
        s.zone(0.0, "C", 3.0, ttf=(10.0, 8.0, 12.0)),
        s.zone(5.0, "D", 4.8),  # past the failure threshold (4.5) the estimate aimed at
        s.repair(6.0),
    )[0]
    assert late["failure_reached_at"] == s.zone(5.0, "D", 4.8)["detected_at"]
    assert late["repair_before_failure"] is False and late["downtime_avoided"] is None
    assert late["downtime_avoided_reason"] == "the repair did not come before the estimated failure"
    assert late["repair_window"]["hours"] == 5.0  # it closed when the threshold was reached
    blind = _cases(s.zone(10.0, "C", 3.0), s.repair(11.0))[0]
    assert blind["repair_before_failure"] is None and blind["lead_time_hours"] == 1.0
    assert blind["downtime_avoided_reason"] == "no time-to-failure estimate before the repair"


def test_a_confirmed_finding_stays_open_until_repaired_an_unconfirmed_one_clears() -> None:
    s = Script(datetime(2026, 11, 21, 8, tzinfo=UTC))
    raised = s.zone(0.0, "C", 3.0)
    seq = [raised, s.clear(1.0), s.zone(2.0, "C", 3.1), s.repair(3.0)]
    held = _cases(*seq, confirm=(raised["alert_id"],))
    assert [c["state"] for c in held] == ["repaired"] and held[0]["lead_time_hours"] == 3.0
    assert held[0]["records"] == 4  # the re-detection joined the confirmed case
    loose = build_portfolio(seq, [], BackendConfig())
    assert [c["state"] for c in loose.cases] == ["cleared", "repaired"]
    assert loose.cases[1]["follows"]["closed_as"] == "cleared"
    alone = build_portfolio([s.clear(4.0), s.repair(5.0)], [], BackendConfig())
    assert alone.cases == [] and len(alone.unmatched_maintenance) == 1


def test_extra_fields_null_estimates_and_garbage_do_not_break_cases_or_the_page() -> None:
    s = Script(datetime(2026, 11, 21, 8, tzinfo=UTC))
    prior = s.zone(1.0, "C", 3.0, ttf=(500.0, 200.0, 2000.0))
    prior["time_to_failure"]["model"] = "reliability-prior"
    prior["note"] = "velocity band not resolved"  # fields a newer agent may add
    prior["evidence"]["velocity_band"] = {"resolved": False}
    odd = s.zone(2.0, "D", 4.7)
    odd.update(severity="x", progression=None, time_to_failure={"hours": "NaN"}, evidence=[])
    garbage = [
        {**s.zone(3.0, "C", 3.0), "asset": "press-7"},  # no asset object: not in a case
        {**s.zone(3.0, "C", 3.0), "detected_at": "yesterday"},
    ]
    pf = build_portfolio([s.early_warning(0.0), prior, odd, *garbage], [], BackendConfig())
    assert pf.skipped_records == 2 and len(pf.cases) == 1
    case = pf.cases[0]
    assert case["latest_estimate"]["model"] == "reliability-prior"
    assert case["detection"]["progression"] is None and case["records"] == 3
    selection = {
        "cases": pf.cases,
        "totals": totals(pf.cases, "EUR"),
        "monitoring_gaps": [],
        "unmatched_maintenance": [],
        "generated_at": "2026-11-21T09:00:00.000Z",
    }
    page = render_page(selection, "EUR")
    assert 'class="ttf-band"' in page and "press-7" in page


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "assets:\n  press-7: {cost_per_hour: -1}\n",
            "backend.yaml:2:28: assets.press-7.cost_per_hour: Input should be greater",
        ),
        ("assets:\n  p: {zones_mm_s: {ab: 3, bc: 2, cd: 4}}\n", "must increase"),
        ("curency: EUR\n", "backend.yaml:1:1: curency: Extra inputs"),
        ("assets: [\n", "not valid YAML"),
    ],
)
def test_backend_yaml_errors_name_file_line_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "backend.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=re.escape(needle)):
        load_backend_config(path)


def test_edge_sim_backend_refuses_a_bad_yaml_before_binding(tmp_path: Path) -> None:
    path = tmp_path / "backend.yaml"
    path.write_text("assets:\n  press-7: {cost_per_hour: lots}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "simulators.cli", "backend", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{path}:2:28: assets.press-7.cost_per_hour" in proc.stderr
    assert proc.stdout == ""  # no READY line: nothing listens


def test_repair_is_judged_by_the_axis_that_expects_the_failure_first() -> None:
    # Before: the repair was judged by whichever axis reported last. In the demo the x axis
    # reported 0.5 s after the z axis and its later earliest failure (10:04:24.8 instead of
    # 10:04:22.4) became "the earliest estimated failure": a repair between the two counted
    # as before the failure, with its downtime avoided.
    s = Script(datetime(2026, 11, 21, 8, tzinfo=UTC))
    case = _cases(
        s.early_warning(0.0, ttf=(4.0, 3.0, 10.0)),  # z: earliest failure at +3 h
        s.early_warning(0.5, ttf=(10.0, 8.5, 20.0), channel="x"),  # x: at +9 h
        s.repair(5.0),
    )[0]
    assert case["repair_before_failure"] is False and case["downtime_avoided"] is None
    assert case["repair_window"]["to"] == s.early_warning(3.0)["detected_at"]
    assert case["repair_margin_hours"] == -2.0
