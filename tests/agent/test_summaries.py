"""Feature summaries: windows on the readings' own clock, statistics, bounds, the record."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema

from agent.summaries import SummaryAggregator
from drivers.reading import Reading
from tests.agent._configs import press_config

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "agent" / "schemas" / "summary-v1.json").read_text()
)
T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


def reading(t_s: float, v: float, channel: str = "z", sensor: str = "m1", **kw: object) -> Reading:
    return Reading(
        sensor,
        channel,
        T0 + timedelta(seconds=t_s),
        {"velocity_rms_mm_s": v},
        **kw,  # type: ignore[arg-type]
    )


def test_a_window_closes_with_the_first_reading_past_the_interval(tmp_path: Path) -> None:
    agg = SummaryAggregator(press_config(tmp_path), interval_s=10)
    drafts = [agg.add(reading(t, v)) for t, v in ((0, 1.0), (4, 3.0), (9.9, 2.0))]
    assert drafts == [None, None, None]
    assert agg.add(reading(5, 9.0, channel="x")) is None  # another channel, same window
    draft = agg.add(reading(10.0, 7.0))
    assert draft is not None
    rec = draft.record(gateway_id="gw-t", seq=7)
    jsonschema.validate(rec, SCHEMA)
    assert rec["summary_id"] == "gw-t-summary-000000000007"
    assert rec["asset"] == {"id": "press-7", "name": "Press 7", "tier": 1}
    assert rec["window"]["seconds"] == 9.9
    z = rec["channels"]["z"]
    assert z["readings"] == 3
    assert z["features"]["velocity_rms_mm_s"] == {"min": 1.0, "mean": 2.0, "max": 3.0, "last": 2.0}
    assert rec["channels"]["x"]["readings"] == 1
    # The reading that closed the window opens the next one.
    nxt = agg.add(reading(20.5, 1.0))
    assert nxt is not None and nxt.channels["z"]["features"]["velocity_rms_mm_s"]["min"] == 7.0


def test_a_clock_step_back_does_not_hold_a_live_window_open(tmp_path: Path) -> None:
    """NTP sets the gateway's clock back an hour mid-window: the window still closes after
    interval_s of real time (monotonic), not an hour and interval_s later."""
    agg = SummaryAggregator(press_config(tmp_path), interval_s=10)
    assert agg.add(reading(0, 1.0, mono_s=500.0)) is None
    assert agg.add(reading(5, 2.0, mono_s=505.0)) is None
    draft = agg.add(reading(10 - 3600, 3.0, mono_s=510.0))  # wall clock stepped back 1 h
    assert draft is not None
    assert draft.channels["z"]["readings"] == 2


def test_bad_and_non_finite_values_are_left_out_and_counted(tmp_path: Path) -> None:
    agg = SummaryAggregator(press_config(tmp_path), interval_s=5)
    agg.add(reading(0, 1.0))
    agg.add(reading(1, math.nan))
    agg.add(reading(2, 100.0, quality="bad"))
    draft = agg.add(reading(6, 1.0))
    assert draft is not None
    stats = draft.channels["z"]["features"]["velocity_rms_mm_s"]
    assert stats["max"] == 1.0 and agg.skipped_values_total == 1


def test_only_the_chosen_sensors_are_summarised(tmp_path: Path) -> None:
    agg = SummaryAggregator(press_config(tmp_path), interval_s=1, sensors=())
    assert agg.add(reading(0, 1.0)) is None and agg.add(reading(5, 1.0)) is None
    unknown = SummaryAggregator(press_config(tmp_path), interval_s=1)
    assert unknown.add(reading(0, 1.0, sensor="other")) is None
