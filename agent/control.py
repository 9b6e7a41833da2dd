"""The control socket: every state-changing operation, on a Unix socket, never over TCP.

A local user can reach a loopback TCP port, and so can a web page through the plant's
browser. A Unix socket in the runtime directory with mode 0660 can only be used by the
agent's user and the group the configuration names, and the kernel tells us who is
asking (SO_PEERCRED), so every change names its requester.

Protocol: one JSON object per line each way. The client sends
`{"op": "maintenance", "args": {...}}`; the agent answers
`{"ok": true, "agent": {identity}, "result": {...}}` or `{"ok": false, "agent": ...,
"error": "..."}` and closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import json
import logging
import os
import pwd
import socket
import stat
import struct
import termios
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 4 * 2**20
MAX_CONNECTIONS = 8
REQUEST_TIMEOUT_S = 5.0
# Past MAX_CONNECTIONS, a connection that has waited this long without sending its request
# is closed to make room: a client sends its line within milliseconds, so eight idle
# connections (a script's forgotten `socat`) no longer turn every operator away as busy
# for REQUEST_TIMEOUT_S, again and again.
EVICT_SILENT_S = 0.5
CLOSE_WAIT_S = 2.0  # at close, requests under way get this long to be answered
STOPPING = "the agent is stopping; try again once it runs"
UNFINISHED = (
    "the agent stopped before this request finished: it may or may not have taken effect; "
    "check once the agent runs again"
)
SOCKET_MODE = 0o660


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is at the other end of a connection, as the kernel says (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int

    def describe(self, via: str) -> dict[str, Any]:
        """The requester as a maintenance record names it."""
        try:
            user: str | None = pwd.getpwuid(self.uid).pw_name
        except KeyError:  # a uid without a passwd entry (e.g. a dynamic user)
            user = None
        return {"uid": self.uid, "user": user, "gid": self.gid, "pid": self.pid, "via": via}

    @classmethod
    def this_process(cls) -> Peer:
        return cls(os.getpid(), os.getuid(), os.getgid())


@dataclass(frozen=True, slots=True)
class _Waiting:
    """A connection still waiting for its request line (ControlServer._silent)."""

    since: float  # loop time it began waiting
    reader: asyncio.StreamReader
    sock: socket.socket | None


def _has_bytes(waiting: _Waiting) -> bool:
    """Whether the client's request line came and the loop has not handled it yet: whole in
    the stream's buffer, or bytes still in the kernel's (a stalled loop has not read them).
    A partial line alone does not count: a client stuck mid-line is as silent as any."""
    if b"\n" in getattr(waiting.reader, "_buffer", b""):  # asyncio's private buffer
        return True
    if waiting.sock is None:
        return False
    try:
        raw = fcntl.ioctl(waiting.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):  # closed meanwhile: nothing to keep
        return False
    return bool(struct.unpack("i", raw)[0])


class Refused(Exception):
    """An operation the agent declines; the message goes back to the client as is."""


class ControlError(Exception):
    """The client could not get an answer from the agent (the message says why).

    Attributes:
        no_agent: no agent listens there (no socket, or a stale one), as opposed to one
            this user may not use or that did not answer.
    """

    def __init__(self, message: str, *, no_agent: bool = False) -> None:
        super().__init__(message)
        self.no_agent = no_agent


Handler = Callable[[Mapping[str, Any], Peer], Awaitable[dict[str, Any]]]


def _peer(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


def _claim_path(path: Path) -> None:
    """Make `path` free for our socket: remove a stale socket, refuse anything else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket; move it away or set control.socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # left behind by an agent that died
            return
        except OSError as exc:
            raise OSError(f"{path} exists and cannot be checked: {exc.strerror or exc}") from exc
    raise OSError(f"another process already listens on {path}")


def _give_to_group(path: Path, group: str | None) -> None:
    os.chmod(path, SOCKET_MODE)
    if group is None:
        return
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise OSError(f"group {group!r} (control.group) does not exist") from None
    if path.stat().st_gid == gid:
        return
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        raise OSError(
            f"cannot give {path} to group {group!r}: the agent must be a member and may call "
            f"chown (systemd: SupplementaryGroups={group} and SystemCallFilter=@chown, as "
            "`edge-agent systemd-dropin` writes)"
        ) from None


class ControlServer:
    """Serves the control socket while entered.

    Args:
        path: socket path (its directory is created if missing).
        group: group allowed to use the socket besides the agent's user.
        identity: returns the agent's identity, sent with every answer.
        handlers: operation name -> coroutine taking (args, peer), returning the result.
        request_timeout_s: a client must send its request line within this time.

    Attributes:
        error: why the socket is not served, when it is not (the agent runs on).
    """

    def __init__(
        self,
        path: Path,
        *,
        group: str | None,
        identity: Callable[[], dict[str, Any]],
        handlers: Mapping[str, Handler],
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.path = path
        self._timeout_s = request_timeout_s
        self._group = group
        self._identity = identity
        self._handlers = dict(handlers)
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._active = 0
        # Connections still waiting for their request line, oldest first: set to close one.
        self._silent: dict[asyncio.Event, _Waiting] = {}
        self._serving: set[asyncio.Task[Any]] = set()
        self._closing = asyncio.Event()
        # Loop time by which the close must be done (set by the agent's stop), or None.
        self.close_deadline: float | None = None
        self.error: str | None = None

    async def __aenter__(self) -> ControlServer:
        try:
            await asyncio.to_thread(_claim_path, self.path)
            self._server = await asyncio.start_unix_server(
                self._serve, str(self.path), limit=MAX_REQUEST_BYTES
            )
            self._inode = self.path.stat().st_ino
            await asyncio.to_thread(_give_to_group, self.path, self._group)
        except OSError as exc:
            self.error = f"control socket {self.path} not served: {exc.strerror or exc}"
            log.error("%s; maintenance cannot reach the running agent", self.error)
            await self._close()
            return self
        log.info("control socket on %s (mode 0%o)", self.path, SOCKET_MODE)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        # Every connection accepted gets its answer before the agent goes (Python 3.11's
        # wait_closed does not wait for them; the loop's end would cut them off): one still
        # waiting for its request line is told the agent is stopping, bounded.
        self._closing.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._serving:
            _, late = await asyncio.wait(list(self._serving), timeout=self._wait_s())
            for task in late:
                task.cancel()
            if late:  # each answers UNFINISHED (bounded by its client's reading)
                await asyncio.wait(late, timeout=self._wait_s())
        with contextlib.suppress(OSError):
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()  # ours, not a successor's
        self._inode = None

    def _wait_s(self) -> float:
        """How long the close waits for requests under way: CLOSE_WAIT_S, less when the
        stop's time is nearly up (a request waiting on a hung store would otherwise take
        it past close_deadline, towards systemd's kill)."""
        if self.close_deadline is None:
            return CLOSE_WAIT_S
        left = self.close_deadline - asyncio.get_running_loop().time()
        return min(CLOSE_WAIT_S, max(0.0, left))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._active += 1
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
        try:
            if self._active > MAX_CONNECTIONS and not self._evict_silent():
                answer = self._answer(error="busy: too many control connections; retry")
            else:
                answer = await self._unless_closed(reader, writer)
            writer.write(json.dumps(answer).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), self._timeout_s)
        except (OSError, TimeoutError):
            pass  # the client went away; nothing was changed on its behalf that it lacks
        finally:
            self._active -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _unless_closed(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, Any]:
        """The request's answer; UNFINISHED when the close cancelled it. The connection's
        task then ends normally: the client hears why, and Python 3.11's stream callback,
        which asks a cancelled task for its exception, logs no error."""
        try:
            sock = writer.get_extra_info("socket")
            return await self._request(reader, _peer(sock), sock)
        except asyncio.CancelledError:
            if not self._closing.is_set():
                raise  # not our close: leave the cancellation as it was
            return self._answer(error=UNFINISHED)

    def _evict_silent(self) -> bool:
        """Close the connection silent longest, if one has been for EVICT_SILENT_S. One
        whose client already sent bytes the loop has not read (a loop stalled for
        EVICT_SILENT_S) is kept: it spoke in time, the next silent one goes instead."""
        now = asyncio.get_running_loop().time()
        for gone, waiting in self._silent.items():  # oldest first
            if now - waiting.since < EVICT_SILENT_S:
                return False
            if _has_bytes(waiting):
                continue
            del self._silent[gone]
            gone.set()
            return True
        return False

    def _answer(self, *, error: str | None = None, result: Any = None) -> dict[str, Any]:
        if error is not None:
            return {"ok": False, "agent": self._identity(), "error": error}
        return {"ok": True, "agent": self._identity(), "result": result}

    async def _request(
        self, reader: asyncio.StreamReader, peer: Peer, sock: socket.socket | None = None
    ) -> dict[str, Any]:
        if self._closing.is_set():
            return self._answer(error=STOPPING)
        gone = asyncio.Event()
        self._silent[gone] = _Waiting(asyncio.get_running_loop().time(), reader, sock)
        read = asyncio.ensure_future(reader.readline())
        waits = [asyncio.ensure_future(e.wait()) for e in (self._closing, gone)]
        try:
            await asyncio.wait(
                [read, *waits], timeout=self._timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._silent.pop(gone, None)
            for w in waits:
                w.cancel()
            if not read.done():
                read.cancel()
        if not read.done() or read.cancelled():
            if self._closing.is_set():
                return self._answer(error=STOPPING)
            if gone.is_set():
                return self._answer(
                    error=f"closed: no request line after {EVICT_SILENT_S} s while "
                    f"{MAX_CONNECTIONS} connections were open; another client needed the room"
                )
            return self._answer(error=f"no complete request line within {self._timeout_s} s")
        try:
            line = read.result()
        except ValueError:  # the stream's limit: a line longer than MAX_REQUEST_BYTES
            return self._answer(error=f"request larger than {MAX_REQUEST_BYTES} bytes")
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            return self._answer(error="the request is not one JSON object on one line")
        if not isinstance(request, dict) or not isinstance(request.get("args", {}), dict):
            return self._answer(error='expected {"op": "...", "args": {...}}')
        op = request.get("op")
        handler = self._handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            return self._answer(
                error=f"unknown operation {op!r}; known: {', '.join(sorted(self._handlers))}"
            )
        try:
            return self._answer(result=await handler(request.get("args", {}), peer))
        except Refused as exc:
            return self._answer(error=str(exc))
        except Exception:  # a bug must not take the agent down nor leave the client hanging
            log.exception("control operation %r failed", op)
            return self._answer(error=f"internal error in {op!r}; see the agent's log")


def _send(sock: socket.socket, request: bytes) -> OSError | None:
    """Send the request; the error when the agent closed before taking all of it.

    The agent answers some requests without reading them (busy, stopping, a request over
    MAX_REQUEST_BYTES) and closes: its answer is then waiting to be read, and it is what
    the user must see, not the broken pipe it leaves behind."""
    try:
        sock.sendall(request)
    except (BrokenPipeError, ConnectionResetError) as exc:
        return exc
    return None


def _receive(sock: socket.socket) -> bytes:
    """The answer line, as far as it came (a reset after it ends nothing that arrived)."""
    data = b""
    while not data.endswith(b"\n") and len(data) <= MAX_ANSWER_BYTES:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            if not data:
                raise
            break
        if not chunk:
            break
        data += chunk
    return data


def call(path: Path, op: str, args: Mapping[str, Any], *, timeout_s: float = 15.0) -> Any:
    """Send one operation to the agent on `path`; returns the whole answer.

    Raises:
        ControlError: no agent answered (the message says why and what to do).
    """
    request = json.dumps({"op": op, "args": dict(args)}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
            unsent = _send(sock, request)
            data = _receive(sock)
            if unsent is not None and not data:
                raise unsent
        except FileNotFoundError:
            raise ControlError(f"no control socket at {path}", no_agent=True) from None
        except PermissionError:
            raise ControlError(
                f"permission denied on {path}: run as root, or as a member of the group "
                "named by control.group"
            ) from None
        except ConnectionRefusedError:
            raise ControlError(
                f"nothing listens on {path} (a stale socket)", no_agent=True
            ) from None
        except TimeoutError:
            raise ControlError(f"no answer on {path} within {timeout_s:.0f} s") from None
        except OSError as exc:
            raise ControlError(f"cannot use {path}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(data)
    except (ValueError, RecursionError):
        answer = None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise ControlError(f"the process on {path} did not answer as an edge-agent")
    return answer
