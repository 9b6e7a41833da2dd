"""The portfolio page: one self-contained HTML document (inline CSS and SVG, no script).

A table of cases by tier and state, then each case: what was detected, when and how
severe, how it evolved, who confirmed it, when it was repaired, how early, and what that
saved, with its charts. Every value that came from a record is escaped.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from simulators._case_facts import bounds, duration, rate
from simulators.charts import (
    NARROW,
    WIDE,
    esc,
    has_values,
    health_chart,
    severity_chart,
    ttf_chart,
)

MAX_DETAILED = 20  # cases drawn in full (six small charts each) on one page
TIER_NAMES = {1: "Tier 1 (critical)", 2: "Tier 2", 3: "Tier 3"}
STATE_TEXT = {
    "open": "open: detected, awaiting confirmation",
    "confirmed": "confirmed: awaiting repair",
    "repaired": "repaired",
    "cleared": "cleared without repair",
}
LEGEND = (
    "ISO 10816 / 20816 vibration zones: A newly commissioned; B unrestricted long-term "
    "operation; C plan maintenance, not for long-term operation; D damage likely."
)
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2329;
background:#f5f6f7}
main{max-width:1240px;margin:0 auto;padding:12px 16px 40px}
h1{font-size:1.5em;margin:.4em 0 .1em}h2{font-size:1.2em;margin:1.4em 0 .5em}
h3{font-size:1.1em;margin:0 0 .4em}.sub,.legend{color:#4a545e;margin:.2em 0}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.tile{background:#fff;border:1px solid #d6dadf;border-radius:6px;padding:8px 12px;min-width:140px}
.tile b{display:block;font-size:1.35em}
.tablewrap{overflow-x:auto;background:#fff;border:1px solid #d6dadf;border-radius:6px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:6px 8px;
vertical-align:top;border-bottom:1px solid #e4e7ea}thead th{background:#eef0f2;font-size:.9em}
tr.group th{background:#e3e8ee}small{color:#4a545e}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:.85em;white-space:nowrap}
.open{background:#fde2b5}.confirmed{background:#cfe3fb}.repaired{background:#cdebd0}
.cleared{background:#e4e6e8}.yes{color:#1b5e20;font-weight:600}.no{color:#b71c1c;font-weight:600}
.case{background:#fff;border:1px solid #d6dadf;border-radius:6px;padding:12px 14px;margin:14px 0}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0}
.facts dt{color:#4a545e}.facts dd{margin:0}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:10px}
figure{margin:0;overflow-x:auto}figcaption{font-size:.9em;color:#4a545e}
svg.chart{width:100%;height:auto;background:#fff}svg.narrow{display:none}
details{margin-top:8px}.timeline td{font-size:.9em}
@media (max-width:720px){
 table.cases thead{display:none}table.cases tr{display:block;border-bottom:2px solid #d6dadf}
 table.cases td{display:grid;grid-template-columns:9.5em 1fr;gap:6px;border:0;padding:3px 8px}
 table.cases td::before{content:attr(data-label);color:#4a545e}
 table.cases tr.group th{display:block}.charts{grid-template-columns:1fr}
 svg.wide{display:none}svg.narrow{display:block}}
"""
COLUMNS = (
    "Tier",
    "State",
    "Asset",
    "Detected",
    "First finding",
    "Failure estimate",
    "Confirmed",
    "Repaired",
    "Lead time",
    "Before est. failure",
    "Downtime avoided",
)


def when(stamp: str | None) -> str:
    """A record time as 'YYYY-MM-DD HH:MM:SS UTC'."""
    return "—" if not stamp else f"{stamp[:10]} {stamp[11:19]} UTC"


def _num(value: Any, fmt: str = ".3g") -> str:
    return "?" if not isinstance(value, int | float) else format(value, fmt)


def estimate_text(est: dict[str, Any] | None) -> str:
    """'24 s (23.6-24.4 s)' for an estimate, or ''."""
    return bounds(est["hours"], est["lower_hours"], est["upper_hours"]) if est else ""


def finding(det: dict[str, Any]) -> str:
    """What the first detection saw, in a few words."""
    what = "early warning" if det["kind"] == "trend" else f"{det['kind']} alert"
    parts = []
    if det["zone"]:
        parts.append(f"zone {det['zone']}")
    if det["velocity_mm_s"] is not None:
        parts.append(f"{_num(det['velocity_mm_s'], '.2f')} mm/s")
    if det["health_index"] is not None:
        parts.append(f"health index {_num(det['health_index'])}")
    return f"{what} ({', '.join(parts)})" if parts else what


def _estimate_cell(case: dict[str, Any]) -> str:
    at_detection = case["detection"]["time_to_failure"]
    if at_detection:
        return esc(estimate_text(at_detection))
    first = case["first_estimate"]
    if first:
        return (
            f"none at detection; first {esc(estimate_text(first))} "
            f"<small>at {esc(first['at'][11:19])}</small>"
        )
    return "no estimate"


def _before_cell(case: dict[str, Any]) -> str:
    before, margin = case["repair_before_failure"], case["repair_margin_hours"]
    if before is True:
        return f'<span class="yes">yes</span>, {esc(duration(margin))} before'
    if before is False:
        return '<span class="no">no</span>'
    return "—" if case["repair"] is None else "unknown (no estimate)"


def _saved_text(saved: dict[str, Any] | None) -> str:
    if not saved:
        return "—"
    cost = "" if saved["cost"] is None else f" · {saved['currency']} {saved['cost']:,.0f}"
    return f"{saved['hours']:g} h{cost}"


def _row(case: dict[str, Any], detailed: bool) -> str:
    det, asset = case["detection"], case["asset"]
    conf = case["confirmation"]
    cells = (
        esc(asset["tier"] if asset["tier"] is not None else "?"),
        f'<span class="badge {esc(case["state"])}">{esc(case["state"])}</span>',
        f'<a href="{"" if detailed else _asset_page(asset["id"])}#{esc(case["id"])}">'
        f"{esc(asset['id'])}</a><br>"
        f"<small>{esc(asset['name'])}</small>",
        esc(when(case["opened_at"])),
        esc(finding(det)),
        _estimate_cell(case),
        "—"
        if not conf
        else f"+{esc(duration(conf['hours_after_detection']))} <small>by {esc(conf['by'])}</small>",
        esc(when(case["repair"]["at"])) if case["repair"] else "—",
        esc(duration(case["lead_time_hours"])) if case["lead_time_hours"] is not None else "—",
        _before_cell(case),
        esc(_saved_text(case["downtime_avoided"])),
    )
    classes = (
        "tier",
        "state",
        "asset",
        "detected",
        "finding",
        "estimate",
        "confirmed-at",
        "repaired-at",
        "lead-time",
        "before",
        "saved",
    )
    tds = "".join(
        f'<td class="{c}" data-label="{esc(label)}"><span>{cell}</span></td>'
        for c, label, cell in zip(classes, COLUMNS, cells, strict=True)
    )
    return f'<tr class="case-row" data-case="{esc(case["id"])}">{tds}</tr>'


def _asset_page(asset_id: str) -> str:
    """The page of one asset's cases (escaped for an attribute)."""
    return esc("/portfolio?" + urlencode({"asset": asset_id}))


def _table(cases: list[dict[str, Any]]) -> str:
    rows, tier = [], object()
    for i, case in enumerate(cases):
        if case["asset"]["tier"] != tier:
            tier = case["asset"]["tier"]
            name = TIER_NAMES.get(tier, f"Tier {tier}") if isinstance(tier, int) else "Tier ?"
            rows.append(f'<tr class="group"><th colspan="{len(COLUMNS)}">{esc(name)}</th></tr>')
        rows.append(_row(case, detailed=i < MAX_DETAILED))
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    return (
        f'<div class="tablewrap"><table class="cases"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _story(case: dict[str, Any]) -> str:
    det = case["detection"]
    parts = [f"Detected {when(det['at'])} on {det['sensor']} {det['channel']}: {det['summary']}."]
    ttf = det["time_to_failure"]
    parts.append(
        f"Estimated failure at detection: {estimate_text(ttf)}."
        if ttf
        else f"No failure estimate at detection ({det['no_estimate_reason'] or 'no trend yet'})."
    )
    if case["escalations"]:
        last = case["escalations"][-1]
        parts.append(
            f"Escalated {len(case['escalations'])}x, last {last['at'][11:19]}: {last['summary']}."
        )
    if case["confirmation"]:
        c = case["confirmation"]
        note = f" ({c['note']})" if c["note"] else ""
        parts.append(
            f"Confirmed by {c['by']} {duration(c['hours_after_detection'])} after detection{note}."
        )
    if case["repair"]:
        note = f" ({case['repair']['note']})" if case["repair"]["note"] else ""
        parts.append(f"Repaired {duration(case['lead_time_hours'])} after detection{note}.")
    if case["failure_reached_at"]:
        parts.append(f"The failure threshold was reached at {case['failure_reached_at'][11:19]}.")
    if case["follows"]:
        f = case["follows"]
        gap = f" {duration(f['hours_after'])}" if f["hours_after"] is not None else ""
        parts.append(f"Came{gap} after case {f['case']} ({f['closed_as']}).")
    return esc(" ".join(parts))


def _facts(case: dict[str, Any]) -> str:
    window = case["repair_window"]
    prog = case["progression"]["latest"]
    saved = case["downtime_avoided"]
    items = [
        ("State", STATE_TEXT.get(case["state"], case["state"])),
        (
            "Peak",
            f"zone {case['peak']['zone'] or '?'}, "
            f"{_num(case['peak']['velocity_mm_s'], '.2f')} mm/s",
        ),
        ("Latest estimate", estimate_text(case["latest_estimate"]) or "none"),
        ("Progression", "—" if not prog else rate(prog["rate_per_day"], prog["unit"])),
        (
            "Repair window",
            "—"
            if not window
            else f"{duration(window['hours'])}, until {when(window['to'])} "
            "(earliest estimated failure)",
        ),
        (
            "Lead time",
            "—"
            if case["lead_time_hours"] is None
            else f"{duration(case['lead_time_hours'])} from detection to repair",
        ),
        (
            "Downtime avoided",
            _saved_text(saved)
            + (f" ({saved['basis']})" if saved else f" ({case['downtime_avoided_reason']})"),
        ),
        (
            "Monitoring gaps",
            ", ".join(
                f"{g['sensor']} from {g['from'][11:19]} to {(g['to'] or 'now')[11:19]}"
                for g in case["monitoring_gaps"]
            )
            or "none",
        ),
    ]
    return (
        '<dl class="facts">'
        + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items)
        + "</dl>"
    )


def _timeline(case: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{esc(p['at'][11:23])}</td><td>{esc(p['kind'])} {esc(p['state'])}</td>"
        f"<td>{esc(p['sensor'])} {esc(p['channel'])}</td><td>{esc(p['summary'])}</td></tr>"
        for p in case["timeline"]
    )
    return (
        f"<details><summary>Timeline: {len(case['timeline'])} records</summary>"
        f'<div class="tablewrap"><table class="timeline">{rows}</table></div></details>'
    )


def _case_section(case: dict[str, Any]) -> str:
    asset = case["asset"]
    charts = [
        (
            "Vibration severity (velocity RMS) with the ISO zones; the red band is the "
            "estimated failure with its 95 % bounds",
            severity_chart,
        )
    ]
    if has_values(case, ("health_index",)):
        charts.append(("Health index against the machine's learned baseline", health_chart))
    if has_values(case, ("time_to_failure",)):
        charts.append(("Time to failure at each alert, with its bounds", ttf_chart))
    figures = "".join(
        f"<figure>{draw(case, WIDE)}{draw(case, NARROW)}<figcaption>{esc(cap)}</figcaption>"
        "</figure>"
        for cap, draw in charts
    )
    return (
        f'<section class="case" id="{esc(case["id"])}"><h3>{esc(asset["id"])} · '
        f'{esc(asset["name"])} <span class="badge {esc(case["state"])}">{esc(case["state"])}'
        f'</span> <small><a href="/v1/cases/{esc(case["id"])}">JSON</a></small></h3>'
        f'<p class="story">{_story(case)}</p>{_facts(case)}'
        f'<div class="charts">{figures}</div>{_timeline(case)}</section>'
    )


def _details(cases: list[dict[str, Any]]) -> str:
    """The sections of the first MAX_DETAILED cases; the others link to their asset's page."""
    if not cases:
        return ""
    more = len(cases) - MAX_DETAILED
    note = (
        f"<p>The first {MAX_DETAILED} cases in the table's order are shown in full here; the "
        f"other {more} open on their asset's page (follow the asset in the table).</p>"
        if more > 0
        else ""
    )
    return "<h2>Cases</h2>" + note + "".join(_case_section(c) for c in cases[:MAX_DETAILED])


def render_page(selection: dict[str, Any], currency: str) -> str:
    """The whole page for a selection of GET /v1/cases (cases with their timelines)."""
    cases, tot = selection["cases"], selection["totals"]
    cost = tot["downtime_avoided_cost"]
    tiles = [
        ("cases", tot["cases"]),
        ("open or confirmed", tot["by_state"]["open"] + tot["by_state"]["confirmed"]),
        ("repaired before the estimated failure", tot["repaired_before_failure"]),
        (
            "downtime avoided",
            f"{tot['downtime_avoided_hours']:g} h"
            + ("" if cost is None else f" · {currency} {cost:,.0f}"),
        ),
    ]
    gaps = selection["monitoring_gaps"]
    extra = ""
    if gaps:
        extra += (
            "<h2>Monitoring gaps</h2><ul>"
            + "".join(
                f"<li>{esc(g['asset'])}: sensor {esc(g['sensor'])} silent from "
                f"{esc(when(g['from']))}"
                f" to {esc(when(g['to']) if g['to'] else 'now')}</li>"
                for g in gaps
            )
            + "</ul>"
        )
    if selection["unmatched_maintenance"]:
        extra += (
            "<h2>Maintenance without a case</h2><ul>"
            + "".join(
                f"<li>{esc(m['asset'])} {esc(when(m['at']))}: {esc(m['note'] or '')}</li>"
                for m in selection["unmatched_maintenance"]
            )
            + "</ul>"
        )
    body = (
        "<main><h1>Prevented-failure portfolio</h1>"
        f'<p class="sub">Generated {esc(when(selection["generated_at"]))} from the alert '
        'records the gateways forwarded · <a href="/v1/cases">cases as JSON</a></p>'
        '<div class="tiles">'
        + "".join(f'<div class="tile"><b>{esc(v)}</b>{esc(k)}</div>' for k, v in tiles)
        + f'</div><p class="legend">{esc(LEGEND)}</p><h2>Cases by tier and state</h2>'
        + (_table(cases) if cases else "<p>No case yet: no alert has been raised.</p>")
        + _details(cases)
        + extra
        + "<footer><p class='sub'>Every figure comes from the alert records (schema "
        "edge-agent/alert/v1); time-to-failure bounds are 95 %. Downtime avoided counts only "
        "repairs that came before the earliest estimated failure, with the backend's asset "
        "figures.</p></footer></main>"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Prevented-failure portfolio</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>"
    )
