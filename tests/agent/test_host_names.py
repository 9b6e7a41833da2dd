"""agent.host_names: the Modbus host names a reload or a start looks up, bounded. The
resolver is the process's own socket.getaddrinfo, replaced here by one that never answers
(a DNS server that is down: 5 s x attempts per server on a gateway) or answers at once."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agent.host_names import LOOKUP_THREADS, resolve_names


@pytest.fixture
def dead_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """socket.getaddrinfo blocks until the test ends (the event is set)."""
    release = threading.Event()

    def never(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", never)
    yield release
    release.set()


async def test_a_dns_server_that_never_answers_holds_up_no_other_thread_work(
    dead_dns: threading.Event,
) -> None:
    """Before: the lookups ran in the event loop's default executor (6 threads on 2 cores),
    so after the 2 s cap they still held it until the resolver gave up (10 s with timeout:5
    attempts:2, measured): the start's next asyncio.to_thread (the store's identity), a
    reload's file reads and the uplinks' connects waited 8 s more behind them."""
    names = [f"vt{i}.plant" for i in range(64)]
    assert await resolve_names(names, timeout_s=0.2) == {}
    assert not dead_dns.is_set()  # every lookup is still stuck in the resolver
    assert await asyncio.wait_for(asyncio.to_thread(lambda: "ran"), 10) == "ran"


async def test_an_agent_exits_with_a_lookup_stuck_in_the_resolver() -> None:
    """Before: asyncio.run's end (the agent's exit after a stop) waited for the default
    executor's thread stuck in getaddrinfo: 10 s with a dead DNS server (measured), here
    forever; now the lookups' threads are daemons and the process ends at once."""
    script = (
        "import asyncio, socket, time\n"
        "socket.getaddrinfo = lambda *a, **k: time.sleep(3600)\n"
        "from agent.host_names import resolve_names\n"
        "print(asyncio.run(resolve_names(['plc-7.plant'], timeout_s=0.1)), flush=True)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (proc.returncode, out.strip()) == (0, b"{}")


async def test_2000_names_are_all_looked_up_a_few_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: names past the 256th (sorted) were never looked up nor logged, so their
    devices could not be told the same as their addresses. Now every name, at most
    LOOKUP_THREADS lookups at once."""
    lock, running, most = threading.Lock(), [0], [0]

    def answer(name: str, *args: Any, **kwargs: Any) -> Any:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            n = int(name.removeprefix("vt").removesuffix(".plant"))
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (f"10.1.{n // 250}.{n % 250}", 0))]
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(socket, "getaddrinfo", answer)
    got = await resolve_names([f"vt{i}.plant" for i in range(2000)], timeout_s=30)
    assert len(got) == 2000 and got["vt1999.plant"] == frozenset({"10.1.7.249"})
    assert 1 <= most[0] <= LOOKUP_THREADS
