"""What an HTTP endpoint answered: read (bounded) and judged.

A 2xx answer is the backend's acknowledgement only when it came whole: it is read to its
end (its first MAX_ANSWER_BYTES kept), and one cut short (the connection closed before its
Content-Length or last chunk, or, with neither, JSON that ends half way) is a failure: the
backend may have died before storing the batch; a whole body that is simply not JSON is
complete. A 2xx web page (a firewall's block page, a
proxy's login page) is no acknowledgement either (`web_page`). A refusal's body is read up
to MAX_ANSWER_BYTES, whatever segments it came in (its reason, a 409's id), and refusals
alike (an error page whatever the items) are told by `refusal_signature`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import aiohttp

from agent.uplink.errors import UplinkUnavailable

SIGNATURE_CHARS = 512  # of an answer's body, compared to tell refusals alike
# A token holding a digit: a number, a timestamp's parts, a hex or base64 request id, a UUID.
_WITH_DIGIT = re.compile(r"[\w+/=.-]*\d[\w+/=.-]*")
MAX_ANSWER_BYTES = 16 * 1024  # keep no more than this of an answer
TAIL_BYTES = 64  # of a longer 2xx answer, kept to see that its JSON ends


@dataclass(frozen=True, slots=True)
class Answer:
    """What the far end answered (below 300, or 400 and above).

    Attributes:
        status: the HTTP status.
        text: the first MAX_ANSWER_BYTES of the body, decoded (bad bytes replaced).
        retry_after_s: its Retry-After in seconds, when it sent one.
        replayed: it says this answers a request it had already handled (the
            `Idempotent-Replayed: true` header of Stripe-style idempotency).
        content_type: its media type ("" without one).
    """

    status: int
    text: str
    retry_after_s: float | None = None
    replayed: bool = False
    content_type: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


async def whole_answer(resp: aiohttp.ClientResponse, shown: str, *, uplink: str) -> bytes:
    """A 2xx answer's body (its first MAX_ANSWER_BYTES), read to its end; raises
    UplinkUnavailable when it was cut short: the connection closed before its
    Content-Length or last chunk, or, with neither (the close ends the body, so only
    the body can tell), JSON that stops half way (`json_cut_short`; empty included,
    but for a 202: "accepted", no body needed)."""
    try:
        raw, total, tail = await read_answer(resp.content)
    except aiohttp.ClientPayloadError as exc:
        why = f"{type(exc).__name__}: {exc}"
    else:
        framed = (
            "Content-Length" in resp.headers
            or "chunked" in resp.headers.get("Transfer-Encoding", "").lower()
        )
        if (
            framed
            or resp.status == 204
            # 202 Accepted says "queued", nothing more: an empty one is whole (an
            # HTTP/1.0 backend's `send_response(202)` typed JSON, no Content-Length)
            or (resp.status == 202 and total == 0)
            or not json_cut_short(
                resp.content_type if "Content-Type" in resp.headers else "", raw, total, tail
            )
        ):
            return raw
        why = (
            f"the connection closed after {total} byte(s) of JSON that ends half way "
            "(no Content-Length, no chunks: only the close marked its end)"
        )
    raise UplinkUnavailable(
        f"{shown}: HTTP {resp.status} answer cut short ({why}): the backend may "
        "have died before storing the batch; nothing marked delivered, resent (it "
        "dedupes on the ids)",
        uplink=uplink,
        status=resp.status,
        down=True,
    )


def refusal_signature(answer: Answer) -> str:
    """What refusals of different items by one endpoint that refuses everything share: the
    status, content type and (the start of) the body with every token holding a digit
    masked. A proxy's or CDN's error page carries a request id, a Ray ID or the time
    (Cloudflare, CloudFront, AWS ALB, a WAF's incident number), so the raw text differs
    on each refusal although the page is the same."""
    body = " ".join(answer.text.split())[:SIGNATURE_CHARS]
    return f"{answer.status} {answer.content_type} {_WITH_DIGIT.sub('#', body)}"


_PAGE_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_MARKUP = re.compile(rb"<(?:[A-Za-z][A-Za-z0-9]*[\s/>]|!--|!doctype|/[A-Za-z])", re.IGNORECASE)
_LEADING = b"\xef\xbb\xbf \t\r\n"  # a UTF-8 BOM and whitespace before the first tag


def web_page(content_type: str, body: bytes) -> bool:
    """A 2xx body that is a web page, not an API's acknowledgement: it begins with markup
    (whatever its Content-Type: a portal may send none, or XHTML), or it is HTML with
    markup in it, or typed JSON that is not JSON with a tag in it. "HTML" without any,
    or JSON (Express's `res.send("OK")`, PHP's `echo`, both text/html by default), is the
    backend's answer. So is XML sent as XML (a SOAP or
    XML API's `<ack/>`, a CMMS answering XML), unless it holds an <html> element."""
    if _xml_type(content_type):
        return b"<html" in body.lower()
    if body.lstrip(_LEADING).startswith(b"<"):
        return True
    if typed_json(content_type):
        # Typed JSON, not JSON, with markup in it: a proxy's or portal's page ("Access
        # denied. <a href=...>"), not the bare "OK" of a backend (a delivery).
        if not _MARKUP.search(body):
            return False
    elif content_type not in _PAGE_TYPES or b"<" not in body:
        return False
    try:
        json.loads(body)
    except ValueError:  # UnicodeDecodeError is a ValueError
        return True
    return False


def _xml_type(content_type: str) -> bool:
    """An XML media type other than XHTML: application/xml, text/xml, application/*+xml."""
    if content_type in _PAGE_TYPES:
        return False
    return content_type in ("application/xml", "text/xml") or content_type.endswith("+xml")


async def read_answer(content: aiohttp.StreamReader) -> tuple[bytes, int, bytes]:
    """The body's first MAX_ANSWER_BYTES, its size and its last TAIL_BYTES, read to its
    end (the rest discarded; time is bounded by the session's timeout). Raises
    ClientPayloadError when the connection closes before the end its framing announced."""
    parts: list[bytes] = []
    size = 0
    tail = b""
    while chunk := await content.read(MAX_ANSWER_BYTES):
        if size < MAX_ANSWER_BYTES:
            parts.append(chunk[: MAX_ANSWER_BYTES - size])
        size += len(chunk)
        tail = (tail + chunk)[-TAIL_BYTES:]
    return b"".join(parts), size, tail


async def read_refusal(content: aiohttp.StreamReader) -> bytes:
    """A non-2xx answer's first MAX_ANSWER_BYTES (or all of it, if shorter). One `read`
    returns only what has arrived: a 409 whose id came in a later segment or chunk named
    no id, so the backend's "I have it" was taken for a refusal. Cut short, what came."""
    parts: list[bytes] = []
    size = 0
    try:
        while size < MAX_ANSWER_BYTES and (chunk := await content.read(MAX_ANSWER_BYTES - size)):
            parts.append(chunk)
            size += len(chunk)
    except aiohttp.ClientPayloadError:
        pass  # the reason is what came; the status decides
    return b"".join(parts)


def json_cut_short(content_type: str, head: bytes, size: int, tail: bytes) -> bool:
    """Whether a close-delimited body that is (or says it is) JSON is incomplete: empty,
    or the start of a JSON value that a close cut short (a bracket or string still open,
    or a prefix of a literal or number); past MAX_ANSWER_BYTES, one that does not end as
    it began ("}" or "]"). A whole body that is simply not JSON ("OK" typed JSON, a
    Python dict's repr) is complete: resending it met the same answer forever."""
    start = head.lstrip(_LEADING)[:1]
    typed = typed_json(content_type)
    if not typed and start not in (b"{", b"["):
        return False  # "OK", an empty untyped body: nothing to check it against
    if size > len(head):
        end = tail.rstrip(_LEADING)[-1:]
        return not start or end != {b"{": b"}", b"[": b"]"}.get(start)
    try:
        json.loads(head)
    except ValueError:  # UnicodeDecodeError is a ValueError
        return _unfinished(head.strip(_LEADING))
    return False


def typed_json(content_type: str) -> bool:
    """application/json or a +json type."""
    return content_type == "application/json" or content_type.endswith("+json")


def not_json(content_type: str, body: bytes) -> bool:
    """A 2xx answer typed JSON whose (whole, non-empty) body does not parse: a delivery
    all the same (the status says so), worth a warning about the backend."""
    if not typed_json(content_type) or not body.strip(_LEADING) or len(body) >= MAX_ANSWER_BYTES:
        return False
    try:
        json.loads(body)
    except ValueError:
        return True
    return False


_LITERALS = (b"true", b"false", b"null")
_NUMBER_START = re.compile(rb"-?(\d+(\.\d*)?([eE][+-]?\d*)?)?")


def _unfinished(body: bytes) -> bool:
    """Whether a body that does not parse could be JSON cut short: empty, a bracket or a
    string still open at its end, or a prefix of a literal or a number."""
    if not body:
        return True
    if body[:1] in b'{["':
        return _open(body)
    return any(lit.startswith(body) for lit in _LITERALS) or bool(_NUMBER_START.fullmatch(body))


def _open(body: bytes) -> bool:
    """Whether JSON text ends inside a string or with a bracket not closed."""
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # "
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"{[":
            depth += 1
        elif byte in b"}]":
            depth -= 1
    return in_string or depth > 0
