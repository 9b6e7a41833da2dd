"""Look up the Modbus host names a reload or a start compares (agent.analysis.basis).

A device written by its DNS name, then by its address (or the reverse), is the same device
when the name resolves to that address now: its open alerts must not be closed and raised
again as new episodes. The lookups run in LOOKUP_THREADS daemon threads of their own, all
names of the call shared among them, bounded by RESOLVE_S: a dead DNS server delays a
reload or a start by that much at most, and a name that did not answer in time is unknown
(its device's alerts are kept; the log names it). Not the event loop's default executor:
a lookup stuck in the resolver (5 s x attempts per server) would hold its few threads, and
every asyncio.to_thread and connect behind them, and the exit would wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterable

from agent.analysis.basis import Resolved, host_key

log = logging.getLogger(__name__)

RESOLVE_S = 2.0  # the longest a reload or a start waits for its names
LOOKUP_THREADS = 16  # lookups at once per call (each a blocking getaddrinfo)


def _lookup(name: str) -> frozenset[str]:
    # socket.getaddrinfo looked up at call time: the resolver the process has now.
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return frozenset(host_key(str(info[4][0])) for info in infos)


async def resolve_names(names: Iterable[str], timeout_s: float = RESOLVE_S) -> Resolved:
    """Each name's addresses now (as agent.analysis.basis compares them); a name that did
    not resolve within timeout_s is left out, logged once per call with the reason."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    loop = asyncio.get_running_loop()
    answers: dict[str, frozenset[str] | Exception] = {}  # written on the loop's thread only
    all_in = asyncio.Event()
    todo, lock, give_up = iter(wanted), threading.Lock(), threading.Event()

    def answered(name: str, answer: frozenset[str] | Exception) -> None:
        answers[name] = answer
        if len(answers) == len(wanted):
            all_in.set()

    def work() -> None:
        while not give_up.is_set():
            with lock:
                name = next(todo, None)
            if name is None:
                return
            try:
                answer: frozenset[str] | Exception = _lookup(name)
            except Exception as exc:  # any failure: the name is unknown
                answer = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(answered, name, answer)

    for _ in range(min(LOOKUP_THREADS, len(wanted))):
        # Daemon threads: one stuck in the resolver past the wait holds neither the
        # agent's stop nor its exit; it ends with its lookup and takes no other name.
        threading.Thread(target=work, name="host-names", daemon=True).start()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), timeout_s)
    finally:
        give_up.set()
    out: dict[str, frozenset[str]] = {}
    failed = []
    for name in wanted:
        answer = answers.get(name)
        if isinstance(answer, frozenset) and answer:
            out[name] = answer
        else:
            failed.append(f"{name} ({'timed out' if answer is None else answer or 'no address'})")
    if failed:
        log.warning(
            "host names not resolved: a device rewritten between such a name and an "
            "address (or another name) is not known to be another device, its open "
            "alerts are kept: %d of %d: %s",
            len(failed),
            len(wanted),
            ", ".join(failed[:20]) + (", ..." if len(failed) > 20 else ""),
        )
    return out
