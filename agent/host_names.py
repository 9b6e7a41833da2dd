"""Look up the Modbus host names a reload or a start compares (agent.analysis.basis).

A device written by its DNS name, then by its address (or the reverse), is the same device
when the name resolves to that address now: its open alerts must not be closed and raised
again as new episodes. The lookups run in the event loop's resolver threads, all at once,
bounded by RESOLVE_S: a dead DNS server delays a reload by that much at most, and a name
that did not answer in time counts as unresolved (the cause line says so).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable

from agent.analysis.basis import Resolved, host_key

log = logging.getLogger(__name__)

RESOLVE_S = 2.0  # the longest a reload or a start waits for its names
MAX_NAMES = 256  # names looked up at once (a configuration names far fewer)


async def _lookup(name: str) -> frozenset[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return frozenset(host_key(str(info[4][0])) for info in infos)


async def resolve_names(names: Iterable[str], timeout_s: float = RESOLVE_S) -> Resolved:
    """Each name's addresses now (as agent.analysis.basis compares them); a name that did
    not resolve within timeout_s is left out, logged once per call with the reason."""
    wanted = sorted(set(names))[:MAX_NAMES]
    if not wanted:
        return {}
    tasks = [asyncio.ensure_future(_lookup(n)) for n in wanted]
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()  # the resolver thread finishes on its own; its answer is dropped
    out: dict[str, frozenset[str]] = {}
    failed = []
    for name, task in zip(wanted, tasks, strict=True):
        if task in done and task.exception() is None and task.result():
            out[name] = task.result()
        else:
            why = "timed out" if task in pending else str(task.exception())
            failed.append(f"{name} ({why})")
    if failed:
        log.warning(
            "host names not resolved: a device rewritten between such a name and an "
            "address (or another name) is not known to be another device, its open "
            "alerts are kept: %s",
            ", ".join(failed),
        )
    return out
