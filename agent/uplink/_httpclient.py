"""One HTTP endpoint with a bearer token, as the http and cmms transports use it.

POSTs never follow a redirect (aiohttp would turn a 301/302 POST into a GET without a body
and report its 2xx, or send the request to another host on a 307/308): a 3xx is a failure
naming the Location. The token comes from the configuration or its token_file, which is
re-read after a 401/403/407 (a rotated token is picked up). A HEAD on the URL is the cheap
probe while the far end is down. Error messages name the URL without credentials.

TLS: the uplink's ca_file (a private or plant CA, instead of the system's CAs) and client
certificate are loaded once, off the event loop, when the client is entered; a file that
cannot be loaded sends nothing (never a fallback to the system's CAs) and each attempt
tries it again. A certificate that fails verification is a failure that says so (retried
with backoff, never "delivered", nothing dead-lettered); the files are re-read after it,
so a CA file replaced in place is picked up.

Kept-alive connections: one that died while idle (the server's keep-alive timeout, a NAT or
firewall that forgot it, a backend or proxy that closes after each answer without saying
`Connection: close`) shows only when the next POST on it fails before any answer began: a
reset, a close, or a write into a transport already closing ("Can not write request body",
no errno). Such a POST is sent once more at once on a new connection instead of failing
(the same body, so the same alert ids or Idempotency-Key: a backend drops a duplicate, as
after any retry). A fresh connection's failure, a timeout, or a failure once any answer
began (a head cut short, a 2xx body cut short) is never resent here: a real failure.

How an answer is read (bounded, a 2xx to its end) and when a 2xx is no acknowledgement (cut
short, a web page): agent.uplink._answer.

Status policy of a non-2xx answer (`HttpClient.failure`):
- 1xx (a 101 nobody asked for), 5xx, 408, 429 and the caller's other retryable statuses:
  retried; the far end is "down"
  (probed) unless it sent a Retry-After, which is honoured;
- 401, 403, 407: the credentials are wrong, not the items: retried (token file re-read);
- 404, 405: the URL or method is wrong (a misconfiguration, a proxy during a deploy), not
  the items: retried;
- 413: too large (a batch is halved, a single item dead-lettered);
- any other 4xx: the far end refuses these items (UplinkRejected).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from types import SimpleNamespace, TracebackType
from typing import Self

import aiohttp
import yarl

from agent.config import (
    CmmsUplink,
    HttpUplink,
    client_cert_hint,
    load_tls,
    public_url,
    readable_by_others,
)
from agent.uplink._answer import (
    Answer,
    not_json,
    read_refusal,
    refusal_signature,
    web_page,
    whole_answer,
)
from agent.uplink._backoff import parse_retry_after
from agent.uplink.errors import UplinkError, UplinkRejected, UplinkUnavailable

log = logging.getLogger(__name__)

RETRYABLE_4XX = frozenset({404, 405, 408, 429})
AUTH_4XX = frozenset({401, 403, 407})
REASON_CHARS = 200
PROBE_TIMEOUT_S = 2.0
# A server that wants a client certificate drops a connection that brought none at once;
# any other server waits (seconds) for the request. See _drops_certless.
CERT_PROBE_WAIT_S = 0.5
DROPS_CERTLESS_HINT = (
    "; the server closes TLS connections that bring no client certificate: it probably "
    "requires one (mutual TLS): set cert_file and key_file"
)


class HttpClient:
    """An aiohttp session to one endpoint; enter it before use.

    Args:
        cfg: an `http` or `cmms` uplink's configuration (token_file already absolute).
        name: the uplink's name, for errors and logs.
    """

    def __init__(self, cfg: HttpUplink | CmmsUplink, *, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self.target = public_url(cfg.url)
        self._token: str | None = cfg.token
        self._session: aiohttp.ClientSession | None = None
        self._mode_warned = False
        self._not_json_warned = False  # a 2xx typed JSON that is not: said once
        # None until the uplink's own TLS files are loaded; unused without them.
        self._tls_files = cfg.ca_file is not None or cfg.cert_file is not None
        self._ssl: ssl.SSLContext | None = None
        self._tls_problem = ""
        self.stale_retries = 0  # POSTs resent once after a dropped idle kept-alive connection

    async def __aenter__(self) -> Self:
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        connector = aiohttp.TCPConnector(limit=1)
        trace = aiohttp.TraceConfig()
        trace.on_connection_reuseconn.append(_mark_reused)
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=connector, trace_configs=[trace]
        )
        try:
            await self._load_token()
            await self._load_tls()
        except BaseException:
            await self.__aexit__(None, None, None)  # no __aexit__ follows a failed __aenter__
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        method: str = "POST",
    ) -> Answer:
        """POST (or `method`: a CMMS's PATCH) a JSON body; the answer, whatever its status
        but a redirect.

        Raises:
            UplinkUnavailable: no answer (connection refused, reset, timeout: `down`; a
                timeout is `timed_out` too), or a 3xx, which is never followed.
        """
        assert self._session is not None
        shown = f"{method} {public_url(url)}"
        sent = {"Content-Type": "application/json", **(headers or {})}
        if self._token:
            sent["Authorization"] = f"Bearer {self._token}"
        if self._tls_files and self._ssl is None and not await self._load_tls():
            raise UplinkUnavailable(
                f"{shown}: cannot load this uplink's TLS files: {self._tls_problem}; "
                "nothing sent (tried again at each attempt)",
                uplink=self.name,
            )
        try:
            seen: dict[str, bool] = {}
            try:
                return await self._exchange(method, url, shown, body, sent, seen)
            except aiohttp.ClientConnectionError as exc:
                if not _stale_keepalive(exc, seen):
                    raise
                # The far end (or a NAT, a firewall) dropped the idle kept-alive connection
                # and our request failed on it before any answer: once more on a new one.
                # Same body, same alert ids (or Idempotency-Key): at worst a duplicate the
                # backend drops, as after any retry.
                self.stale_retries += 1
                log.debug("uplink[%s]: %s on a reused idle connection; resent once", self.name, exc)
                return await self._exchange(method, url, shown, body, sent, {})
        except aiohttp.ClientConnectorCertificateError as exc:
            raise await self._untrusted(shown, exc) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            text = f"{type(exc).__name__}: {exc}".replace(url, public_url(url))
            raise UplinkUnavailable(
                f"{shown}: {text}{await self._cert_hint(url, exc, text)}",
                uplink=self.name,
                down=True,
                timed_out=isinstance(exc, TimeoutError),
            ) from exc

    async def _exchange(
        self,
        method: str,
        url: str,
        shown: str,
        body: bytes,
        sent: Mapping[str, str],
        seen: dict[str, bool],
    ) -> Answer:
        """One request (`shown`: its method and URL without secrets) and its answer;
        ``seen`` learns whether the request went on a reused connection (``reused``) and
        whether an answer began (``answered``)."""
        assert self._session is not None
        async with self._session.request(
            method,
            url,
            data=body,
            headers=sent,
            allow_redirects=False,
            ssl=self._ssl or True,
            trace_request_ctx=seen,
        ) as resp:
            seen["answered"] = True
            status = resp.status
            if 300 <= status < 400:
                location = public_url(resp.headers.get("Location", ""))
                raise UplinkUnavailable(
                    f"{shown}: HTTP {status} redirect to {location!r} not followed "
                    "(a redirect turns the POST into a GET or sends the alerts "
                    "elsewhere); set the uplink url to the final address",
                    uplink=self.name,
                    status=status,
                )
            if 200 <= status < 300:
                # The whole acknowledgement, read to its end (its first MAX_ANSWER_BYTES
                # kept): a backend that died mid-answer may not have stored the batch.
                raw = await whole_answer(resp, shown, uplink=self.name)
            else:
                raw = await read_refusal(resp.content)
            if 200 <= status < 300 and web_page(resp.content_type, raw):
                # Not the backend's acknowledgement: a firewall's block page (F5 ASM
                # answers 200 by default), a proxy's or hotspot's login page or a web UI
                # behind a wrong URL. Taking it as delivered would lose the alerts.
                raise UplinkUnavailable(
                    f"{shown}: HTTP {status} with a web page ({resp.content_type}) "
                    "instead of the backend's answer (a firewall or proxy page, or a URL "
                    "that is not the API); nothing marked delivered",
                    uplink=self.name,
                    status=status,
                )
            kind = resp.content_type if "Content-Type" in resp.headers else ""
            if 200 <= status < 300 and not self._not_json_warned and not_json(kind, raw):
                # Whole (its framing or the close said so) yet not JSON: the status is the
                # acknowledgement; resending met the same answer forever.
                self._not_json_warned = True
                log.warning(
                    "uplink[%s]: %s: HTTP %d typed %s but its body is not JSON (%r); "
                    "taken as delivered (said once)",
                    self.name, shown, status, kind, raw[:REASON_CHARS],
                )  # fmt: skip
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            replayed = resp.headers.get("Idempotent-Replayed", "").lower() == "true"
        return Answer(status, raw.decode("utf-8", "replace"), retry_after, replayed, kind)

    async def _cert_hint(self, url: str, exc: BaseException, text: str) -> str:
        """The hint for a server that wants a client certificate this uplink has none of
        ("" otherwise): without it, mutual TLS looks like any connection failure. The
        server's alert says so when it sends one; a reset says nothing (a server that
        aborts the handshake, as Python's asyncio does), so a bare TLS connection asks."""
        if self.cfg.cert_file is not None or yarl.URL(url).scheme != "https":
            return ""
        if hint := client_cert_hint(text, has_cert=False):
            return hint
        if _reset(exc) and await _drops_certless(url, self._ssl):
            return DROPS_CERTLESS_HINT
        return ""

    async def failure(
        self,
        url: str,
        answer: Answer,
        *,
        retryable: frozenset[int] = RETRYABLE_4XX,
        method: str = "POST",
    ) -> UplinkError:
        """The error a non-2xx answer means (see the module docstring); after a 401, 403 or
        407 the token file is read again."""
        status = answer.status
        reason = f"HTTP {status}: {answer.text[:REASON_CHARS]}"
        message = f"{method} {public_url(url)}: {reason}"
        if status in AUTH_4XX:
            await self._load_token()
        # Below 400 (a 101 nobody asked for) is no refusal of the items either.
        if status >= 500 or status < 400 or status in retryable or status in AUTH_4XX:
            return UplinkUnavailable(
                message,
                uplink=self.name,
                status=status,
                retry_after_s=answer.retry_after_s,
                down=(status >= 500 or status == 408 or status < 400)
                and answer.retry_after_s is None,
            )
        return UplinkRejected(
            message, uplink=self.name, status=status, reason=reason, too_large=status == 413,
            alike=refusal_signature(answer),
        )  # fmt: skip

    async def probe(self) -> bool:
        """A HEAD on the URL: any answer below 500 means the far end is back."""
        if self._session is None or (self._tls_files and self._ssl is None):
            return False
        try:
            async with self._session.head(
                self.cfg.url,
                allow_redirects=False,
                ssl=self._ssl or True,
                timeout=aiohttp.ClientTimeout(total=min(self.cfg.timeout_s, PROBE_TIMEOUT_S)),
            ) as resp:
                return resp.status < 500
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _load_tls(self) -> bool:
        """(Re)load the uplink's TLS files in a thread; False (and why) when they fail."""
        if not self._tls_files:
            return True
        cfg = self.cfg
        loaded = await asyncio.to_thread(load_tls, cfg.ca_file, cfg.cert_file, cfg.key_file)
        if isinstance(loaded, str):
            self._ssl, self._tls_problem = None, loaded
            return False
        self._ssl = loaded
        return True

    async def _untrusted(
        self, shown: str, exc: aiohttp.ClientConnectorCertificateError
    ) -> UplinkUnavailable:
        """The far end's certificate failed verification: a trust problem a probe cannot see
        change (so not "down"); the CA file is re-read for the next attempt."""
        if self.cfg.ca_file is not None:
            trusted = f"the CA certificate(s) in ca_file {self.cfg.ca_file}"
            fix = "make ca_file hold the CA that signed it (re-read after each such failure)"
        else:
            trusted = "the system's CA certificates"
            fix = "for a private or plant CA, set ca_file to that CA's certificate (PEM)"
        await self._load_tls()
        return UplinkUnavailable(
            f"{shown}: TLS: the server's certificate is not trusted "
            f"({exc.certificate_error}); this uplink trusts {trusted}: {fix}",
            uplink=self.name,
        )

    async def _load_token(self) -> None:
        path = self.cfg.token_file
        if path is None:
            return

        def read() -> tuple[str, str | None]:
            return path.read_text(encoding="utf-8"), readable_by_others(path)

        try:
            text, warning = await asyncio.to_thread(read)
            token = text.strip()
            if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in token):
                raise ValueError("it contains a line break or control character")
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            log.error("uplink[%s]: cannot use token_file %s: %s", self.name, path, exc)
            return
        if warning and not self._mode_warned:
            self._mode_warned = True
            log.warning("uplink[%s]: token_file %s", self.name, warning)
        self._token = token or None


def _reset(exc: BaseException) -> bool:
    """A connection reset anywhere in the exception's chain."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; bounded all the same
        if seen is None:
            return False
        if isinstance(seen, ConnectionResetError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _drops_certless(url: str, ctx: ssl.SSLContext | None) -> bool:
    """Whether the server at ``url`` drops a TLS connection that brought no client
    certificate before anything was sent on it: a reset during the handshake (TLS 1.2),
    or the connection closed right after it (TLS 1.3 checks the certificate after the
    client's last handshake message). A server that waits for the request does not."""
    target = yarl.URL(url)
    if ctx is None:  # the system's CAs, as aiohttp uses them: loaded off the event loop
        ctx = await asyncio.to_thread(ssl.create_default_context)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(target.host, target.port, ssl=ctx)
    except ConnectionResetError:
        return True
    except (OSError, TimeoutError):  # ssl.SSLError is an OSError: another failure
        return False
    try:
        async with asyncio.timeout(CERT_PROBE_WAIT_S):
            return await reader.read(1) == b""
    except TimeoutError:
        return False  # it waits for a request: the reset had another cause
    except OSError:
        return True  # reset (or alerted) without a word from us
    finally:
        writer.close()


async def _mark_reused(
    _session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: object
) -> None:
    """aiohttp took a kept-alive connection from its pool for this request."""
    if isinstance(ctx.trace_request_ctx, dict):
        ctx.trace_request_ctx["reused"] = True


def _stale_keepalive(exc: BaseException, seen: dict[str, bool]) -> bool:
    """A request on a reused kept-alive connection that failed as a connection before any
    answer began: the connection had died while idle (a server's keep-alive timeout, a NAT
    or firewall that forgot it, a server that closed after its last answer), not the
    request's fault. Whatever the errno (a reset, a broken pipe, or none: the write into
    a transport aiohttp saw closing), but never a timeout (a live connection, a slow far
    end: resending would double the wait) nor a close after part of an answer's head."""
    if not seen.get("reused") or seen.get("answered"):
        return False
    if isinstance(exc, TimeoutError) or not isinstance(exc, aiohttp.ClientConnectionError):
        return False
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        # Its message is the partial answer aiohttp parsed when some of one had come.
        return isinstance(exc.message, str)
    return isinstance(exc, aiohttp.ClientOSError)
