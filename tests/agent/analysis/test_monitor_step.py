"""A step then flat (a rebalanced or re-mounted machine, a load change) is not a failure in
seconds: the trend model explains it as a jump with no growth after it (no critical), and a
critical sent on a time to failure that did not come (a short burst of growth, then flat) is
revised once its predicted failure time has passed, the metric has not grown since and the
estimate is out of the horizon."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from agent.analysis.monitor import Monitor
from agent.config import Config
from agent.store import Outbox
from agent.uplink import no_work_order
from drivers.reading import Reading
from simulators._case_facts import fact_of, summary

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
SCHEMA = json.loads((Path(__file__).parents[3] / "agent" / "schemas" / "alert-v1.json").read_text())
PRIOR = {"weibull": {"shape": 2.0, "scale_hours": 20000}, "age_hours": 5000}


def config(tmp_path: Path, prior: bool) -> Config:
    asset: dict[str, object] = {
        "id": "press-7", "name": "Press 7", "tier": 1,
        "machine": {"standard": "iso10816-3", "group": 2, "foundation": "rigid", "rpm": 1480},
    }  # fmt: skip
    if prior:
        asset["reliability"] = PRIOR
    return Config.model_validate(
        {
            "gateway": {"id": "gw-t"},
            "assets": [asset],
            "sensors": [{"id": "m1", "asset": "press-7", "modbus": {"host": "127.0.0.1"}}],
            "store": {"path": str(tmp_path / "o.db")},
        }
    )


def reading(rng: random.Random, v: float, minute: int, noise: float = 0.03) -> Reading:
    """m1's reading at `minute` at velocity level v (+/- `noise`; accel scaled with it)."""
    k = 1.0 + noise * rng.gauss(0.0, 1.0)
    feats = {"velocity_rms_mm_s": v * k, "accel_rms_g": 0.05 * v * k,
             "hf_accel_rms_g": 0.02 * v * k, "kurtosis": 3.0}  # fmt: skip
    return Reading("m1", "z", T0 + timedelta(minutes=minute), feats, mono_s=60.0 * minute)


def run(
    m: Monitor,
    levels: list[float],
    seed: int = 2,
    hours: list[float | None] | None = None,
    *,
    noise: float = 0.03,
    minutes: list[int] | None = None,
) -> list[dict]:
    """One reading a minute (or at `minutes`) at each velocity level (+/- 3 % noise);
    returns the records of the trend alert (hours: gets the estimate after each reading)."""
    rng = random.Random(seed)
    out = []
    for i, v in zip(range(len(levels)) if minutes is None else minutes, levels, strict=True):
        for d in m.update(reading(rng, v, i, noise)).drafts:
            if d.kind == "trend":
                out.append(d.record(gateway_id="gw-t", seq=len(out) + 1))
        if hours is not None:
            hours.append(getattr(m._channels[("m1", "z")].estimate, "hours", None))
    return out


async def stored(ob: Outbox, m: Monitor, levels: list[float], start: int) -> list[dict]:
    """As run, from minute `start`, with each update's records and state stored in `ob`."""
    rng = random.Random(2 + start)
    out = []
    for i, v in enumerate(levels, start):
        up = m.update(reading(rng, v, i))
        out += [r for r in await ob.append(up.drafts, up.state) if r["kind"] == "trend"]
    return out


RAMP = [3.2 ** (min(i, 8) / 8) for i in range(300)]  # 1.0 -> 3.2 mm/s in 8 min, then flat


def level(rec: dict) -> str:
    return rec["severity"]["level"]


@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.parametrize(
    "after",
    [
        [3.2] * 120,  # 1.0 -> 3.2 mm/s (zone C) and flat: before, critical "0.00045 h"
        [1.5] * 120,  # 1.0 -> 1.5 mm/s (zone B) and flat
        [2.95 if (i // 2) % 2 else 2.45 for i in range(120)],  # flips around B/C
    ],
    ids=["step-to-zone-c", "step-in-zone-b", "flip-2.45-2.95"],
)
def test_a_step_then_flat_is_not_a_failure_in_seconds(
    tmp_path: Path, prior: bool, after: list[float]
) -> None:
    """Before: the only model of a step was growth reaching the threshold in seconds, for
    ~45 min after it (0.00045 h without a prior, 0.0017 h with one), and a critical. Now a
    jump then growth from the new level competes: a jump alone carries no growth rate."""
    m = Monitor(config(tmp_path, prior))
    hours: list[float | None] = []
    recs = run(m, [1.0] * 120 + after, hours=hours)
    assert [(r["state"], level(r)) for r in recs] == [("raised", "warning")]
    after_10 = [h for h in hours[130:] if h is not None]  # 10 readings after the step on
    assert not after_10 or min(after_10) >= 1.0, min(after_10)


def test_a_jump_then_growth_still_escalates_on_the_growth_after_it(tmp_path: Path) -> None:
    """1.0 -> 2.0 mm/s, then 2 %/min: the threshold (4.5) comes 40 min after the jump. The
    critical now comes from the growth after the jump (before: on the jump itself, with
    0.06 h), still well before the failure."""
    m = Monitor(config(tmp_path, False))
    recs = run(m, [1.0] * 120 + [2.0 * math.exp(0.02 * i) for i in range(60)])
    crit = [r for r in recs if (r["state"], level(r)) == ("escalated", "critical")]
    assert crit
    at = datetime.fromisoformat(crit[0]["detected_at"].replace("Z", "+00:00"))
    assert at <= T0 + timedelta(minutes=120 + 20)  # 20 min or more before the threshold


@pytest.mark.parametrize("prior", [False, True])
def test_a_critical_that_did_not_come_is_revised_in_the_same_episode(
    tmp_path: Path, prior: bool
) -> None:
    m = Monitor(config(tmp_path, prior))
    recs = run(m, [1.0] * 120 + RAMP)  # a burst of growth: a critical, then flat for hours
    states = [(r["state"], level(r)) for r in recs]
    assert ("escalated", "critical") in states
    esc = states.index(("escalated", "critical"))
    rev = [r for r in recs[esc + 1 :] if r["evidence"].get("revision")]
    assert rev, states  # before: the critical stayed, whatever the later estimates said
    r = rev[0]
    assert (r["state"], level(r)) == ("escalated", "warning")  # v1: the episode goes on
    assert [s for s, _ in states].count("raised") == 1  # not a new alert
    revision = r["evidence"]["revision"]
    assert revision["revises"] == "critical"
    assert revision["escalated_at"] == recs[esc]["detected_at"]
    due = datetime.fromisoformat(revision["predicted_failure_at"].replace("Z", "+00:00"))
    assert due <= datetime.fromisoformat(r["detected_at"].replace("Z", "+00:00"))
    assert "did not come" in revision["reason"]
    jsonschema.validate(r, SCHEMA)
    assert "revision" in (no_work_order(r) or "")  # the critical's work order stays
    fact = fact_of(r)  # the portfolio's line for it
    assert fact is not None and summary(fact).startswith("critical revised to a warning: ")
    ttf = r["time_to_failure"]
    assert ttf is None or ttf["hours"] >= 168.0  # no longer under the planning horizon
    assert m._channels[("m1", "z")].trend.active == 1  # still a warning: the machine changed


def test_a_growing_metric_keeps_its_critical_past_the_predicted_time(tmp_path: Path) -> None:
    """Accelerating degradation: escalates when it did before, and a failure that comes later
    than its estimate said is not called off while the metric climbs."""
    m = Monitor(config(tmp_path, False))
    grow = [1.0 * math.exp(0.0004 * i * i) for i in range(100)]  # to 55 mm/s over 100 min
    recs = run(m, [1.0] * 120 + grow)
    states = [(r["state"], level(r)) for r in recs]
    assert states[:2] == [("raised", "warning"), ("escalated", "critical")]
    assert recs[1]["detected_at"] == "2026-11-23T10:35:00.000Z"  # as before this change
    assert not [r for r in recs if r["evidence"].get("revision")]


def test_a_critical_is_not_revised_before_its_predicted_failure_time(tmp_path: Path) -> None:
    """A revision needs the estimate's own failure time to have passed: within it the
    critical stands, whatever the estimate does (a late warning costs a failure)."""
    m = Monitor(config(tmp_path, False))
    recs = run(m, [1.0] * 120 + RAMP[:10])  # to the critical (10:09), its failure not due
    assert [(r["state"], level(r)) for r in recs][-1] == ("escalated", "critical")
    st = m._channels[("m1", "z")].trend
    assert st.due_s is not None and st.due_hours is not None and st.escalated_at


def test_a_critical_is_not_revised_while_the_failure_is_inside_its_bounds(tmp_path: Path) -> None:
    """The point is about the remaining L10 (early by design), so a failure that has not come
    by it is still inside the forecast. Before: 10 % noise, 2 %/min for 30 min then flat,
    the critical (0.44 h, bounds to 1.24 h) was revised 47 min after it, 27 min before its
    own upper bound (FEMTO Bearing1_1 v: 0.48 h [0.33, 4.0] revised 29 min on, 16 min
    before the failure). Now a revision waits for the upper bound."""
    m = Monitor(config(tmp_path, False))
    levels = [1.0] * 120 + [math.exp(0.02 * i) for i in range(30)]
    levels += [levels[-1]] * 240
    recs = run(m, levels, noise=0.1)
    crit = [r for r in recs if level(r) == "critical"]
    rev = [r for r in recs if r["evidence"].get("revision")]
    assert crit and rev  # the scenario: a critical, then flat for hours
    esc_at = datetime.fromisoformat(crit[0]["detected_at"].replace("Z", "+00:00"))
    latest = esc_at + timedelta(hours=crit[0]["time_to_failure"]["upper_hours"])
    rev_at = datetime.fromisoformat(rev[0]["detected_at"].replace("Z", "+00:00"))
    assert rev_at >= latest, (rev_at, latest)
    revision = rev[0]["evidence"]["revision"]
    assert revision["latest_failure_at"] is not None
    assert "at the latest" in revision["reason"]


def test_a_stopped_machine_s_time_to_failure_does_not_count_down_to_0(tmp_path: Path) -> None:
    """The trend's time to failure is running time: before, a machine stopped for the night
    saw its estimate (replay's estimate lines, Monitor.current) counted down through the
    stop: 4.1 h at the stop, 0 h ("failure due") 4.3 h into it, though nothing wore. Now it
    stays as at the last running reading while the machine stands."""
    m = Monitor(config(tmp_path, False))
    grow = [math.exp(0.004 * i) for i in range(120)]
    run(m, [1.0] * 120 + grow)  # degradation: an estimate of ~4 h
    cur = m.current("m1", "z")
    assert cur is not None and cur[2] is not None
    before = cur[2].hours
    assert 1.0 < before < 10.0, before
    for i in range(600):  # stopped 10 h (velocity under the running floor)
        at = T0 + timedelta(minutes=240 + i)
        feats = {"velocity_rms_mm_s": 0.01, "accel_rms_g": 0.0005, "hf_accel_rms_g": 0.0002}
        m.update(Reading("m1", "z", at, feats, mono_s=60.0 * (240 + i)))
    (view,) = m.views()
    assert view.stopped
    cur = m.current("m1", "z")
    assert cur is not None and cur[2] is not None
    assert cur[2].hours == pytest.approx(before, abs=0.05)  # before: 0.0


def test_a_critical_with_bounds_of_years_is_revised_once_the_horizon_has_passed(
    tmp_path: Path,
) -> None:
    """A critical whose bounds mix in the reliability prior (4.8 h, to 36000 h): waiting
    for its upper bound would hold it for years. The critical claimed a failure within the
    planning horizon (168 h): once that has passed, flat, it is revised."""
    m = Monitor(config(tmp_path, True))
    # Jump, growth, flat: the growth ends 70 min after the jump, within minutes of the
    # critical (one whose metric grows on after it is a failure late, not called off).
    levels = [1.0] * 120 + [2.0 * math.exp(0.005 * i) for i in range(70)]
    minutes = list(range(len(levels)))
    for _ in range(360):  # then flat, one reading every 30 min for 180 h
        minutes.append(minutes[-1] + 30)
        levels.append(levels[-1])
    recs = run(m, levels, minutes=minutes)
    crit = [r for r in recs if level(r) == "critical"]
    assert crit and crit[0]["time_to_failure"]["upper_hours"] > 10_000  # the scenario
    rev = [r for r in recs if r["evidence"].get("revision")]
    assert rev  # not held for years
    esc_at = datetime.fromisoformat(crit[0]["detected_at"].replace("Z", "+00:00"))
    rev_at = datetime.fromisoformat(rev[0]["detected_at"].replace("Z", "+00:00"))
    assert rev_at >= esc_at + timedelta(hours=168)  # not before the claim is falsified


@pytest.mark.parametrize("restart", [False, True])
async def test_a_critical_again_after_a_revision_says_so_and_opens_no_second_work_order(
    tmp_path: Path, restart: bool
) -> None:
    """Before: the critical after a revision was a plain escalation, and the CMMS uplink
    opened a second work order for the episode (its first critical's still open). Now it
    carries evidence.re_escalation (the first critical's time), also after a restart
    between the revision and the new critical (the saved lifecycle keeps it), and opens
    none."""
    cfg = config(tmp_path, False)
    levels = [1.0] * 120 + RAMP + [3.2 * math.exp(0.02 * i) for i in range(60)]
    split = 120 + len(RAMP) if restart else len(levels)
    async with Outbox(tmp_path / "o.db", gateway_id="gw-t", max_bytes=1 << 30) as ob:
        m = Monitor(cfg)
        recs = await stored(ob, m, levels[:split], 0)
        if restart:
            m = Monitor(cfg, state=await ob.load_state())
            recs += await stored(ob, m, levels[split:], split)
    states = [(r["state"], level(r)) for r in recs]
    crit = [i for i, s in enumerate(states) if s == ("escalated", "critical")]
    rev = [i for i, r in enumerate(recs) if r["evidence"].get("revision")]
    assert len(crit) == 2 and len(rev) == 1 and crit[0] < rev[0] < crit[1], states
    first, again = recs[crit[0]], recs[crit[1]]
    assert "re_escalation" not in first["evidence"] and no_work_order(first) is None
    assert again["evidence"]["re_escalation"]["first_critical_at"] == first["detected_at"]
    assert "no second work order" in (no_work_order(again) or "")
    jsonschema.validate(again, SCHEMA)
