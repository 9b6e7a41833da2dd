"""The control socket: who may change the agent, who asked, and bad requests answered in a line."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.control import (
    EVICT_SILENT_S,
    MAX_CONNECTIONS,
    MAX_REQUEST_BYTES,
    ControlServer,
    Peer,
    call,
)

IDENTITY = {"gateway": "gw-t", "store": "/x/o.db", "store_created_at": "2026-01-01T00:00:00.000Z"}
OUTSIDER = 61_234  # a uid in systemd's dynamic range, in no group
SYSTEM_PYTHON = "/usr/bin/python3"  # an unprivileged uid can run it (this machine's is in /root)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every uid may enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="edge-ctl-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _echo(args: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
    return {"args": dict(args), "peer": peer.describe("control socket")}


@contextlib.asynccontextmanager
async def served(path: Path, group: str | None = None) -> AsyncIterator[ControlServer]:
    async with ControlServer(
        path, group=group, identity=lambda: IDENTITY, handlers={"echo": _echo}
    ) as server:
        assert server.error is None, server.error
        yield server


def _raw(path: Path, data: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    return dict(json.loads(answer))


async def test_socket_is_0660_for_the_configured_group(tmp_path: Path) -> None:
    group = grp.getgrnam("daemon")
    async with served(tmp_path / "c.sock", group="daemon") as server:
        st = server.path.stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == group.gr_gid
    assert not (tmp_path / "c.sock").exists()  # removed at exit


async def test_the_kernel_names_the_requester(tmp_path: Path) -> None:
    async with served(tmp_path / "c.sock"):
        answer = await asyncio.to_thread(call, tmp_path / "c.sock", "echo", {"asset": "p"})
    assert answer["ok"] and answer["agent"] == IDENTITY
    peer = answer["result"]["peer"]
    assert (peer["uid"], peer["pid"], peer["user"]) == (os.getuid(), os.getpid(), "root")


def _connect_as(path: Path, groups: str | None) -> subprocess.CompletedProcess[str]:
    script = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect(sys.argv[1])\nexcept PermissionError:\n print('EACCES'); sys.exit()\n"
        's.sendall(b\'{"op": "echo", "args": {}}\\n\'); print(s.recv(4096).decode())\n'
    )
    who = ["--groups", groups] if groups else ["--clear-groups"]
    as_outsider = ["setpriv", f"--reuid={OUTSIDER}", f"--regid={OUTSIDER}", *who]
    return subprocess.run(
        [*as_outsider, SYSTEM_PYTHON, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists(SYSTEM_PYTHON),
    reason="needs root, setpriv and /usr/bin/python3 to act as another user",
)
async def test_other_users_cannot_connect_group_members_can(open_dir: Path) -> None:
    path = open_dir / "c.sock"
    async with served(path, group="daemon"):
        outsider = await asyncio.to_thread(_connect_as, path, None)
        member = await asyncio.to_thread(_connect_as, path, str(grp.getgrnam("daemon").gr_gid))
    assert outsider.stdout.strip() == "EACCES", outsider
    answer = json.loads(member.stdout)
    assert answer["ok"] and answer["result"]["peer"]["uid"] == OUTSIDER


@pytest.mark.parametrize(
    ("request_bytes", "error"),
    [
        (b"[" * 60_000 + b"]" * 60_000 + b"\n", "request larger than"),
        (b"[" * 30_000 + b"]" * 30_000 + b"\n", "not one JSON object"),  # RecursionError
        (b"x" * (MAX_REQUEST_BYTES + 10) + b"\n", "request larger than"),
        (b"asset=press-7\n", "not one JSON object"),
        (b'["echo"]\n', 'expected {"op"'),
        (b'{"op": "echo", "args": "press-7"}\n', 'expected {"op"'),
        (b'{"op": "reset-everything"}\n', "unknown operation 'reset-everything'; known: echo"),
        (b'{"op": 7}\n', "unknown operation 7"),
    ],
)
async def test_bad_requests_get_a_one_line_error(
    tmp_path: Path, request_bytes: bytes, error: str
) -> None:
    path = tmp_path / "c.sock"
    async with served(path):
        answer = await asyncio.to_thread(_raw, path, request_bytes)
        again = await asyncio.to_thread(call, path, "echo", {})  # the server lives on
    assert answer["ok"] is False and error in answer["error"], answer
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"]
    assert again["ok"]


async def test_a_silent_client_is_answered_and_dropped(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    async with ControlServer(path, group=None, identity=dict, handlers={}, request_timeout_s=0.3):
        reader, writer = await asyncio.open_unix_connection(str(path))
        async with asyncio.timeout(10):
            line = await reader.readline()
        writer.close()
    assert "no complete request line" in json.loads(line)["error"]


async def test_stale_socket_is_replaced_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))  # bound, never listening: left behind by a dead agent
    async with served(path):
        assert (await asyncio.to_thread(call, path, "echo", {}))["ok"]
        async with ControlServer(path, group=None, identity=dict, handlers={}) as second:
            assert second.error and "another process already listens" in second.error
        assert (await asyncio.to_thread(call, path, "echo", {}))["ok"]  # first one intact
    path.write_text("not a socket")
    async with ControlServer(path, group=None, identity=dict, handlers={}) as third:
        assert third.error and "is not a socket" in third.error
    assert path.read_text() == "not a socket"


async def test_a_request_too_large_gets_its_answer_not_a_broken_pipe(tmp_path: Path) -> None:
    # The agent answers without reading the rest, and closes: before, the client's send
    # failed and the user saw "cannot use ...: Broken pipe" instead of the agent's words.
    path = tmp_path / "c.sock"
    async with served(path):
        answer = await asyncio.to_thread(call, path, "echo", {"note": "x" * (1 << 20)})
    assert answer["ok"] is False and "request larger than" in answer["error"], answer


def _answer_unread(listener: socket.socket, answer: dict[str, Any]) -> None:
    """One connection: the answer written at once, the request never read, then closed."""
    conn, _ = listener.accept()
    with conn:
        conn.sendall(json.dumps(answer).encode() + b"\n")


@pytest.mark.parametrize("error", ["the agent is stopping; try again once it runs", "busy: retry"])
async def test_an_answer_given_before_the_request_is_read_reaches_the_client(
    tmp_path: Path, error: str
) -> None:
    path = tmp_path / "c.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(1)
        listener.settimeout(10)
        answer = {"ok": False, "agent": IDENTITY, "error": error}
        server = asyncio.create_task(asyncio.to_thread(_answer_unread, listener, answer))
        # Larger than the socket's buffers: the send cannot finish before the close.
        got = await asyncio.to_thread(call, path, "echo", {"pad": "x" * (4 << 20)}, timeout_s=10)
        await server
    assert got == answer


async def test_a_request_still_running_at_close_is_answered_not_cut_off(tmp_path: Path) -> None:
    """A handler that outlives the close (a store write on a stalled disk) is cancelled:
    its client is told so, and no asyncio error lands in the log. Before: the client saw
    "did not answer as an edge-agent" and the loop logged "Exception in callback"
    (Python 3.11's stream callback asks a cancelled task for its exception)."""
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
    started = asyncio.Event()

    async def stuck(args: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        started.set()
        await asyncio.Event().wait()  # never returns by itself
        return {}

    path = tmp_path / "c.sock"
    try:
        async with ControlServer(path, group=None, identity=dict, handlers={"stuck": stuck}):
            client = asyncio.create_task(asyncio.to_thread(call, path, "stuck", {}, timeout_s=10))
            async with asyncio.timeout(5):
                await started.wait()
        answer = await client  # the close waited CLOSE_WAIT_S, then cancelled the handler
        await asyncio.sleep(0.1)  # any callback of the ended connection has run
    finally:
        loop.set_exception_handler(previous)
    assert not answer["ok"]
    assert "stopped before this request finished" in answer["error"], answer
    assert not loop_errors, [c.get("message") for c in loop_errors]


async def test_idle_connections_cannot_keep_an_operator_out(tmp_path: Path) -> None:
    """Before: MAX_CONNECTIONS connections that never sent a request (a script's forgotten
    `socat`, 1000 idle connects) answered every operator "busy" until each timed out
    after 5 s, and again for as long as they were renewed. Now the one silent longest is
    closed, and told why, to serve a client that speaks."""
    path = tmp_path / "c.sock"
    async with served(path):
        idle = [await asyncio.open_unix_connection(str(path)) for _ in range(MAX_CONNECTIONS)]
        try:
            await asyncio.sleep(EVICT_SILENT_S + 0.2)  # silent for longer than a client is
            answers = [await asyncio.to_thread(call, path, "echo", {"n": n}) for n in range(3)]
            async with asyncio.timeout(5):
                evicted = json.loads(await idle[0][0].readline())
        finally:
            for _, w in idle:
                w.close()
    assert [a["ok"] for a in answers] == [True] * 3, answers
    assert "no request line after" in evicted["error"], evicted


async def _waiting(server: ControlServer, n: int) -> None:
    """Until n connections wait for their request line."""
    async with asyncio.timeout(5):
        while len(server._silent) < n:  # noqa: ASYNC110 (the server has no event for it)
            await asyncio.sleep(0.02)


async def test_a_client_whose_line_came_during_a_loop_stall_is_not_the_one_evicted(
    tmp_path: Path,
) -> None:
    """With MAX_CONNECTIONS open and the event loop stalled past EVICT_SILENT_S, the oldest
    connection's request line had arrived (in the socket, not yet read by the loop), yet
    it counted as silent: the next connection "evicted" it, no silent one was closed, and
    the connections idle for the room went on holding it until their timeout. Now one with
    its line waiting is kept and the silent one next in age is closed, told why. The stall
    is simulated deterministically: the line is written and the eviction decided with no
    loop turn in between."""
    path = tmp_path / "c.sock"
    async with served(path) as server:
        talker = await asyncio.open_unix_connection(str(path))
        await _waiting(server, 1)  # the oldest
        idle = [await asyncio.open_unix_connection(str(path)) for _ in range(MAX_CONNECTIONS - 1)]
        try:
            await _waiting(server, MAX_CONNECTIONS)
            await asyncio.sleep(EVICT_SILENT_S + 0.1)  # every one waited long enough to go
            talker[1].write(json.dumps({"op": "echo", "args": {"n": 1}}).encode() + b"\n")
            server._evict_silent()  # what a ninth connection does, before the loop reads
            async with asyncio.timeout(10):
                answer = json.loads(await talker[0].readline())
                evicted = json.loads(await idle[0][0].readline())
        finally:
            for _, w in [talker, *idle]:
                w.close()
    assert answer.get("ok") and answer["result"]["args"] == {"n": 1}, answer
    assert "no request line after" in evicted["error"], evicted
