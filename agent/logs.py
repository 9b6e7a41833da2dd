"""Logging set-up: human lines on a terminal, JSON lines otherwise (journald, files).

A line repeated within an interval is written once; the repeats are counted and the count
is written when the interval ends (a fault that fires thousands of times a second must not
fill the disk: 1100 idle connections once wrote 120 MB of one line in 35 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

LEVELS = ("debug", "info", "warning", "error", "critical")
REPEAT_INTERVAL_S = 10.0
MAX_TRACKED_LINES = 256


def log_level(text: str) -> str:
    """argparse type for --log-level: one of LEVELS, any case."""
    if text.lower() not in LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r}; choose one of {', '.join(LEVELS)}"
        )
    return text.upper()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, UTC timestamps, extra context fields kept."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


@dataclass(slots=True)
class _Window:
    start: float
    template: logging.LogRecord
    repeats: int = 0


class RepeatLimitingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes a repeated line once per interval, plus its count.

    Two records are the same line when logger, level and message text are equal.

    Args:
        stream: where lines go.
        interval_s: the window in which repeats are counted instead of written.
        max_tracked: lines remembered at once (the oldest is summarised and forgotten).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        interval_s: float = REPEAT_INTERVAL_S,
        max_tracked: int = MAX_TRACKED_LINES,
    ) -> None:
        super().__init__(stream)
        self._interval_s = interval_s
        self._max_tracked = max_tracked
        self._windows: dict[tuple[str, int, str], _Window] = {}

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        self._close_windows(lambda w: now - w.start >= self._interval_s)
        try:
            key = (record.name, record.levelno, record.getMessage())
        except Exception:  # a bad format string: let logging report it as usual
            super().emit(record)
            return
        window = self._windows.get(key)
        if window is not None:
            window.repeats += 1
            return
        if len(self._windows) >= self._max_tracked:
            oldest = min(self._windows, key=lambda k: self._windows[k].start)
            self._summarise(self._windows.pop(oldest))
        self._windows[key] = _Window(now, record)
        super().emit(record)

    def close(self) -> None:
        self.acquire()
        try:
            self._close_windows(lambda _w: True)
        finally:
            self.release()
        super().close()

    def _close_windows(self, done: Callable[[_Window], bool]) -> None:
        for key in [k for k, w in self._windows.items() if done(w)]:
            self._summarise(self._windows.pop(key))

    def _summarise(self, window: _Window) -> None:
        if not window.repeats:
            return
        t = window.template
        took = time.monotonic() - window.start
        note = logging.makeLogRecord(
            {
                "name": t.name,
                "levelno": t.levelno,
                "levelname": t.levelname,
                "msg": "%s [repeated %d more times in %.0f s]",
                "args": (t.getMessage(), window.repeats, took),
            }
        )
        super().emit(note)


def setup_logging(
    level: str = "INFO", *, stream: TextIO | None = None, json_lines: bool | None = None
) -> None:
    """Configure the root logger once for the process.

    Raises:
        ValueError: `level` is not one of LEVELS.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; choose one of {', '.join(LEVELS)}")
    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not stream.isatty()
    handler = RepeatLimitingHandler(stream)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, RepeatLimitingHandler):
            old.close()  # writes its pending repeat counts
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
