"""A baseline is learned only from readings of the running machine: a gateway commissioned
during a planned stop, or an asset repaired and relearning before its restart, waits for
the machine to run, and its first healthy running readings raise nothing."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.analysis.channel import WAIT_WARN_S, saved_states
from agent.analysis.monitor import Monitor
from agent.config import Config, ConfigError, load_config
from drivers.reading import Reading
from tests.agent._configs import press_config, write_yaml

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
STOPPED = (0.02, 0.001)  # velocity RMS mm/s, accel RMS g: ambient vibration at standstill


class Feed:
    """Readings one minute apart into a real Monitor, with +/- 3 % deterministic noise."""

    def __init__(self, monitor: Monitor) -> None:
        self.m, self.i = monitor, 0
        self.records: list[tuple[str, str]] = []

    def run(self, n: int, velocity: float, accel: float) -> list[tuple[str, str]]:
        out = []
        for _ in range(n):
            wobble = 1.0 + 0.03 * ((self.i * 7) % 5 - 2) / 2
            feats = {"velocity_rms_mm_s": velocity * wobble, "accel_rms_g": accel * wobble}
            at = T0 + timedelta(minutes=self.i)
            out += [(d.kind, d.state) for d in self.m.update(Reading("m1", "z", at, feats)).drafts]
            self.i += 1
        self.records += out
        return out

    def degrade(self, velocity: float, accel: float) -> list[tuple[str, str]]:
        """A bearing wearing out from the given running level: both features grow 3 %
        a reading for 60 readings."""
        return [r for k in range(60) for r in self.run(1, velocity * 1.03**k, accel * 1.03**k)]


def machine(tmp_path: Path, **machine: Any) -> Config:
    data = press_config(tmp_path, baseline_readings=20).model_dump(mode="json", by_alias=True)
    data["assets"][0]["machine"].update(machine)
    return Config.model_validate(data)


def test_commissioned_during_a_stop_learns_when_the_machine_runs(tmp_path: Path) -> None:
    """Before: 30 readings at standstill (0.02 mm/s) formed the baseline, and the healthy
    machine's first running readings (1.0 mm/s) raised a trend warning (health index 0.46
    over its level 0.2), escalated to critical with 0.0004 h to failure. Now the readings
    under machine.running_above_mm_s (0.05 mm/s) form no baseline: status says it waits
    for the machine to run, the baseline is learned once it runs, and a later wear is
    detected."""
    m = Monitor(press_config(tmp_path, baseline_readings=20))
    feed = Feed(m)
    assert feed.run(30, *STOPPED) == []
    (view,) = m.views()
    assert view.stopped and view.learning is not None
    assert "waiting for the machine to run" in view.learning
    assert "0 of 20 readings" in view.learning
    current = m.current("m1", "z")
    assert current is not None and current[3] is not None
    assert "waiting for the machine to run" in current[3]
    assert "machine.running_above_mm_s 0.05 mm/s" in current[0].standard

    assert feed.run(200, 1.0, 0.05) == []  # healthy running: no alert
    ch = m._channels[("m1", "z")]
    assert ch.hi.ready and ch.hi.velocity_median == pytest.approx(1.0, rel=0.05)
    assert m.views()[0].learning is None
    assert ("trend", "raised") in feed.degrade(1.0, 0.05)


def test_a_repair_then_a_stop_then_the_restart_raises_nothing(tmp_path: Path) -> None:
    """A technician records maintenance (the baseline is relearned) while the machine is
    still stopped for the repair; it restarts healthy an hour later: no alert, and the new
    baseline is the running machine's."""
    m = Monitor(press_config(tmp_path, baseline_readings=20))
    feed = Feed(m)
    assert feed.run(40, 1.0, 0.05) == []
    assert feed.run(30, 3.2, 0.12)  # worn: alerts raised
    up = m.maintenance("press-7", T0 + timedelta(minutes=feed.i), "bearing replaced")
    assert [(d.kind, d.state) for d in up.drafts] == [("maintenance", "cleared")]
    assert feed.run(60, *STOPPED) == []
    assert "waiting for the machine to run" in (m.views()[0].learning or "")
    assert feed.run(200, 1.0, 0.05) == []
    assert m._channels[("m1", "z")].hi.velocity_median == pytest.approx(1.0, rel=0.05)
    assert ("trend", "raised") in feed.degrade(1.0, 0.05)


def test_a_slow_well_balanced_machine_is_learned_and_watched(tmp_path: Path) -> None:
    """A machine that runs at 0.15 mm/s (three times the 0.05 mm/s default floor) learns its
    baseline from its running readings, even when commissioned during a stop; its stops
    hold its alerts as they were, and its wear raises the trend alert."""
    m = Monitor(press_config(tmp_path, baseline_readings=20))
    feed = Feed(m)
    assert feed.run(30, *STOPPED) == []
    assert feed.run(100, 0.15, 0.01) == []
    ch = m._channels[("m1", "z")]
    assert ch.hi.ready and ch.hi.velocity_median == pytest.approx(0.15, rel=0.05)
    assert feed.run(60, *STOPPED) == []
    assert m.views()[0].stopped
    assert feed.run(20, 0.15, 0.01) == []
    assert ("trend", "raised") in feed.degrade(0.15, 0.01)


def test_the_floor_is_set_per_machine(tmp_path: Path) -> None:
    """A machine quieter still (0.04 mm/s) waits under the default floor, and learns with
    machine.running_above_mm_s set under its level (0 counts every reading as running)."""
    for floor, learned in ((None, False), (0.03, True), (0.0, True)):
        cfg = machine(tmp_path) if floor is None else machine(tmp_path, running_above_mm_s=floor)
        m = Monitor(cfg)
        Feed(m).run(40, 0.04, 0.004)
        assert m._channels[("m1", "z")].hi.ready is learned, floor
    with pytest.raises(ValidationError, match="running_above_mm_s"):
        machine(tmp_path, running_above_mm_s=-1)


def test_a_baseline_saved_from_a_standstill_is_learned_again(tmp_path: Path) -> None:
    """A baseline learned at standstill by a version without the floor (here: the floor
    set to 0) had raised a trend alert on the healthy running machine; the agent restarted
    with the floor closes it, saying why, and learns the running machine's baseline: no
    further alert. (Raising the floor by a reload over a learned baseline does the same.)"""
    old = Monitor(machine(tmp_path, running_above_mm_s=0))
    feed = Feed(old)
    feed.run(30, *STOPPED)
    assert ("trend", "raised") in feed.run(10, 1.0, 0.05)  # the wrong alert
    state = saved_states(old._channels[("m1", "z")])  # what the store held at the upgrade
    m = Monitor(press_config(tmp_path, baseline_readings=20), state=state)
    feed.m = m
    up = m.update(Reading("m1", "z", T0 + timedelta(minutes=feed.i),
                          {"velocity_rms_mm_s": 1.0, "accel_rms_g": 0.05}))  # fmt: skip
    feed.i += 1
    (closed,) = up.drafts
    assert (closed.kind, closed.state) == ("trend", "cleared")
    assert "learned at standstill" in str(closed.evidence)
    assert feed.run(200, 1.0, 0.05) == []
    assert m._channels[("m1", "z")].hi.velocity_median == pytest.approx(1.0, rel=0.05)


def test_a_wrong_floor_is_explained_in_mm_s(tmp_path: Path) -> None:
    """The check's message names the setting's unit: velocity, not seconds (its key ends
    in _s, which every other key so ending means)."""
    path = write_yaml(machine(tmp_path), tmp_path / "c.yaml")
    path.write_text(path.read_text().replace("running_above_mm_s: 0.05", "running_above_mm_s: 40"))
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    (issue,) = exc.value.issues
    assert issue.message == "got 40; expected a number of mm/s (velocity RMS) from 0 to 10"


def _waiting_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "no baseline learned after" in r.getMessage()]


def test_a_channel_waiting_a_day_to_run_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a sensor reporting velocity in m/s (1.0 mm/s read as 0.001) waited under the
    0.05 mm/s floor for ever, never learned nor watched, and only status said so: no log
    line. Now, after WAIT_WARN_S of readings all under the floor, one warning names the
    channel, the setting and the median velocity seen; the next day adds no second one; and
    the machine's first running reading is logged once as the start of learning."""
    m = Monitor(press_config(tmp_path, baseline_readings=20))
    caplog.set_level(logging.INFO, logger="agent.analysis.monitor")
    at = lambda i: T0 + timedelta(minutes=10 * i)  # noqa: E731
    feats = {"velocity_rms_mm_s": 0.001, "accel_rms_g": 0.00005}
    for i in range(int(WAIT_WARN_S / 600)):  # just under a day
        assert m.update(Reading("m1", "z", at(i), feats)).drafts == []
    assert _waiting_logs(caplog) == []
    for i in range(int(WAIT_WARN_S / 600), int(2 * WAIT_WARN_S / 600) + 5):  # a second day
        m.update(Reading("m1", "z", at(i), feats))
    (warned,) = _waiting_logs(caplog)
    text = warned.getMessage()
    assert warned.levelname == "WARNING"
    assert "asset press-7 sensor m1 channel z" in text
    assert "24.0 h" in text and "machine.running_above_mm_s 0.05 mm/s" in text
    assert "velocity RMS median 0.001 mm/s" in text and "m/s" in text
    running = {"velocity_rms_mm_s": 1.0, "accel_rms_g": 0.05}
    for i in range(400, 403):
        m.update(Reading("m1", "z", at(i), running))
    started = [r for r in caplog.records if "learning the baseline" in r.getMessage()]
    assert len(started) == 1 and "velocity RMS 1 mm/s" in started[0].getMessage()
    assert len(_waiting_logs(caplog)) == 1


def test_a_running_reading_restarts_the_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A machine stopped most of the day but running now and then is learning: its waits
    are each under a day, so nothing is logged."""
    m = Monitor(press_config(tmp_path, baseline_readings=200))
    caplog.set_level(logging.INFO, logger="agent.analysis.monitor")
    i = 0
    for _ in range(3):  # 20 h stopped, then an hour running, three times
        for _ in range(120):
            m.update(
                Reading("m1", "z", T0 + timedelta(minutes=10 * i), {"velocity_rms_mm_s": 0.01})
            )
            i += 1
        for _ in range(6):
            m.update(Reading("m1", "z", T0 + timedelta(minutes=10 * i), {"velocity_rms_mm_s": 1.0}))
            i += 1
    assert _waiting_logs(caplog) == []
    assert m.views()[0].learning is not None  # 18 of 200 running readings: still learning


def test_the_wait_to_run_counts_across_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the wait's start lived in memory only, so a gateway restarted every night (a
    power cycle, an update) never logged a channel that no running reading ever reached:
    each process saw under a day. Now the wait is saved with the model state; a wait that
    ended (the machine ran) is saved ended, and starts afresh at the next stop."""
    config = press_config(tmp_path, baseline_readings=20)
    caplog.set_level(logging.INFO, logger="agent.analysis.monitor")
    at = lambda i: T0 + timedelta(minutes=10 * i)  # noqa: E731
    stopped = {"velocity_rms_mm_s": 0.001, "accel_rms_g": 0.00005}
    saved: dict[str, str] = {}
    day = int(WAIT_WARN_S / 600)
    i = 0
    for _ in range(3):  # three processes of 10 h each (a restart in between)
        m = Monitor(config, state=saved)
        for _ in range(60):
            saved.update(m.update(Reading("m1", "z", at(i), stopped)).state)
            i += 1
    (warned,) = _waiting_logs(caplog)
    assert "no baseline learned after 24.0 h" in warned.getMessage()
    assert i > day  # the warning came in the third process, after a day of readings
    # The machine runs once, then stops again: after a restart the new wait starts then.
    m = Monitor(config, state=saved)
    saved.update(m.update(Reading("m1", "z", at(i), {"velocity_rms_mm_s": 1.0})).state)
    caplog.clear()
    for k in range(3):  # again three processes of 10 h each
        m = Monitor(config, state=saved)
        for _ in range(60):
            i += 1
            saved.update(m.update(Reading("m1", "z", at(i), stopped)).state)
        if k == 1:  # 20 h since the machine stopped: under a day
            assert _waiting_logs(caplog) == []
    (again,) = _waiting_logs(caplog)
    assert "no baseline learned after 24.0 h" in again.getMessage()


@pytest.mark.parametrize("step", [timedelta(days=-365), timedelta(hours=-3), timedelta(days=365)])
def test_the_wait_to_run_is_a_day_of_readings_whatever_the_clock_did_between_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, step: timedelta
) -> None:
    """Before: the wait was saved as its start on the wall clock, so a gateway that came
    back with its clock a year behind (no RTC, before NTP) never logged the channel (the
    wait looked negative for a year), and one whose clock went a year ahead logged 'no
    baseline learned after 8770.0 h' at its first reading. It is saved as its length now:
    10 h of readings before the restart and 14 h after it make the day, no sooner."""
    config = press_config(tmp_path, baseline_readings=20)
    caplog.set_level(logging.INFO, logger="agent.analysis.monitor")
    stopped = {"velocity_rms_mm_s": 0.001, "accel_rms_g": 0.00005}
    saved: dict[str, str] = {}
    m = Monitor(config, state=saved)
    for i in range(60):  # 10 h, a reading every 10 min
        saved.update(m.update(Reading("m1", "z", T0 + timedelta(minutes=10 * i), stopped)).state)
    restart = T0 + timedelta(hours=10) + step
    m = Monitor(config, state=saved)
    warned_at = None
    for i in range(100):
        at = restart + timedelta(minutes=10 * i)
        saved.update(m.update(Reading("m1", "z", at, stopped)).state)
        if warned_at is None and _waiting_logs(caplog):
            warned_at = i
    # 9 h 50 min of readings before (the first began the wait), 14 h 10 min after: the
    # minutes of the restart itself are not counted, nor would be a week switched off.
    assert warned_at == 14 * 6 + 1, warned_at
    assert "no baseline learned after 24.0 h" in _waiting_logs(caplog)[0].getMessage()


def test_a_relearned_channel_waits_a_day_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a reload that relearns the channel (a new speed) kept its wait, and its
    logged flag: a channel told of once, and reconfigured as the warning advised, was never
    told of again however long it still waited."""
    caplog.set_level(logging.INFO, logger="agent.analysis.monitor")
    stopped = {"velocity_rms_mm_s": 0.001, "accel_rms_g": 0.00005}
    m = Monitor(press_config(tmp_path, baseline_readings=20))
    i = 0
    for i in range(25 * 6):  # 25 h: logged once
        m.update(Reading("m1", "z", T0 + timedelta(minutes=10 * i), stopped))
    assert len(_waiting_logs(caplog)) == 1
    data = press_config(tmp_path, baseline_readings=20).model_dump(mode="json", by_alias=True)
    data["assets"][0]["machine"]["rpm"] = 990
    m.reconfigure(Config.model_validate(data))
    for k in range(1, 25 * 6):
        m.update(Reading("m1", "z", T0 + timedelta(minutes=10 * (i + k)), stopped))
        if k == 23 * 6:
            assert len(_waiting_logs(caplog)) == 1  # under a day since the reload
    assert len(_waiting_logs(caplog)) == 2
