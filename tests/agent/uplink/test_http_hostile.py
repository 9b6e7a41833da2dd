"""HTTP uplink against a misbehaving backend: a raw asyncio server on loopback that sends
exactly the bytes a broken backend or proxy would, with a real SQLite outbox."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.config import HttpUplink as HttpUplinkConfig
from agent.records import AlertDraft
from agent.store import Outbox
from agent.summaries import SummaryDraft
from agent.uplink import HttpTransport, delivery
from tests.agent.store._drafts import T0, draft
from tests.agent.uplink._alerts import asset
from tests.agent.uplink._running import Longest, Running, assert_held_back, until
from tests.agent.uplink._running import true as _true

UP = "up"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    """Reads one request's head; it and its Content-Length (0 without one)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, length


async def _read_whole(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Reads one request; its head and its body."""
    head, length = await _read_head(reader)
    return head, await reader.readexactly(length)


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """Reads one request; its method."""
    head, _ = await _read_whole(reader)
    return head.split(b" ", 1)[0]


def _answer(
    status: int, *, body: bytes = b"", length: int | None = None, extra: bytes = b""
) -> bytes:
    length = len(body) if length is None else length
    return (
        b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
        % (status, length, extra)
    ) + body


_Handle = Callable[[Any, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _connection(talk: _Handle) -> _Handle:
    """A test backend's connection handler: `talk` answers on the connection; a client gone
    (or a wait past a bound of the backend's own) ends it quietly; the connection is closed
    in any case."""

    async def handle(self: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await talk(self, reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    return handle


class Backend:
    """Answers every POST with `answer` (bytes) and closes; counts the POSTs."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.posts = 0

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await _read_request(reader) == b"POST":
            self.posts += 1
        writer.write(self.answer)
        await writer.drain()


@asynccontextmanager
async def serving(
    backend: Backend | Slow | ForgetsIdle | Throttled | Picky | CutsSecondHead,
) -> AsyncIterator[str]:
    server = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/alerts"
    finally:
        server.close()


def _machines(n: int) -> list[AlertDraft]:
    """n raises, each of its own machine (its own episode: a canary may be any of them)."""
    return [draft(i=i, asset=f"asset-{i}") for i in range(n)]


async def _outbox(tmp_path: Path) -> Outbox:
    return Outbox(
        tmp_path / "outbox.db", gateway_id="gw-01", max_bytes=1 << 30, first_seq=1, uplinks=(UP,)
    )


def _cfg(url: str, **kw: float) -> HttpUplinkConfig:
    base = {"timeout_s": 2.0, "max_backoff_s": 0.3, **kw}
    return HttpUplinkConfig(url=url, token="t", allow_insecure_http=True, **base)  # type: ignore[arg-type]


async def test_a_200_cut_short_before_its_body_ends_is_not_a_delivery(tmp_path: Path) -> None:
    """A 200 whose connection closes before its Content-Length is an answer we never got
    whole (a proxy or backend dying mid-answer): resent, never marked delivered."""
    backend = Backend(_answer(200, body=b'{"accep', length=1000))
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append([draft(i=i) for i in range(3)])
        async with Running(
            delivery(UP, HttpTransport(_cfg(url), name=UP), outbox, _cfg(url))
        ) as up:
            await until(lambda: _true(backend.posts >= 3))
        assert (await outbox.stats()).pending == 3
        assert up.status.delivered_total == 0
        assert "payload is not completed" in (up.status.last_error or "")
        backend.answer = _answer(200, body=b"{}")  # the backend answers whole again
        async with Running(delivery(UP, HttpTransport(_cfg(url), name=UP), outbox, _cfg(url))):
            await until(lambda: _pending_is(outbox, 0))


CLOSE_DELIMITED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"


async def test_a_200_cut_short_by_a_close_is_not_a_delivery(tmp_path: Path) -> None:
    """A backend that crashed mid-answer may not have stored the batch. A 200 with no
    Content-Length (its end is the close) whose JSON stops half way, or empty, and a 200
    whose Content-Length is past our 16 KiB read but more than came: resent, not delivered
    (both were counted delivered: 2 of 2 lost). A whole close-delimited answer delivers."""
    big = b'{"accepted": 2, "pad": "' + b" " * 20000
    for i, answer in enumerate(
        (CLOSE_DELIMITED + b'{"accep', CLOSE_DELIMITED, _answer(200, body=big, length=40000))
    ):
        delivered, error = await _delivered_by(tmp_path / str(i), answer)
        assert delivered == 0 and "cut short" in (error or ""), (i, error)
    delivered, error = await _delivered_by(tmp_path / "whole", CLOSE_DELIMITED + b'{"ok": 1}')
    assert delivered == 2, error


async def test_a_whole_close_delimited_200_that_is_not_json_is_a_delivery(
    tmp_path: Path,
) -> None:
    """A backend answering 200 typed JSON with the bare text OK (or a Python dict's repr)
    and closing (no Content-Length): taken for JSON cut short, the batch was resent
    forever (10 POSTs, 0 of 2 delivered in the probe). A body that is whole but not JSON
    is the backend's acknowledgement; JSON cut short (a bracket or string still open, a
    literal's start) is still resent."""
    for i, body in enumerate((b"OK", b"{'accepted': 2}", b"Accepted\n")):
        delivered, error = await _delivered_by(tmp_path / f"whole{i}", CLOSE_DELIMITED + body)
        assert delivered == 2, (body, error)
    for i, body in enumerate((b'{"accepted": [1, 2]', b'["a', b"tr", b"-1.", b"  ")):
        delivered, error = await _delivered_by(tmp_path / f"cut{i}", CLOSE_DELIMITED + body)
        assert delivered == 0 and "cut short" in (error or ""), (body, error)


async def test_an_unasked_101_answer_dead_letters_nothing(tmp_path: Path) -> None:
    """A 1xx final answer is no refusal of the alerts: retried, never dead-lettered."""
    backend = Backend(b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n")
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append([draft(i=i) for i in range(3)])
        async with Running(
            delivery(UP, HttpTransport(_cfg(url), name=UP), outbox, _cfg(url))
        ) as up:
            await until(lambda: _true(up.status.consecutive_failures >= 2))
        stats = await outbox.stats()
        assert stats.dead_lettered == 0 and stats.pending == 3
        assert "HTTP 101" in (up.status.last_error or "")


async def test_an_absurd_retry_after_waits_no_longer_than_max_backoff(tmp_path: Path) -> None:
    """Retry-After of 10^9 s, or a date in 2099, is honoured only up to max_backoff_s."""
    backend = Backend(_answer(503, extra=b"Retry-After: 1000000000\r\n"))
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append([draft(i=0)])
        c = _cfg(url, max_backoff_s=0.5)
        t0 = time.monotonic()
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)):
            await until(lambda: _true(backend.posts >= 3))
            backend.answer = _answer(503, extra=b"Retry-After: Wed, 21 Oct 2099 07:28:00 GMT\r\n")
            await until(lambda: _true(backend.posts >= 5))
        assert time.monotonic() - t0 < 4.0
        assert (await outbox.stats()).pending == 1


async def _pending_is(outbox: Outbox, n: int) -> bool:
    return (await outbox.stats()).pending == n


async def test_a_retry_after_date_past_year_9999_neither_stalls_nor_crashes(
    tmp_path: Path,
) -> None:
    """A Retry-After date whose year overflows the C long (a broken or hostile proxy): a 503
    carrying it is an ordinary 503 (retried, its status in the error); a 200 carrying it is
    a delivery, not an "unexpected error" resent forever."""
    huge = b"Retry-After: Wed, 21 Oct 99999999999999999999 07:28:00 GMT\r\n"
    backend = Backend(_answer(503, extra=huge))
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append([draft(i=i) for i in range(2)])
        c = _cfg(url, max_backoff_s=0.3)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(up.status.consecutive_failures >= 2))
            assert (up.status.last_error or "").endswith("HTTP 503: "), up.status.last_error
            backend.answer = _answer(200, body=b"{}", extra=huge)
            await until(lambda: _pending_is(outbox, 0))
        assert up.status.delivered_total == 2
        assert (await outbox.stats()).dead_lettered == 0


class Slow:
    """Reads a POST, then answers slowly: after `delay_s` (nothing before), or a 200 whose
    body trickles one byte every `trickle_s`. Every wait is bounded (`limit_s`)."""

    def __init__(self, *, delay_s: float = 0.0, trickle_s: float = 0.0, limit_s: float = 20.0):
        self.delay_s, self.trickle_s, self.limit_s = delay_s, trickle_s, limit_s
        self.posts = 0
        self.first_post_at: float | None = None

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(self.limit_s):
            if await _read_request(reader) != b"POST":
                writer.write(_answer(200))  # the probe's HEAD
                await writer.drain()
                return
            self.posts += 1
            self.first_post_at = self.first_post_at or time.monotonic()
            await asyncio.sleep(self.delay_s)
            body = b'{"accepted": 1}' + b" " * 200
            writer.write(_answer(200, body=b"" if self.trickle_s else body, length=len(body)))
            for byte in body if self.trickle_s else b"":
                await writer.drain()
                writer.write(bytes([byte]))
                await asyncio.sleep(self.trickle_s)
            await writer.drain()


async def _slow_answer_times_out_overall(tmp_path: Path, backend: Slow) -> None:
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append([draft(i=0)])
        c = _cfg(url, timeout_s=1.0, max_backoff_s=0.3)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(up.status.failures_total >= 1), timeout_s=10.0)
            assert backend.first_post_at is not None
            failed_after = time.monotonic() - backend.first_post_at
            # ... and goes on: the next attempt is made.
            await until(lambda: _true(backend.posts >= 2), timeout_s=10.0)
        # Within its 1 s timeout overall (generous margin for a loaded box), far before the
        # answer would have been whole (15 s).
        assert failed_after < 5.0, f"gave up after {failed_after:.1f}s"
        assert "TimeoutError" in (up.status.last_error or ""), up.status.last_error
        stats = await outbox.stats()
        assert stats.pending == 1 and stats.delivered == 0 and stats.dead_lettered == 0


async def test_a_200_that_comes_after_a_long_silence_times_out(tmp_path: Path) -> None:
    await _slow_answer_times_out_overall(tmp_path, Slow(delay_s=15.0))


async def test_a_200_whose_body_trickles_times_out_overall_not_per_byte(tmp_path: Path) -> None:
    """One byte every 70 ms: no single read waits anywhere near the timeout, the whole
    body would take 15 s."""
    await _slow_answer_times_out_overall(tmp_path, Slow(trickle_s=0.07))


IDLE_S = 0.3


class ForgetsIdle:
    """A keep-alive backend behind a NAT or firewall that forgets idle flows: nothing tells
    the client; a request on a connection idle for over IDLE_S meets a reset, unanswered
    and not taken. Counts the POSTs it took (answered 200, connection kept) and the resets."""

    def __init__(self) -> None:
        self.posts = 0
        self.resets = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        last: float | None = None
        try:
            while True:
                _, length = await _read_head(reader)
                if last is not None and time.monotonic() - last > IDLE_S:
                    self.resets += 1
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                await reader.readexactly(length)
                self.posts += 1
                writer.write(_answer(200, body=b'{"accepted": 1}'))
                await writer.drain()
                last = time.monotonic()
        except (OSError, asyncio.IncompleteReadError):
            writer.close()


async def test_a_kept_alive_connection_dropped_while_idle_costs_no_failed_post(
    tmp_path: Path,
) -> None:
    """Each alert after an idle gap used to fail once ("Connection reset by peer", a
    failure counted, a warning and a recovery logged, delivery after a backoff). Now the
    POST is sent again at once on a new connection; nothing is taken twice."""
    backend = ForgetsIdle()
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        cfg = _cfg(url)
        transport = HttpTransport(cfg, name=UP)
        async with Running(delivery(UP, transport, outbox, cfg)) as up:
            for i in range(2):
                await outbox.append([draft(i=i)])
                await until(lambda i=i: _true(up.status.delivered_total == i + 1))
                await asyncio.sleep(2 * IDLE_S)  # the NAT forgets the kept-alive connection
            assert up.status.failures_total == 0, up.status.last_error
            assert backend.resets == 1 and transport.stale_retries == 1
        assert backend.posts == 2


async def test_a_backend_closing_after_each_answer_unannounced_costs_no_failed_post(
    tmp_path: Path,
) -> None:
    """A backend (or proxy) that closes the connection right after each answer without a
    `Connection: close`: a POST sent at once after an answer went on the kept-alive
    connection whose close aiohttp had not yet seen and failed ("ClientOSError: [Errno
    None] Can not write request body": no errno, so not taken for a dropped idle
    connection): 10 of 20 alerts sent back to back failed, each a failure counted and a
    backoff in the delivery loop. Now such a POST is sent again at once on a new
    connection: 20 of 20 delivered, none failed, each taken once."""
    backend = Backend(_answer(200, body=b'{"accepted": 1}'))
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append([draft(i=i) for i in range(20)])
        items = await outbox.next_batch(UP, 20)
        async with HttpTransport(_cfg(url), name=UP) as transport:
            results = [await transport.send([item]) for item in items]
            errors = [str(r.error) for r in results if r.error is not None]
            assert errors == [], errors
            assert sum(len(r.delivered) for r in results) == 20
            assert transport.stale_retries >= 1  # the close did meet a reused connection
        # Each alert taken once: a write into the closing connection sent no body.
        assert backend.posts == 20


class CutsSecondHead:
    """Keeps the connection after its first answer; the second POST on it gets part of an
    answer's head, then the close (a backend dying mid-answer); any other POST a 200."""

    def __init__(self) -> None:
        self.posts = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for n in range(2):
                await _read_whole(reader)
                self.posts += 1
                if n == 1:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: appl")
                    break
                writer.write(_answer(200, body=b'{"accepted": 1}'))
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def test_an_answer_cut_in_its_head_on_a_reused_connection_is_a_failure(
    tmp_path: Path,
) -> None:
    """Part of an answer came: the connection was alive and the backend took the POST, so
    this is no dropped idle connection to resend on at once but a failure (the batch is
    resent after a backoff, as any answer cut short)."""
    backend = CutsSecondHead()
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append([draft(i=i) for i in range(2)])
        items = await outbox.next_batch(UP, 2)
        async with HttpTransport(_cfg(url), name=UP) as transport:
            first = await transport.send(items[:1])
            second = await transport.send(items[1:])
        assert first.error is None and len(first.delivered) == 1
        assert second.delivered == [] and second.error is not None
        assert transport.stale_retries == 0 and backend.posts == 2


class Conflicting:
    """A backend with a unique alert_id: a batch holding an id it has is refused with 409
    Conflict (nothing stored); its first answer is lost (it stores, then stays silent past
    the client's timeout), as a backend whose answer a dying link ate."""

    def __init__(self, *, silent_s: float) -> None:
        self.silent_s = silent_s
        self.stored: list[str] = []
        self.posts = 0

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(10.0):
            head, body = await _read_whole(reader)
            if not head.startswith(b"POST"):
                writer.write(_answer(200))  # the probe's HEAD
                return
            self.posts += 1
            ids = [a["alert_id"] for a in json.loads(body)["alerts"]]
            if dup := [i for i in ids if i in self.stored]:
                said = {"error": "duplicate alert_id", "alert_id": dup[0]}
                writer.write(_answer(409, body=json.dumps(said).encode()))
                return
            self.stored += ids
            if self.posts == 1:
                await asyncio.sleep(self.silent_s)  # the answer is lost
            writer.write(_answer(200, body=b'{"accepted": %d}' % len(ids)))


async def test_a_409_duplicate_after_a_lost_answer_counts_as_delivered_once(
    tmp_path: Path,
) -> None:
    """The backend stored a batch but its answer was lost; the resend (same ids) is refused
    as a duplicate (409): the backend has those alerts, so they are delivered, not dead
    letters an operator would requeue into the same 409 forever."""
    backend = Conflicting(silent_s=1.5)
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        records = await outbox.append([draft(i=i) for i in range(3)])
        c = _cfg(url, timeout_s=1.0)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(backend.posts >= 1))
            await outbox.append([draft(i=3)])  # a new alert, in the resent batch
            await until(lambda: _pending_is(outbox, 0))
        stats = await outbox.stats()
    assert stats.dead_lettered == 0 and stats.delivered == 4
    assert backend.stored == [r["alert_id"] for r in records] + [f"gw-01-{4:012d}"]
    assert up.status.delivered_total == 4 and up.status.dead_lettered_total == 0


class Narrow:
    """A backend behind a narrow link (GPRS, a congested satellite hop): the request body
    comes in at `rate` bytes/s; each POST is answered 200 once read whole."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.delivered: list[str] = []
        self.posts = 0

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(10.0):
            head, length = await _read_head(reader)
            body = b""
            while len(body) < length:
                body += await reader.readexactly(min(256, length - len(body)))
                await asyncio.sleep(256 / self.rate)
            if head.startswith(b"POST"):
                self.posts += 1
                self.delivered += [a["alert_id"] for a in json.loads(body)["alerts"]]
            writer.write(_answer(200, body=b"{}"))
            await writer.drain()


async def test_a_batch_too_slow_for_the_link_is_halved_not_resent_forever(
    tmp_path: Path,
) -> None:
    """After an outage the backlog goes in full batches; over a link too slow to carry one
    within timeout_s every attempt timed out and nothing was ever delivered again (new
    alerts join the same batch). A batch that times out is halved, as one too large."""
    backend = Narrow(rate=3000.0)
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        records = await outbox.append([draft(i=i) for i in range(8)])
        c = _cfg(url, timeout_s=0.6, batch_size=8)
        assert len(json.dumps(records)) / backend.rate > 2 * c.timeout_s  # a full batch
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(up.status.delivered_total >= 2), timeout_s=10.0)
        assert "TimeoutError" in (up.status.last_error or "")
    assert backend.delivered[:2] == [r["alert_id"] for r in records[:2]]


def _typed(status: int, content_type: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %d X\r\n%sContent-Length: %d\r\n\r\n%s" % (
        status, b"Content-Type: %s\r\n" % content_type if content_type else b"", len(body), body
    )  # fmt: skip


async def _delivered_by(tmp_path: Path, answer: bytes) -> tuple[int, str | None]:
    """Alerts marked delivered when every POST is answered `answer`, and the last error."""
    backend = Backend(answer)
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append([draft(i=i) for i in range(2)])
        async with Running(
            delivery(UP, HttpTransport(_cfg(url), name=UP), outbox, _cfg(url))
        ) as up:
            await until(lambda: _true(backend.posts >= 2 or up.status.delivered_total == 2))
        return up.status.delivered_total, up.status.last_error


async def test_an_acknowledgement_sent_as_text_html_is_a_delivery(tmp_path: Path) -> None:
    """Express's res.send("OK") and PHP's echo answer with Content-Type text/html: no web
    page (no markup) but the backend's acknowledgement. Taken for a block page it was
    resent forever and nothing past the first batch was ever sent."""
    for body in (b"OK", b'{"accepted": 2, "note": "a<b"}', b""):
        delivered, error = await _delivered_by(
            tmp_path / body.hex(), _typed(200, b"text/html; charset=utf-8", body)
        )
        assert delivered == 2, (body, error)


async def test_a_captive_portal_page_is_no_delivery_whatever_its_content_type(
    tmp_path: Path,
) -> None:
    """A portal or proxy page without a Content-Type, or as XHTML, is as much a web page as
    one sent as text/html: nothing is marked delivered."""
    page = b"\r\n<!DOCTYPE html>\n<html><head><title>Hotspot login</title></head></html>"
    for content_type in (b"", b"application/xhtml+xml", b"text/plain"):
        delivered, error = await _delivered_by(
            tmp_path / content_type.hex(), _typed(200, content_type, page)
        )
        assert delivered == 0, content_type
        assert "a web page" in (error or ""), error


async def test_an_xml_acknowledgement_is_a_delivery(tmp_path: Path) -> None:
    """A backend or CMMS answering XML (an <ack/>, a SOAP envelope) acknowledges as much as
    one answering JSON. Taken for a web page because it begins with '<', every batch was
    resent forever and nothing was ever marked delivered (0 of 2 in the probe)."""
    answers = (
        (b"application/xml", b'<?xml version="1.0" encoding="UTF-8"?>\n<ack accepted="2"/>'),
        (b"text/xml; charset=utf-8", b"<result><status>OK</status></result>"),
        (b"application/soap+xml", b"<s:Envelope><s:Body><ok/></s:Body></s:Envelope>"),
    )
    for content_type, body in answers:
        delivered, error = await _delivered_by(
            tmp_path / content_type.hex(), _typed(200, content_type, body)
        )
        assert delivered == 2, (content_type, error)
    page = b"<?xml version='1.0'?><html><body>Access denied</body></html>"
    delivered, error = await _delivered_by(tmp_path / "page", _typed(200, b"text/xml", page))
    assert delivered == 0 and "a web page" in (error or ""), error


async def test_a_409_web_page_is_no_duplicate(tmp_path: Path) -> None:
    """A CDN's error page answered with 409 (Cloudflare's error 1014, a custom hostname
    not set up on its side, is 409 + HTML) was taken for "the backend already has it":
    every alert was marked delivered one by one and never reached the backend (2 of 2 in
    the probe). Now it is retried like a 2xx web page."""
    page = (
        b"<!doctype html>\n<html><head><title>api.example.com | Error 1014</title></head>"
        b"<body><h1>Error 1014: CNAME cross-user banned</h1></body></html>"
    )
    delivered, error = await _delivered_by(tmp_path / "page", _typed(409, b"text/html", page))
    assert delivered == 0 and "HTTP 409 with a web page" in (error or ""), error


async def test_a_409_that_names_no_id_is_no_duplicate(tmp_path: Path) -> None:
    """An API gateway or WAF answering 409 "Conflict" to every POST (plain text, or AWS
    API Gateway's JSON message) was taken for "the backend already has it": each alert,
    sent alone, was marked delivered (2 of 2) and never reached the backend. A 409 is a
    duplicate only when it names the alert's id; else a refusal, held, not dead-lettered."""
    for i, (kind, body) in enumerate(
        ((b"text/plain", b"Conflict"), (b"application/json", b'{"message": "Conflict"}'))
    ):
        delivered, error = await _delivered_by(tmp_path / str(i), _typed(409, kind, body))
        assert delivered == 0 and "HTTP 409" in (error or ""), error


NGINX_400 = (
    b"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>"
    b"\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP "
    b"request was sent to HTTPS port</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n"
    b"</html>\r\n"
)


async def test_an_endpoint_refusing_everything_alike_does_not_dead_letter_the_backlog(
    tmp_path: Path,
) -> None:
    """A misconfigured endpoint (http:// to nginx's TLS port) answers 400 to every POST:
    the whole backlog went to the dead letters within seconds (300 of 300 in 5 s in the
    probe), and every new alert after it. After a few refusals alike in a row, the next
    one waits a backoff before it is dead-lettered, so fixing the URL (or the proxy)
    finds the backlog still pending."""
    backend = Backend(_typed(400, b"text/html", NGINX_400))
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append(_machines(20))
        c = _cfg(url, max_backoff_s=30.0)
        up = delivery(UP, HttpTransport(c, name=UP), outbox, c, rng=Longest())
        async with Running(up):
            await assert_held_back(up, outbox, 20, settle_s=1.0)
            backend.answer = _answer(200, body=b"{}")  # the URL is fixed
            await until(lambda: _pending_is(outbox, 0), timeout_s=10.0)
        assert up.status.delivered_total == 20


async def _append_a_summary(outbox: Outbox) -> None:
    """One summary window (m1-de, z) in the outbox, for the summaries endpoint."""
    window = {"velocity_rms_mm_s": {"min": 1.0, "mean": 1.1, "max": 1.2, "last": 1.1}}
    await outbox.append_summaries([SummaryDraft(asset(), "m1-de", "modbus", T0, T0, {"z": window})])


async def test_an_alert_does_not_wait_for_a_summaries_endpoint_that_never_answers(
    tmp_path: Path,
) -> None:
    """summaries_url behind a firewall that drops its packets: each summaries send hung
    for timeout_s, and an alert stored meanwhile waited for it (7-8 s of 10 s measured).
    Now the summaries give way; they stay pending and are sent again after the alert."""
    backend = Backend(_answer(200, body=b"{}"))
    with socket.socket() as silent:  # accepts connections (its backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        hole = f"http://127.0.0.1:{silent.getsockname()[1]}/summaries"
        async with await _outbox(tmp_path) as outbox, serving(backend) as url:
            cfg = _cfg(url, timeout_s=60.0)
            cfg = cfg.model_copy(update={"summaries_url": hole})
            await _append_a_summary(outbox)
            async with Running(delivery(UP, HttpTransport(cfg, name=UP), outbox, cfg)) as up:
                await until(lambda: _true(up.status.state == "sending"))
                await asyncio.sleep(0.3)  # the summaries' POST is on its way into the hole
                await outbox.append([draft(i=1)])
                await until(lambda: _pending_is(outbox, 0), timeout_s=15.0)  # not 60 s
                stats = await outbox.stats()
            assert backend.posts == 1 and stats.summaries_pending == 1
            assert up.status.delivered_total == 1 and up.status.failures_total == 0


class RayIds(Backend):
    """A CDN in front of the backend refusing every POST with its error page, which names
    a new Ray ID and the time on each answer (Cloudflare's 1020, a WAF's incident id)."""

    def __init__(self) -> None:
        super().__init__(b"")
        self.fixed = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = self.posts + 1
        page = (
            b"<html><body><h1>Error 1020</h1>Access denied. Cloudflare Ray ID: %016x "
            b"&bull; 2026-11-26 10:%02d:%02d UTC &bull; request 0d3f-%d</body></html>"
            % (0x8A1B2C3D4E5F0000 + n * 7919, n % 60, n * 7 % 60, n)
        )
        self.answer = _answer(200, body=b"{}") if self.fixed else _typed(400, b"text/html", page)
        await super().handle(reader, writer)


async def test_refusals_that_differ_only_by_a_ray_id_count_as_alike(tmp_path: Path) -> None:
    """A CDN's error page differs on each refusal by its Ray ID and time only: compared
    as raw text, no two were alike, and the whole backlog was dead-lettered (50 of 50 in
    5 s in the probe). Compared with ids and numbers masked, it is held back as any
    endpoint refusing everything, and delivered once the CDN lets the agent through."""
    backend = RayIds()
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append(_machines(20))
        c = _cfg(url, max_backoff_s=3.0)  # the held one is tried again within 3 s
        up = delivery(UP, HttpTransport(c, name=UP), outbox, c, rng=Longest())
        async with Running(up):
            await assert_held_back(up, outbox, 20, settle_s=1.0)
            backend.fixed = True
            await until(lambda: _pending_is(outbox, 0), timeout_s=10.0)
        assert up.status.delivered_total == 20


class Throttled:
    """A backend behind a link that carries at most `fits` alerts within the agent's
    timeout: a larger batch is answered only after `slow_s`; each size is counted."""

    def __init__(self, fits: int, slow_s: float, status: int = 200) -> None:
        self.fits, self.slow_s, self.status = fits, slow_s, status
        self.sizes: list[int] = []
        self.delivered: set[str] = set()

    @property
    def too_big(self) -> int:
        return sum(1 for n in self.sizes if n > self.fits)

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await _read_whole(reader)
        if not head.startswith(b"POST"):
            writer.write(_answer(200))
            return
        alerts = json.loads(body)["alerts"]
        self.sizes.append(len(alerts))
        if len(alerts) > self.fits:
            await asyncio.sleep(self.slow_s)
            writer.write(_answer(self.status))
        else:
            self.delivered |= {a["alert_id"] for a in alerts}
            writer.write(_answer(200, body=b"{}"))
        await writer.drain()


async def _settles_on_what_fits(tmp_path: Path, backend: Throttled, **cfg: float) -> None:
    """60 alerts through `backend` (which carries 9 a batch): every one delivered, few
    batches too large, and the batch size settled on 9."""
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append([draft(i=i) for i in range(60)])
        c = _cfg(url, **cfg)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)):
            await until(lambda: _pending_is(outbox, 0), timeout_s=30.0)
    assert len(backend.delivered) == 60
    assert backend.too_big <= 3, backend.sizes
    assert 9 in backend.sizes, backend.sizes  # grew back to the largest size that fits


async def test_a_batch_size_that_timed_out_is_not_tried_every_other_batch(
    tmp_path: Path,
) -> None:
    """After a timeout halved the batch, each success doubled it back to the size that
    timed out: on a link carrying 9 alerts per timeout, batches swung 16, 8, 16, 8 and
    every other one timed out (7 timeouts for 60 alerts here; 13 for 200 in the probe,
    each a WARNING and a wasted timeout_s). A size that timed out caps the growth below
    it, so the batch size settles on one the link carries."""
    await _settles_on_what_fits(
        tmp_path, Throttled(fits=9, slow_s=3.0), timeout_s=0.5, batch_size=16, max_backoff_s=0.2
    )


async def test_a_batch_size_refused_as_too_large_is_not_tried_every_other_batch(
    tmp_path: Path,
) -> None:
    """The same for a 413: a body limit of 9 alerts had every other batch refused."""
    await _settles_on_what_fits(tmp_path, Throttled(fits=9, slow_s=0.0, status=413), batch_size=16)


async def test_after_an_outage_of_timeouts_batches_grow_back_to_full_size(
    tmp_path: Path,
) -> None:
    """A backend that hangs (or a link that black-holes packets) times out every batch
    down to one alert: that says nothing about the sizes the link carries, so once it
    answers again the batches grow back to batch_size as before, not capped for minutes
    at the last size that timed out."""
    backend = Throttled(fits=0, slow_s=3.0)  # the outage: every POST hangs
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append([draft(i=i) for i in range(40)])
        c = _cfg(url, timeout_s=0.3, batch_size=16, max_backoff_s=0.1)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)):
            await until(lambda: _true(1 in backend.sizes), timeout_s=15.0)
            backend.fits = 1000  # the backend is back
            await until(lambda: _pending_is(outbox, 0), timeout_s=15.0)
    assert len(backend.delivered) == 40
    assert 16 in backend.sizes[backend.sizes.index(1) :], backend.sizes


class Picky(Backend):
    """Refuses, with the same page, every batch holding an alert in `bad`; takes the rest."""

    def __init__(self, bad: set[str]) -> None:
        super().__init__(b"")
        self.bad = bad
        self.delivered: list[str] = []

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await _read_whole(reader)
        ids = [a["alert_id"] for a in json.loads(body).get("alerts", [])]
        self.posts += 1
        if self.bad.intersection(ids):
            writer.write(_typed(400, b"text/html", NGINX_400))
        else:
            self.delivered += ids
            writer.write(_answer(200, body=b"{}"))
        await writer.drain()


async def test_an_endpoint_refusing_everything_dead_letters_no_more_as_backoffs_pass(
    tmp_path: Path,
) -> None:
    """Past the first refusals alike, each backoff still dead-lettered one more alert (the
    held one, refused again): at the 30 s default, a weekend of a proxy's 400 page
    emptied the backlog all the same, one every 15 s or so. A held alert is now
    dead-lettered only once one behind it is delivered (so it was its own fault)."""
    backend = Picky(bad=set())
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        records = await outbox.append([draft(i=i) for i in range(20)])
        backend.bad = {r["alert_id"] for r in records}
        c = _cfg(url, max_backoff_s=0.2)
        up = delivery(UP, HttpTransport(c, name=UP), outbox, c, base_backoff_s=0.1)
        async with Running(up):
            await until(lambda: _true(backend.posts >= 20), timeout_s=10.0)
            stats = await outbox.stats()
            assert stats.dead_lettered == 0 and stats.pending == 20, stats
            backend.bad = set()  # the proxy is fixed
            await until(lambda: _pending_is(outbox, 0), timeout_s=10.0)
        assert up.status.delivered_total == 20


async def test_a_held_alert_that_is_refused_for_its_own_sake_blocks_none_behind_it(
    tmp_path: Path,
) -> None:
    """Four alerts the backend refuses alike, then good ones: the fourth is held, but the
    next one is tried meanwhile; once it is delivered the held one, refused alone again,
    is dead-lettered as its own, and every good alert arrives."""
    backend = Picky(bad=set())
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        records = await outbox.append(_machines(9))
        backend.bad = {r["alert_id"] for r in records[:4]}
        c = _cfg(url, max_backoff_s=0.2)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)):
            await until(lambda: _pending_is(outbox, 0), timeout_s=10.0)
        dead = await outbox.dead_letters()
    assert {d["id"] for d in dead} == backend.bad
    assert backend.delivered == [r["alert_id"] for r in records[4:]]


class _Sluggish:
    """Answers each POST 200 after `delay_s` on a kept-alive connection; counts them."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.posts = 0

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            self.posts += 1
            await asyncio.sleep(self.delay_s)
            writer.write(_answer(200, body=b"{}"))
            await writer.drain()


async def test_a_steady_alert_stream_does_not_starve_a_slow_summaries_endpoint(
    tmp_path: Path,
) -> None:
    """A summaries endpoint that answers, but more slowly than alerts come (0.6 s here, an
    alert every 0.25 s): each summaries send was cancelled for the next alert and made
    again, for ever (probe: 1 s answers, an alert every 0.5 s: 20 summaries POSTs received
    in 10 s, none delivered). Now the summaries give way a few times in a row at most."""
    alerts, slow = Backend(_answer(200, body=b"{}")), _Sluggish(0.6)
    summaries = await asyncio.start_server(slow.handle, "127.0.0.1", 0)
    surl = f"http://127.0.0.1:{summaries.sockets[0].getsockname()[1]}/summaries"
    try:
        async with await _outbox(tmp_path) as outbox, serving(alerts) as url:
            cfg = _cfg(url, timeout_s=10.0).model_copy(update={"summaries_url": surl})
            await _append_a_summary(outbox)
            async with Running(delivery(UP, HttpTransport(cfg, name=UP), outbox, cfg)) as up:
                for i in range(16):  # 4 s of alerts
                    await asyncio.sleep(0.25)
                    await outbox.append([draft(i=i)])
                summaries_delivered = up.status.summaries_delivered_total
                await until(lambda: _pending_is(outbox, 0))
        assert summaries_delivered == 1, (slow.posts, up.status)
        assert up.status.delivered_total == 16
    finally:
        summaries.close()


async def test_an_endpoint_refusing_everything_dead_letters_nothing_across_restarts(
    tmp_path: Path,
) -> None:
    """nginx's 400 page for every POST, the agent restarted twice meanwhile, then the URL
    fixed: the first 3 alerts refused alike were dead-lettered at once ('free refusals'),
    and 3 more after each restart (the count starts again): 9 of 12 alerts never arrived
    without a manual requeue. No alert is dead-lettered until one behind it is delivered:
    every alert arrives, once, in order."""
    backend = Picky(bad=set())
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        records = await outbox.append([draft(i=i) for i in range(12)])
        backend.bad = {r["alert_id"] for r in records}
        c = _cfg(url, max_backoff_s=0.2)
        for _ in range(3):  # the agent's first run, then two restarts
            posts = backend.posts + 8
            up = delivery(UP, HttpTransport(c, name=UP), outbox, c, base_backoff_s=0.1)
            async with Running(up):
                await until(lambda: _true(backend.posts >= posts), timeout_s=10.0)  # noqa: B023
            assert up.status.state in {"backoff", "sending"}, up.status
            assert up.status.consecutive_failures > 0 and up.status.last_error, up.status
        stats = await outbox.stats()
        assert stats.dead_lettered == 0 and stats.pending == 12, stats
        backend.bad = set()  # the URL is fixed
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)):
            await until(lambda: _pending_is(outbox, 0), timeout_s=10.0)
        assert (await outbox.stats()).dead_lettered == 0
    assert backend.delivered == [r["alert_id"] for r in records]


async def test_a_quiet_plant_keeps_its_only_refused_alert_pending_and_failing(
    tmp_path: Path,
) -> None:
    """One alert, refused alike with none behind it to try: it is retried after each
    backoff, not dead-lettered, and the uplink shows failing and says why."""
    backend = Picky(bad=set())
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        records = await outbox.append([draft(i=0)])
        backend.bad = {records[0]["alert_id"]}
        c = _cfg(url, max_backoff_s=0.2)
        up = delivery(UP, HttpTransport(c, name=UP), outbox, c, base_backoff_s=0.1)
        async with Running(up):
            await until(lambda: _true(backend.posts >= 4), timeout_s=10.0)
            # The refusal's own reason is set first, the quiet-plant one just after it.
            await until(lambda: _true("quiet plant" in (up.status.last_error or "")), 10.0)
            assert (await outbox.stats()).dead_lettered == 0
            assert up.status.consecutive_failures > 0, up.status
            backend.bad = set()
            await until(lambda: _pending_is(outbox, 0), timeout_s=10.0)
    assert backend.delivered == [records[0]["alert_id"]]


class Scripted(Backend):
    """Answers the POSTs with the statuses in `script` in turn (the last one for good, the
    400s as nginx's page); a HEAD (the reachability probe) with 200."""

    def __init__(self, script: list[int]) -> None:
        super().__init__(b"")
        self.script = script
        self.delivered: list[str] = []

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await _read_whole(reader)
        if not head.startswith(b"POST"):
            writer.write(_answer(200))
            return
        status = self.script[min(self.posts, len(self.script) - 1)]
        self.posts += 1
        if status == 200:
            self.delivered += [a["alert_id"] for a in json.loads(body)["alerts"]]
            writer.write(_answer(200, body=b"{}"))
        elif status == 400:
            writer.write(_typed(400, b"text/html", NGINX_400))
        else:
            writer.write(_answer(status))
        await writer.drain()


async def test_a_canary_delivered_before_an_outage_proves_nothing_after_it(
    tmp_path: Path,
) -> None:
    """The first alert refused (the proxy's 400 page), the one behind it delivered (the
    proxy recovered): the first was 'proven' refused for its own sake, for good. Its next
    try met a 503, and once the endpoint answered again it was behind the same proxy page
    refusing everything: the first alert was dead-lettered on that one refusal. A failure
    between ends the proof: it is held, like any refusal that may be the endpoint's."""
    backend = Scripted([400, 400, 200, 503, 400])
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append([draft(i=i) for i in range(2)])
        c = _cfg(url, max_backoff_s=0.2)
        up = delivery(UP, HttpTransport(c, name=UP), outbox, c)
        async with Running(up):

            async def settled() -> bool:
                return backend.posts >= 7 or (await outbox.stats()).dead_lettered > 0

            await until(settled, timeout_s=10.0)
        stats = await outbox.stats()
    assert stats.dead_lettered == 0 and stats.pending == 1, stats
    assert len(backend.delivered) == 1


def _episode_order_kept(received: list[str], records: list[dict[str, Any]]) -> bool:
    """Whether the backend got each episode's records (kind, asset, sensor, channel) in
    the order they were stored."""
    by_id = {r["alert_id"]: r for r in records}
    last: dict[str, int] = {}
    for aid in received:
        r = by_id[aid]
        key = json.dumps([r["kind"], r["asset"]["id"], r["sensor"]])
        if r["seq"] < last.get(key, -1):
            return False
        last[key] = r["seq"]
    return True


async def test_a_canary_never_overtakes_an_earlier_record_of_its_episode(
    tmp_path: Path,
) -> None:
    """A raise, its clear, then another machine's raise; the backend answers 400, 400,
    then 200: the raise was held and the record behind it, its own clear, sent as the
    canary and delivered first (received order [1, 0, 2]: the backend saw a clear of a
    fault it never saw raised, then the raise, a case opened for ever). The canary is now
    the first record of another episode; with none behind (only the clear), the held
    raise is retried after the backoff, as on a quiet plant."""
    for others in (True, False):
        backend = Scripted([400, 400, 200])
        async with await _outbox(tmp_path / str(others)) as outbox, serving(backend) as url:
            drafts = [draft(i=0), replace(draft(i=1), state="cleared")]
            if others:
                drafts.append(draft(i=2, asset="asset-b"))
            records = await outbox.append(drafts)
            c = _cfg(url, max_backoff_s=0.2)
            async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)):
                await until(lambda: _pending_is(outbox, 0), timeout_s=10.0)
            assert (await outbox.stats()).dead_lettered == 0
        ids = [r["alert_id"] for r in records]
        assert sorted(backend.delivered) == sorted(ids), backend.delivered
        assert _episode_order_kept(backend.delivered, records), (others, backend.delivered, ids)


async def test_an_alert_held_on_a_quiet_plant_holds_no_summary_back(tmp_path: Path) -> None:
    """One alert the backend refuses for good (its 400 page), no other alert behind it,
    five summaries: the held alert was retried after each backoff and the summaries,
    which wait behind alerts, were never sent (0 of 5 in 4 s, until the next alert: days
    on a calm plant). Now they go while it is held; it stays pending, not dead."""
    backend = Picky(bad=set())
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        records = await outbox.append([draft(i=0)])
        backend.bad = {records[0]["alert_id"]}
        for _ in range(5):
            await _append_a_summary(outbox)
        c = _cfg(url, max_backoff_s=0.2)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)):

            async def summaries_sent() -> bool:
                return (await outbox.stats()).summaries_pending == 0

            await until(summaries_sent, timeout_s=4.0)
        stats = await outbox.stats()
    assert stats.pending == 1 and stats.dead_lettered == 0, stats


class SummariesDown(Backend):
    """Takes every alert (200); its summaries endpoint answers 404 (a wrong summaries_url)."""

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await _read_whole(reader)
        self.posts += head.startswith(b"POST /alerts")
        writer.write(_answer(200 if b" /alerts " in head else 404, body=b"{}"))
        await writer.drain()


async def test_failing_summaries_do_not_say_the_alerts_fail(tmp_path: Path) -> None:
    """A wrong summaries_url (404) while every alert is delivered: the uplink's failure
    streak and last_error (/healthz, `status`) were the summaries', so it read as failing
    though alerts flowed. The summaries' failures are now reported on their own."""
    backend = SummariesDown(b"")
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        c = _cfg(url, max_backoff_s=0.2).model_copy(
            update={"summaries_url": url.replace("/alerts", "/summaries")}
        )
        await _append_a_summary(outbox)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(up.status.failures_total >= 1))
            await outbox.append([draft(i=1)])
            await until(lambda: _true(up.status.delivered_total == 1))
            failed = up.status.failures_total
            await until(lambda: _true(up.status.failures_total > failed))  # summaries again
            st = up.status
            assert st.consecutive_failures == 0 and "404" not in (st.last_error or ""), st
            assert st.summaries_consecutive_failures > 0, st
            assert "HTTP 404" in (st.summaries_last_error or ""), st


async def _every_alert_delivered_none_dead(tmp_path: Path, backend: Scripted, n: int) -> None:
    """n alerts (one per machine) sent to `backend`: each delivered, none dead-lettered."""
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        records = await outbox.append(_machines(n))
        c = _cfg(url, max_backoff_s=0.05)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)):
            await until(lambda: _pending_is(outbox, 0), timeout_s=5.0)
        stats = await outbox.stats()
    assert stats.dead_lettered == 0, stats
    assert sorted(backend.delivered) == sorted(r["alert_id"] for r in records)


async def test_an_endpoint_flipping_between_400_and_200_dead_letters_no_good_alert(
    tmp_path: Path,
) -> None:
    """A flaky proxy answering 400 (its page) and 200 in turn, per request: the held alert's
    canary went through, its next try met the 400 again and it was dead-lettered (a good
    alert, for the proxy's sake). A refusal after a delivered canary is now checked once
    more at once: only two in a row make it the alert's own."""
    await _every_alert_delivered_none_dead(tmp_path, Scripted([400, 200] * 100), 4)


class SplitConflict:
    """A backend that has every alert: a 409 naming the POSTed alert_id, its body sent in
    two segments (as a proxy relays it, or a framework flushes a chunk), the id in the
    second; the probe's HEAD is answered 200."""

    def __init__(self) -> None:
        self.posts = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head, body = await _read_whole(reader)
            if not head.startswith(b"POST"):
                writer.write(_answer(200))
                return
            self.posts += 1
            said = b', "alert_id": "%s"}' % json.loads(body)["alerts"][0]["alert_id"].encode()
            first = b'{"error": "duplicate"'
            writer.write(_answer(409, length=len(first) + len(said)) + first)
            await writer.drain()
            await asyncio.sleep(0.05)  # the second segment comes apart from the first
            writer.write(said)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def test_a_409_naming_the_id_in_its_second_segment_is_a_delivery(tmp_path: Path) -> None:
    """Only the first segment of a refusal's body was read (one `read` returns what has
    arrived): a 409 whose alert_id came in the next segment named no id, so the alert the
    backend has was held and resent forever (1 of 1). The body is now read to its end (its
    first 16 KiB)."""
    backend = SplitConflict()
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append([draft(i=0)])
        c = _cfg(url, max_backoff_s=0.05)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(up.status.delivered_total == 1 or backend.posts >= 3))
        stats = await outbox.stats()
    assert stats.delivered == 1 and stats.dead_lettered == 0, (stats, up.status.last_error)


async def test_an_empty_202_accepted_without_content_length_is_a_delivery(tmp_path: Path) -> None:
    """An HTTP/1.0 backend's `send_response(202)` typed JSON, no body, no Content-Length
    (its end is the close): "accepted", whole as it is, was taken for a JSON answer cut
    short and the batch resent forever (2 of 2 alerts never delivered)."""
    empty = b"HTTP/1.0 202 Accepted\r\nContent-Type: application/json\r\n\r\n"
    delivered, error = await _delivered_by(tmp_path, empty)
    assert delivered == 2, error


class LocksTheStore(Backend):
    """Answers 200; before its first answer, another process's write lock is taken on the
    outbox (a backup, an sqlite3 shell) and held until the test releases it."""

    def __init__(self, db: Path) -> None:
        super().__init__(_answer(200, body=b"{}"))
        self.db = db
        self.lock: sqlite3.Connection | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.lock is None:
            self.lock = sqlite3.connect(self.db, isolation_level=None)
            self.lock.execute("BEGIN IMMEDIATE")
        await super().handle(reader, writer)

    def release(self) -> None:
        assert self.lock is not None
        self.lock.rollback()
        self.lock.close()


async def test_a_store_hiccup_on_a_calm_plant_is_not_a_failure_for_good(tmp_path: Path) -> None:
    """The store busy once (another process's lock) while a summary was marked delivered:
    the alerts' failure streak (consecutive_failures, /healthz degraded, `status` failing)
    was reset by an alert delivered only, so on a plant with no alert for days it stayed
    set though the store worked again and every summary was delivered. A store's or the
    loop's failure is now ended by any delivery; an alert's own failure by an alert's."""
    backend = LocksTheStore(tmp_path / "outbox.db")
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        c = _cfg(url, max_backoff_s=0.2)
        await _append_a_summary(outbox)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(up.status.failures_total >= 1), timeout_s=15.0)
            assert "busy" in (up.status.last_error or ""), up.status
            backend.release()
            await until(lambda: _true(up.status.summaries_delivered_total == 1))
            assert up.status.consecutive_failures == 0, up.status


async def test_a_proxy_failing_at_random_dead_letters_no_good_alert(tmp_path: Path) -> None:
    """A proxy answering its 400 page to 30 % of the requests at random dead-lettered about
    1 good alert in 100 (4 to 14 of 1000 in the probe): an alert met the page on its try
    after its canary went through and again on its immediate resend. Here the first held
    alert is delivered on its resend (the page is the proxy's, not the alert's), then
    another meets the page twice in a row: it is held, not dead-lettered."""
    answers = [400, 400, 200, 400, 200, 400, 200, 400, 400, 200]
    await _every_alert_delivered_none_dead(tmp_path, Scripted(answers), 6)


class AnonymousConflict:
    """A backend with a unique alert_id answering a duplicate `409 {"error": "duplicate"}`
    (no id), and GET /alerts/{id} with the record it holds (404 if none); its first POST's
    answer is lost (it stores, then stays silent past the client's timeout). With `waf`,
    a gateway in front answers 409 "Conflict" to every POST, storing nothing."""

    def __init__(self, *, waf: bool = False, busy_gets: int = 0) -> None:
        self.waf = waf
        self.busy_gets = busy_gets  # GETs answered 503 first (a deploy, a busy replica)
        self.stored: dict[str, dict[str, Any]] = {}
        self.posts = 0
        self.gets = 0

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(10.0):
            head, body = await _read_whole(reader)
            method, path = head.split(b" ")[:2]
            if method == b"GET":
                self.gets += 1
                if self.busy_gets > 0:
                    self.busy_gets -= 1
                    writer.write(_answer(503, body=b'{"error": "busy"}'))
                    return
                record = self.stored.get(path.decode().rsplit("/", 1)[-1])
                said = json.dumps(record).encode() if record else b'{"error": "not found"}'
                writer.write(_answer(200 if record else 404, body=said))
                return
            if method != b"POST":
                writer.write(_answer(200))  # the probe's HEAD
                return
            self.posts += 1
            if self.waf:
                writer.write(_answer(409, body=b'{"message": "Conflict"}'))
                return
            alerts = json.loads(body)["alerts"]
            if any(a["alert_id"] in self.stored for a in alerts):
                writer.write(_answer(409, body=b'{"error": "duplicate"}'))
                return
            self.stored |= {a["alert_id"]: a for a in alerts}
            if self.posts == 1:
                await asyncio.sleep(1.5)  # the answer is lost
            writer.write(_answer(200, body=b"{}"))


def _checked_cfg(url: str, **kw: Any) -> HttpUplinkConfig:
    check = url.rsplit("/", 1)[0] + "/alerts/{id}"
    return _cfg(url, **kw).model_copy(update={"duplicate_check_url": check})


async def test_a_409_naming_no_id_for_an_alert_the_backend_has_is_confirmed_by_a_get(
    tmp_path: Path,
) -> None:
    """A backend answering a duplicate `409 {"error": "duplicate"}` (no id) after a lost
    answer: the alert it holds was dead-lettered once the alert behind it was delivered
    (1 of 1, an operator's alarm for an alert the backend has). With duplicate_check_url
    a GET confirms it: delivered, none dead-lettered; the 409 alone is never proof (a
    WAF's 409 to every POST, the GET answering 404, delivers nothing)."""
    backend = AnonymousConflict()
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append(_machines(1))
        c = _checked_cfg(url, timeout_s=1.0, max_backoff_s=0.2)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(backend.posts >= 1))
            await outbox.append([draft(i=5, asset="other")])
            await until(lambda: _pending_is(outbox, 0))
        stats = await outbox.stats()
    assert stats.dead_lettered == 0 and stats.delivered == 2, (stats, up.status.last_error)
    assert backend.gets >= 1 and len(backend.stored) == 2

    waf = AnonymousConflict(waf=True)
    async with await _outbox(tmp_path / "waf") as outbox, serving(waf) as url:
        await outbox.append(_machines(2))
        c = _checked_cfg(url, max_backoff_s=0.2)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(waf.gets >= 2))
        stats = await outbox.stats()
    assert stats.delivered == 0 and stats.pending == 2, stats
    assert "answered HTTP 404" in (up.status.last_error or ""), up.status.last_error


class CountsAlertPosts(Picky):
    """Picky, counting the POSTs that carry alerts."""

    def __init__(self, bad: set[str]) -> None:
        super().__init__(bad)
        self.alert_posts = 0

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await _read_whole(reader)
        ids = [a["alert_id"] for a in json.loads(body).get("alerts", [])]
        self.posts += 1
        self.alert_posts += bool(ids)
        if self.bad.intersection(ids):
            writer.write(_typed(400, b"text/html", NGINX_400))
        else:
            self.delivered += ids
            writer.write(_answer(200, body=b"{}"))
        await writer.drain()


async def test_summaries_delivered_while_an_alert_is_held_end_none_of_its_backoff(
    tmp_path: Path,
) -> None:
    """One alert its backend refuses for good on a quiet plant, a summary every 0.3 s:
    each summaries delivery ended the held alert's backoff (and the canary rule's hold),
    so the alert was POSTed again several times per summary (30 times in 6 s with
    max_backoff_s 5). Summaries prove nothing of the alerts' endpoint: the alert backs
    off (0.5, 1, 2, 4 s), the summaries still go, nothing is dead-lettered."""
    backend = CountsAlertPosts(bad=set())
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        records = await outbox.append([draft(i=0)])
        backend.bad = {records[0]["alert_id"]}
        c = _cfg(url, max_backoff_s=5.0)
        up = delivery(UP, HttpTransport(c, name=UP), outbox, c, rng=Longest())
        async with Running(up):
            for _ in range(20):
                await _append_a_summary(outbox)
                await asyncio.sleep(0.3)
        stats = await outbox.stats()
    assert backend.alert_posts <= 6, backend.alert_posts
    assert stats.pending == 1 and stats.dead_lettered == 0, stats
    assert up.status.summaries_delivered_total >= 5 and up.status.consecutive_failures >= 3


class Validating(Backend):
    """A backend refusing a batch holding a record in `bad` (or every batch while
    `deploying`) with its own 400 {"error": "invalid record"}; taking the rest."""

    def __init__(self) -> None:
        super().__init__(b"")
        self.bad: set[str] = set()
        self.deploying = False
        self.delivered: list[str] = []

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await _read_whole(reader)
        if not head.startswith(b"POST"):
            writer.write(_answer(200))
            return
        self.posts += 1
        ids = [a["alert_id"] for a in json.loads(body).get("alerts", [])]
        if self.deploying or self.bad.intersection(ids):
            writer.write(_answer(400, body=b'{"error": "invalid record"}'))
        else:
            self.delivered += ids
            writer.write(_answer(200, body=b"{}"))
        await writer.drain()


async def test_a_record_held_by_a_learned_refusal_lets_the_records_behind_it_go_in_batches(
    tmp_path: Path,
) -> None:
    """A backend refused everything with its own "invalid record" during a deploy, then
    took the records: that answer is the endpoint's for 10 minutes, so a truly invalid
    record meeting it is held, not dead-lettered. Meanwhile each record behind it went
    alone as a canary, the held one resent before each: 123 POSTs for 60 good records
    (and as many of the bad one). It is now set aside: the records behind it go in full
    batches, but its own episode's (its clear), which must not overtake it."""
    backend = Validating()
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        c = _cfg(url, max_backoff_s=0.1, batch_size=50)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)):
            backend.deploying = True
            await outbox.append(_machines(2))
            await until(lambda: _true(backend.posts >= 3))
            backend.deploying = False  # the deploy is over: both go through
            await until(lambda: _true(len(backend.delivered) == 2))
            bad = await outbox.append([draft(i=100, asset="bad")])
            backend.bad = {bad[0]["alert_id"]}
            clear = await outbox.append([replace(draft(i=101, asset="bad"), state="cleared")])
            good = await outbox.append([draft(i=200 + i, asset=f"good-{i}") for i in range(60)])
            posts = backend.posts
            await until(lambda: _true(len(backend.delivered) == 62))
            stats = await outbox.stats()
    assert backend.posts - posts <= 12, backend.posts - posts
    assert backend.delivered[2:] == [r["alert_id"] for r in good]
    assert stats.pending == 2 and stats.dead_lettered == 0, stats  # the bad one, its clear
    assert clear[0]["alert_id"] not in backend.delivered


class SaysNotFound(AnonymousConflict):
    """A gateway answering 409 "Conflict" to every POST (storing nothing), the backend's
    GET /alerts/{id} answering 200 with `said` (its text with {id} the id asked for):
    an error that names the id, or a lookup that echoes it, not the record."""

    def __init__(self, said: str) -> None:
        super().__init__(waf=True)
        self.said = said

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(10.0):
            head, _ = await _read_whole(reader)
            method, path = head.split(b" ")[:2]
            if method == b"GET":
                self.gets += 1
                asked = path.decode().rsplit("/", 1)[-1]
                writer.write(_answer(200, body=self.said.replace("{id}", asked).encode()))
                return
            self.posts += method == b"POST"
            writer.write(_answer(409 if method == b"POST" else 200, body=b'{"message": "x"}'))


async def test_a_200_that_names_the_id_without_the_record_confirms_no_duplicate(
    tmp_path: Path,
) -> None:
    """duplicate_check_url's GET answering 200 with an error naming the id ("alert X not
    found", as APIs that answer errors with 200 do) or a lookup echoing it ({"alert_id":
    X, "found": false}) was taken for "the backend has it": the alert a WAF answered 409
    was marked delivered though the backend never got it. Only the record itself (its
    alert_id and a field of what was sent) confirms it."""
    for n, said in enumerate(
        (
            '{"error": "alert {id} not found"}',
            '{"alert_id": "{id}", "found": false}',
            '{"query": {"alert_id": "{id}"}, "results": []}',
        )
    ):
        backend = SaysNotFound(said)
        async with await _outbox(tmp_path / str(n)) as outbox, serving(backend) as url:
            await outbox.append(_machines(2))
            c = _checked_cfg(url, max_backoff_s=0.2)
            async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
                await until(lambda b=backend: _true(b.gets >= 2))
            stats = await outbox.stats()
        assert stats.delivered == 0 and stats.pending == 2, (said, stats)
        assert "not naming it" in (up.status.last_error or ""), up.status.last_error


class SlowSummaries(Picky):
    """Picky for alerts; its summaries endpoint takes each batch after `summaries_s`."""

    def __init__(self, bad: set[str], summaries_s: float) -> None:
        super().__init__(bad)
        self.summaries_s = summaries_s
        self.summaries_left_at_alert: int | None = None  # pending when the alert went
        self.outbox: Outbox | None = None

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await _read_whole(reader)
        if not head.startswith(b"POST"):
            writer.write(_answer(200))
            return
        ids = [a["alert_id"] for a in json.loads(body).get("alerts", [])]
        self.posts += 1
        if not ids:
            await asyncio.sleep(self.summaries_s)
        elif self.bad.intersection(ids):
            writer.write(_typed(400, b"text/html", NGINX_400))
            return
        elif self.outbox is not None and self.summaries_left_at_alert is None:
            self.summaries_left_at_alert = (await self.outbox.stats()).summaries_pending
        self.delivered += ids
        writer.write(_answer(200, body=b"{}"))


async def test_a_held_alert_is_retried_after_its_backoff_not_after_the_summaries_backlog(
    tmp_path: Path,
) -> None:
    """An alert refused on a quiet plant with a backlog of summaries (after an outage of
    their endpoint): the summaries went meanwhile, but each delivery sent the next
    batch of them at once, so the alert was tried again only once the whole backlog was
    gone (200 summaries, 2 a POST at 0.1 s: 10 s, with max_backoff_s 0.3), though its
    endpoint took it again at once. Its backoff is spent sending summaries: it is tried
    again when that ends, the rest of the summaries after it."""
    backend = SlowSummaries(bad=set(), summaries_s=0.1)
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        backend.outbox = outbox
        records = await outbox.append([draft(i=0)])
        backend.bad = {records[0]["alert_id"]}
        for _ in range(200):
            await _append_a_summary(outbox)
        c = _cfg(url, max_backoff_s=0.3, batch_size=2)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)):
            await until(lambda: _true(backend.posts >= 3))  # refused, summaries going
            backend.bad = set()  # its endpoint takes it again
            await until(lambda: _pending_is(outbox, 0), timeout_s=20.0)
        stats = await outbox.stats()
    assert stats.pending == 0 and stats.dead_lettered == 0, stats
    left = backend.summaries_left_at_alert
    assert left is not None and left >= 100, left


async def test_a_page_typed_json_is_no_delivery_even_when_it_begins_with_text(
    tmp_path: Path,
) -> None:
    """A proxy's or portal's 200 typed application/json whose body is a page beginning
    with text ("Access denied. <a href=...>"): once a whole body that is not JSON counted
    as delivered, such a close-delimited page (resent before, as JSON cut short) marked
    the batch delivered (2 of 2 lost), as did one with a Content-Length. Markup in a body
    typed JSON that is not JSON is a page: nothing delivered. "OK" still delivers."""
    pages = (
        b'Access denied by policy. <a href="/login">Sign in</a>',
        b"Redirecting to the portal...\n<script>location='/login'</script>",
    )
    for i, page in enumerate(pages):
        for framed in (False, True):
            answer = _typed(200, b"application/json", page) if framed else CLOSE_DELIMITED + page
            delivered, error = await _delivered_by(tmp_path / f"{i}{framed}", answer)
            assert delivered == 0 and "a web page" in (error or ""), (page, framed, error)
    delivered, error = await _delivered_by(tmp_path / "ok", CLOSE_DELIMITED + b"OK <3")
    assert delivered == 2, error


class BusyThenTooLarge(Backend):
    """Answers the first alerts POST 503, every later one 413 (the alert is larger than
    the backend takes); takes every summaries POST."""

    def __init__(self) -> None:
        super().__init__(b"")
        self.alert_posts = 0

    @_connection
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await _read_whole(reader)
        if not head.startswith(b"POST /alerts "):
            writer.write(_answer(200, body=b"{}"))
            return
        self.alert_posts += 1
        writer.write(_answer(503 if self.alert_posts == 1 else 413, body=b'{"error": "x"}'))


async def test_an_alert_failure_ended_by_its_dead_letter_is_no_failure_for_good(
    tmp_path: Path,
) -> None:
    """An alert that failed to go (a 503), then was dead-lettered as too large (413): no
    alert left, the summaries delivered, yet the alerts' failure streak stayed set (only an
    alert delivered ended it): /healthz degraded and `status` failing on a calm plant for
    days, and the summaries' backoff kept growing from it. A dead letter settles the alert
    that failed: the next delivery ends the streak."""
    backend = BusyThenTooLarge()
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        c = _cfg(url, max_backoff_s=0.2)
        await outbox.append([draft(i=0)])
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(up.status.dead_lettered_total == 1))
            await _append_a_summary(outbox)
            await until(lambda: _true(up.status.summaries_delivered_total == 1))
            assert up.status.too_large_total == 1
            assert up.status.consecutive_failures == 0, up.status


async def test_a_duplicate_check_that_gets_no_verdict_dead_letters_nothing(
    tmp_path: Path,
) -> None:
    """duplicate_check_url's GET answering 503 (the backend's read side busy) after a 409
    naming no id: the 409 was taken as a refusal, so the alert the backend holds (its
    first answer lost) was dead-lettered once the alert behind it went through (1 of 1,
    an operator's alarm for an alert the backend has). No verdict from the GET is no
    refusal: retried until it answers, then delivered; none dead-lettered."""
    backend = AnonymousConflict(busy_gets=4)
    async with await _outbox(tmp_path) as outbox, serving(backend) as url:
        await outbox.append(_machines(1))
        c = _checked_cfg(url, timeout_s=1.0, max_backoff_s=0.2)
        async with Running(delivery(UP, HttpTransport(c, name=UP), outbox, c)) as up:
            await until(lambda: _true(backend.posts >= 1))
            await outbox.append([draft(i=5, asset="other")])
            await until(lambda: _pending_is(outbox, 0), timeout_s=15.0)
        stats = await outbox.stats()
    assert stats.dead_lettered == 0 and stats.delivered == 2, (stats, up.status.last_error)
    assert backend.busy_gets == 0 and len(backend.stored) == 2
