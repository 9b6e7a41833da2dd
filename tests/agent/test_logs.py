"""Logs stay small under a fault that repeats thousands of times a second."""

from __future__ import annotations

import argparse
import io
import json
import logging
import time

import pytest

from agent.logs import JsonFormatter, RepeatLimitingHandler, log_level, setup_logging


def _logger(handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(f"test.repeat.{id(handler)}")
    log.propagate = False
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    return log


def test_a_storm_of_one_line_is_one_line_plus_its_count() -> None:
    out = io.StringIO()
    handler = RepeatLimitingHandler(out, interval_s=60)
    handler.setFormatter(JsonFormatter())
    log = _logger(handler)
    for _ in range(10_000):
        log.error("socket.accept() out of system resource")
    log.error("another fault")
    handler.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["msg"] for r in lines] == [
        "socket.accept() out of system resource",
        "another fault",
        lines[2]["msg"],
    ]
    assert lines[2]["msg"].startswith(
        "socket.accept() out of system resource [repeated 9999 more times in"
    )
    assert lines[2]["level"] == "ERROR"


def test_the_count_is_written_when_the_interval_ends() -> None:
    out = io.StringIO()
    handler = RepeatLimitingHandler(out, interval_s=0.05)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = _logger(handler)
    for _ in range(3):
        log.warning("sensor %s timed out", "m1")
    log.warning("sensor %s timed out", "m2")  # another sensor: another line
    time.sleep(0.1)
    log.warning("sensor %s timed out", "m1")
    assert out.getvalue().splitlines() == [
        "sensor m1 timed out",
        "sensor m2 timed out",
        out.getvalue().splitlines()[2],
        "sensor m1 timed out",
    ]
    assert out.getvalue().splitlines()[2].startswith("sensor m1 timed out [repeated 2 more times")


def test_tracked_lines_are_bounded() -> None:
    out = io.StringIO()
    handler = RepeatLimitingHandler(out, interval_s=60, max_tracked=8)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = _logger(handler)
    for i in range(100):
        log.info("line %d", i)
        log.info("line %d", i)
    assert len(handler._windows) <= 8
    handler.close()
    assert out.getvalue().count("[repeated 1 more times") == 100


@pytest.mark.parametrize("bad", ["verbose", "", "INFO2", "10"])
def test_an_unknown_level_is_one_clear_error(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="choose one of debug, info"):
        log_level(bad)
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging(bad, stream=io.StringIO())


def test_levels_in_any_case() -> None:
    assert [log_level(x) for x in ("debug", "Info", "WARNING")] == ["DEBUG", "INFO", "WARNING"]
