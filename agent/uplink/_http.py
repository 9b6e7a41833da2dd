"""HTTP transport: a batch POSTed as JSON; delivered only after a 2xx.

Alerts go to `url` as {"alerts": [...]}, feature summaries to the summaries URL as
{"summaries": [...]}; the stored text is sent byte for byte, so every retry carries the
same record.

Status policy:
- 2xx: delivered.
- 3xx: never followed (aiohttp would turn a 301/302 POST into a GET without a body and
  report its 2xx, or forward the alerts to another host on a 307/308): a failure naming
  the Location, retried with backoff and logged at ERROR; nothing is marked delivered.
- 5xx, 408, 429, connection errors, timeouts: retried; the backend is "down" (probed with a
  HEAD) unless it sent a Retry-After, which is honoured.
- 401, 403, 407: the credentials are wrong, not the alerts; dead-lettering would empty the
  whole backlog into the dead-letter table after a token rotation. Retried, with the token
  file re-read, and logged at ERROR.
- 404, 405: the URL or method is wrong (a misconfiguration, or a proxy during a backend
  deploy), not the alerts: retried, logged at ERROR.
- 413: the batch is too large; halved (a single alert that is too large is dead-lettered).
- any other 4xx: the backend refuses these alerts (see agent.uplink._delivery).
Error messages name the URL without credentials.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Self

import aiohttp

from agent.config import HttpUplink as HttpUplinkConfig
from agent.config import public_url, readable_by_others
from agent.store import StoredItem
from agent.uplink._backoff import parse_retry_after
from agent.uplink._transport import SendResult
from agent.uplink.errors import UplinkError, UplinkRejected, UplinkUnavailable

log = logging.getLogger(__name__)

RETRYABLE_4XX = frozenset({404, 405, 408, 429})
AUTH_4XX = frozenset({401, 403, 407})
_REASON_CHARS = 200
_MAX_ERROR_BODY = 16 * 1024  # read no more than this of an error answer
PROBE_TIMEOUT_S = 2.0


class HttpTransport:
    """POSTs batches to an HTTP backend.

    Args:
        cfg: the `uplinks[].http` configuration (token_file already absolute).
        name: the uplink's name, for errors and logs.
    """

    kind = "http"

    def __init__(self, cfg: HttpUplinkConfig, *, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self.target = public_url(cfg.url)
        self._token: str | None = cfg.token
        self._session: aiohttp.ClientSession | None = None
        self._mode_warned = False

    async def __aenter__(self) -> Self:
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        connector = aiohttp.TCPConnector(limit=1)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        await self._load_token()
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

    async def send(self, items: list[StoredItem]) -> SendResult:
        """POST the batch; all delivered, or all failed with the reason."""
        if items[0].class_name == "alert":
            url, key = self.cfg.url, "alerts"
        else:
            url, key = self.cfg.summaries_endpoint(), "summaries"
        body = ('{"' + key + '":[' + ",".join(it.json for it in items) + "]}").encode()
        try:
            await self._post(url, body)
        except UplinkError as exc:
            if exc.status in AUTH_4XX:
                await self._load_token()  # a rotated token is picked up
            return SendResult([], exc, items)
        return SendResult(items)

    async def _post(self, url: str, body: bytes) -> None:
        assert self._session is not None
        shown = public_url(url)
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                if 200 <= status < 300:
                    return
                if 300 <= status < 400:
                    location = public_url(resp.headers.get("Location", ""))
                    raise UplinkUnavailable(
                        f"POST {shown}: HTTP {status} redirect to {location!r} not followed "
                        "(a redirect turns the POST into a GET or sends the alerts "
                        "elsewhere); set the uplink url to the final address",
                        uplink=self.name,
                        status=status,
                    )
                raw = await resp.content.read(_MAX_ERROR_BODY)
                text = raw.decode("utf-8", "replace")[:_REASON_CHARS]
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UplinkUnavailable(
                f"POST {shown}: {type(exc).__name__}: {exc}".replace(url, shown),
                uplink=self.name,
                down=True,
            ) from exc
        reason = f"HTTP {status}: {text}"
        if status >= 500 or status in RETRYABLE_4XX or status in AUTH_4XX:
            raise UplinkUnavailable(
                f"POST {shown}: {reason}",
                uplink=self.name,
                status=status,
                retry_after_s=retry_after,
                down=(status >= 500 or status == 408) and retry_after is None,
            )
        raise UplinkRejected(
            f"POST {shown}: {reason}",
            uplink=self.name,
            status=status,
            reason=reason,
            too_large=status == 413,
        )

    async def probe(self) -> bool:
        """A HEAD on the URL: any answer below 500 means the backend is back."""
        if self._session is None:
            return False
        try:
            async with self._session.head(
                self.cfg.url,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=min(self.cfg.timeout_s, PROBE_TIMEOUT_S)),
            ) as resp:
                return resp.status < 500
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

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
