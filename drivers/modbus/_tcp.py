"""Modbus TCP on an asyncio protocol: one connection, one request at a time.

Our own client rather than pymodbus's (measured in benchmarks/README.md "agent_scale"):
pymodbus awaits answers with ``asyncio.wait_for``, which on Python 3.11 swallows a
cancellation that lands with the answer (a poller then outlives shutdown); it drops late
answers silently, so a gateway's still-busy line cannot be waited out; and it costs more
CPU and memory per request than 2000 sensors at 1 Hz allow on one core.

A late answer (its request timed out) is recognised by its transaction id and dropped.
On a gateway (``settle_s`` > 0) the link waits for it, or for the gateway's own
exception 11, before the next request: the gateway's serial line is busy until then, and
a request sent earlier would only queue inside the gateway and eat its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import socket
import time

from drivers.modbus._frames import (
    MBAP_SIZE,
    FrameError,
    parse_tcp_header,
    read_pdu,
    registers_of,
    tcp_frame,
)
from drivers.modbus._link import LinkDown, LinkTimeout
from drivers.modbus._wheel import Wheel

MAX_BUFFER = 64 * 1024  # a peer that streams garbage is cut off, not buffered
MAX_TIMEOUTS_KEPT = 3  # timeouts in a row after which a connection is presumed half-open
# Unanswered transaction ids remembered per connection, newest kept: a device that drops a
# request now and then (never three in a row) keeps its connection, and every id it never
# answered stayed in the set, up to all 65536 (~4 MB per flaky device). An answer older
# than this many unanswered requests is counted as a stray one and dropped all the same.
MAX_STALE_KEPT = 32


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_exception(LinkTimeout("no answer in time"))


def deadline_wheel(grain_s: float = 0.01) -> Wheel:
    """A wheel of request timeouts that many links share (see TcpLink's ``deadlines``)."""
    return Wheel(grain_s, _expire)


class _Protocol(asyncio.Protocol):
    def __init__(self, link: TcpLink) -> None:
        self._link = link
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._link.heard_at = time.monotonic()  # the host accepted a connection
        with contextlib.suppress(OSError, AttributeError):
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._link.heard_at = time.monotonic()  # even a late answer: the host is there
        buf = self._buf
        buf += data
        while len(buf) >= MBAP_SIZE:
            try:
                header = parse_tcp_header(bytes(buf[:MBAP_SIZE]))
            except FrameError as exc:
                self._link._broken(exc)
                return
            end = MBAP_SIZE + header.pdu_size
            if len(buf) < end:
                break
            pdu = bytes(buf[MBAP_SIZE:end])
            del buf[:end]
            self._link._answer(header.transaction_id, header.device_id, pdu)
        if len(buf) > MAX_BUFFER:
            self._link._broken(FrameError("protocol", "answer larger than any Modbus frame"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._lost(self, exc)


class TcpLink:
    """One TCP connection to a device or gateway.

    Args:
        host: device or gateway host name or address.
        port: TCP port.
        connect_timeout_s: bound on name resolution plus the TCP handshake.
        settle_s: after a timeout, wait up to this long for the late answer before the next
            request (a gateway's line is busy until then); None: do not wait (a device that
            serves requests in parallel), keep the connection (its late answer is dropped
            by transaction id) until MAX_TIMEOUTS_KEPT timeouts in a row, then reconnect.
        deadlines: a deadline_wheel() shared with other links: request timeouts then cost
            one event-loop timer per slot of the wheel, not one per request, and fire up to
            its grain late; None: a timer per request.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float,
        settle_s: float | None = None,
        deadlines: Wheel | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.address = f"{host}:{port}"
        self._connect_timeout_s = connect_timeout_s
        self._settle_s = settle_s
        self._deadlines = deadlines
        self._protocol: _Protocol | None = None
        self._tid = 0
        self._waiting: tuple[int, int, asyncio.Future[bytes]] | None = None
        self._stale: dict[int, None] = {}  # insertion-ordered: the oldest is dropped first
        # Made by the first settle (gateways only): thousands of device links never wait.
        self._settled: asyncio.Event | None = None
        self.late_answers = 0
        self.stray_answers = 0  # answers to no request of ours (a confused peer)
        self.duplicate_answers = self.echoes = 0  # RTU only: transaction ids tell these apart
        self.sync_reads = 0  # RTU only
        self.noisy_reads, self.noisy = 0, False  # RTU only: a TCP stream carries no line noise
        self._timeouts = 0  # in a row
        # Monotonic time the host last showed life (a connection made, any bytes in): a
        # device timing out beside it fails alone, its host is not silent (_peers).
        self.heard_at = -math.inf
        # Monotonic time a connect was last refused: the host answered with a reset, so
        # it is on the network (nothing listens on this port); _peers, host level.
        self.refused_at = -math.inf

    def hold_off_s(self, device_id: int) -> float:
        """Always 0: a transaction id ties each answer to its request."""
        return 0.0

    async def wait_hold_off(self, device_id: int) -> None:
        """Returns at once: never held off (see hold_off_s)."""

    @property
    def connected(self) -> bool:
        """True while the connection is up."""
        p = self._protocol
        return p is not None and p.transport is not None and not p.transport.is_closing()

    async def connect(self) -> None:
        """Open the connection (dropping any previous one).

        Raises:
            LinkDown: the name does not resolve, or the connection is refused or times out.
        """
        self.close()
        loop = asyncio.get_running_loop()
        family, sockaddr = await self._resolve(loop)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self), sockaddr[0], sockaddr[1], family=family
                )
        except TimeoutError as exc:
            raise LinkDown(f"connect to {self.address} timed out") from exc
        except ConnectionRefusedError as exc:
            self.refused_at = time.monotonic()
            raise LinkDown(f"connect to {self.address} failed: {exc.strerror or exc}") from exc
        except OSError as exc:
            raise LinkDown(f"connect to {self.address} failed: {exc.strerror or exc}") from exc
        self._protocol = protocol
        self._stale.clear()
        self._timeouts = 0

    async def _resolve(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[socket.AddressFamily, tuple[str, int]]:
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            pass
        else:  # an address: no resolver thread (thousands of devices reconnect cheaply)
            return socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (self.host, self.port)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                infos = await loop.getaddrinfo(
                    self.host, self.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except socket.gaierror as exc:
            raise LinkDown(f"cannot resolve {self.host}: {exc.strerror}") from exc
        except TimeoutError as exc:
            raise LinkDown(f"cannot resolve {self.host}: no answer from the resolver") from exc
        family, _, _, _, sockaddr = infos[0]
        return family, (sockaddr[0], sockaddr[1])

    def close(self) -> None:
        """Drop the connection; late answers to earlier requests die with it."""
        p, self._protocol = self._protocol, None
        if p is not None and p.transport is not None:
            p.transport.abort()
        self._fail(LinkDown("connection closed"))
        self._stale.clear()
        if self._settled is not None:
            self._settled.set()

    async def read(
        self, device_id: int, function_code: int, address: int, count: int, timeout_s: float
    ) -> list[int]:
        """See Link.read."""
        p = self._protocol
        if p is None or p.transport is None or p.transport.is_closing():
            raise LinkDown("not connected")
        self._tid = (self._tid + 1) & 0xFFFF
        tid = self._tid
        strays = self.stray_answers
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._waiting = (tid, device_id, fut)
        p.transport.write(tcp_frame(tid, device_id, read_pdu(function_code, address, count)))
        # A timer that fails the future (cheaper than asyncio.timeout per request, and no
        # cancellation is borrowed from the task, so none can be lost).
        timer = None
        if self._deadlines is not None:
            self._deadlines.add(fut, loop.time() + timeout_s)
        else:
            timer = loop.call_later(timeout_s, _expire, fut)
        try:
            pdu = await fut
        except LinkTimeout:
            self._waiting = None  # from now on its answer is a late one
            self._mark_stale(tid)
            self._timeouts += 1
            await self._settle()
            if self.stray_answers > strays:
                # The device answers, under another id: say so, not "no answer".
                raise FrameError(
                    "transaction",
                    f"no answer with our transaction id within {timeout_s:g} s, but "
                    f"{self.stray_answers - strays} with another id: the device does not "
                    "echo the request's transaction id",
                ) from None
            raise LinkTimeout(f"no answer within {timeout_s:g} s") from None
        finally:
            if timer is not None:
                timer.cancel()
            if self._waiting is not None and self._waiting[2] is fut:
                self._waiting = None
            if not fut.done():  # cancelled: its answer, if any, is late from now on
                fut.cancel()
                self._mark_stale(tid)
        self._timeouts = 0
        return registers_of(pdu, function_code, count)

    async def _settle(self) -> None:
        if self._settle_s is None:
            if self._timeouts >= MAX_TIMEOUTS_KEPT:
                self.close()
            return
        if self._settle_s <= 0:
            self.close()
            return
        if self._settled is None:
            self._settled = asyncio.Event()
        settled = self._settled
        settled.clear()
        try:
            async with asyncio.timeout(self._settle_s):
                await settled.wait()
        except TimeoutError:
            self.close()  # still silent: the late answer must never meet a later request

    def _answer(self, tid: int, device_id: int, pdu: bytes) -> None:
        waiting = self._waiting
        if waiting is not None and waiting[0] == tid:
            fut = waiting[2]
            if not fut.done():
                if device_id != waiting[1]:
                    fut.set_exception(
                        FrameError(
                            "wrong_device", f"answer from device {device_id}, asked {waiting[1]}"
                        )
                    )
                else:
                    fut.set_result(pdu)
            return
        if tid in self._stale:
            del self._stale[tid]
            self.late_answers += 1
            if not self._stale and self._settled is not None:
                self._settled.set()
            return
        self.stray_answers += 1

    def _mark_stale(self, tid: int) -> None:
        stale = self._stale
        stale.pop(tid, None)  # a reused id moves to the newest end
        stale[tid] = None
        if len(stale) > MAX_STALE_KEPT:
            del stale[next(iter(stale))]

    def _fail(self, exc: Exception) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting[2].done():
            waiting[2].set_exception(exc)

    def _broken(self, exc: FrameError) -> None:
        self._fail(exc)
        self.close()

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is not self._protocol:
            return  # an older connection we dropped ourselves
        reason = f": {exc}" if exc else ""
        self._fail(LinkDown(f"connection lost{reason}"))
        self._protocol = None
        if self._settled is not None:
            self._settled.set()
