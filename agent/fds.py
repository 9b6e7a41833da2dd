"""File descriptors: how many are open, and EMFILE reported as what it is.

Every sensor connection, HTTP connection and store file holds a descriptor. When the soft
limit (RLIMIT_NOFILE; systemd's default is 1024) is reached, accept() and connect() fail
with EMFILE, which libraries report as "connect failed" or "out of system resource": the
agent names the cause and the remedy instead.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
from typing import Any

log = logging.getLogger(__name__)

_EXHAUSTED = (errno.EMFILE, errno.ENFILE)


def fd_usage() -> tuple[int, int]:
    """(descriptors open, soft limit) of this process."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        return len(os.listdir("/proc/self/fd")) - 1, soft  # minus the listing's own
    except OSError as exc:
        if exc.errno == errno.EMFILE:  # even the listing needs one
            return soft, soft
        return -1, soft


def is_exhaustion(exc: object) -> bool:
    """Whether an exception is the process (EMFILE) or system (ENFILE) running out of fds."""
    return isinstance(exc, OSError) and exc.errno in _EXHAUSTED


def describe_exhaustion() -> str:
    """One line: what ran out, how many are open, what to do."""
    used, limit = fd_usage()
    return (
        f"out of file descriptors (EMFILE): {used} open, limit {limit}; sensor connections "
        "and HTTP requests fail until some close; raise LimitNOFILE= in the service unit"
    )


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's handler, except that descriptor exhaustion is one clear line."""
    if is_exhaustion(context.get("exception")):
        log.error("%s (%s)", describe_exhaustion(), context.get("message", "asyncio"))
        return
    loop.default_exception_handler(context)
