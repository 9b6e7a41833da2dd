"""The reading queue is bounded (a full one drops, counted); the analysis takes every
queued reading in order through a real monitor, and the shutdown drains it, bounded."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.analysis.monitor import Monitor, Update
from agent.reading_queue import READING_QUEUE_MIN, ReadingQueue, wanted_queue_size
from agent.runtime import PipelineCounters
from drivers.reading import Reading
from tests.agent._configs import press_config

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def reading(i: int, velocity: float, sensor: str = "m1") -> Reading:
    feats = {"velocity_rms_mm_s": velocity, "kurtosis": 3.1}
    return Reading(sensor, "z", T0 + timedelta(seconds=i), feats)


async def test_a_full_queue_drops_and_counts_and_the_analysis_takes_the_rest(
    tmp_path: Path,
) -> None:
    config = press_config(tmp_path, debounce=1)
    assert wanted_queue_size(config) == READING_QUEUE_MIN  # one sensor: the floor
    counters = PipelineCounters()
    queue = ReadingQueue(4, counters)
    kept = [reading(0, 1.0), reading(1, 3.0), reading(2, 1.0, sensor="gone"), reading(3, 3.1)]
    for r in [*kept, reading(4, 3.2)]:
        queue.put(r)
    assert queue.depth == 4 and counters.readings_dropped_total == 1
    held: list[Update] = []
    seen: list[Reading] = []
    task = asyncio.create_task(
        queue.analyse(Monitor(config), persist=held.append, analysed=seen.append)
    )
    try:
        await queue.drain(timeout_s=5.0)
    finally:
        task.cancel()
    # The removed sensor's reading is skipped (a reload dropped it), not counted.
    assert seen == [kept[0], kept[1], kept[3]] and counters.readings_total == 3
    assert [d.state for u in held for d in u.drafts] == ["raised"]  # zone C, debounce 1
    assert counters.analysis_errors_total == 0
    queue.close()  # shutdown: a reading that races the stop is not taken
    queue.put(reading(5, 1.0))
    assert queue.depth == 0 and counters.readings_dropped_total == 1


async def test_drain_is_bounded_when_nothing_analyses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = ReadingQueue(4, PipelineCounters())
    queue.put(reading(0, 1.0))
    with caplog.at_level(logging.ERROR, logger="agent.reading_queue"):
        async with asyncio.timeout(2.0):
            await queue.drain(timeout_s=0.05)
    assert queue.depth == 1
    assert "analysis did not drain 1 readings" in caplog.text
