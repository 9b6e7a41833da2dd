"""HTTP uplink: batches from the outbox, POSTed as JSON, marked delivered only after a 2xx.

Delivery is at-least-once: a batch whose answer is lost is sent again with the same bytes
(the JSON text frozen in the outbox) and the backend deduplicates on alert_id. During an
outage the backlog stays on disk; only the batch in flight is in memory.

Status policy:
- 2xx: delivered.
- 3xx: never followed (aiohttp would turn a 301/302 POST into a GET without a body and
  report its 2xx, or forward the alerts to another host on a 307/308): a failure naming
  the Location, retried like a 5xx and logged at ERROR; nothing is marked delivered.
- 5xx, 408, 429, connection errors, timeouts: back off (full jitter, at least Retry-After,
  at most max_backoff_s) and retry forever.
- 401, 403, 407: the credentials are wrong, not the alerts; dead-lettering would empty the
  whole backlog into the dead-letter table after a token rotation. Retried like a 5xx,
  with the token file re-read, and logged at ERROR.
- 404, 405: the URL or method is wrong (a misconfiguration, or a proxy during a backend
  deploy), not the alerts: retried like a 5xx, logged at ERROR.
- 413: the batch is too large; halve it (dead-letter only a single alert that is too big).
- any other 4xx: the backend refuses these alerts. A batch of more than one is resent one
  alert at a time first, so one bad record cannot take good ones with it into the
  dead-letter table; a single refused alert is dead-lettered with the status and the first
  200 characters of the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from agent.config import HttpUplink as HttpUplinkConfig
from agent.records import format_ts
from agent.store import Outbox, StoredAlert, StoreError
from agent.uplink._backoff import parse_retry_after, retry_delay
from agent.uplink.errors import UplinkError, UplinkRejected, UplinkUnavailable

log = logging.getLogger(__name__)

RETRYABLE_4XX = frozenset({404, 405, 408, 429})
AUTH_4XX = frozenset({401, 403, 407})
_REASON_CHARS = 200
_MAX_ERROR_BODY = 16 * 1024  # read no more than this of an error answer
NEW_ALERT_RETRY_AFTER_S = 1.0  # during a backoff, a new alert retries after at least this


@dataclass(slots=True)
class UplinkStatus:
    """What health and status report; updated in place by the uplink.

    Plain JSON values only, so `dataclasses.asdict(status)` goes straight into /healthz.

    Attributes:
        last_success_at: UTC time of the last 2xx, ISO-8601 with ms and Z.
        next_retry_in_s: while backing off, seconds to the next attempt (refreshed at
            least every second); None when not waiting.
    """

    delivered_total: int = 0
    attempts_total: int = 0
    failures_total: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_success_at: str | None = None
    next_retry_in_s: float | None = None
    dead_lettered_total: int = 0


class HttpUplink:
    """Forwards the outbox to an HTTP backend until cancelled.

    Args:
        cfg: the `uplinks[].http` configuration.
        outbox: the open outbox to drain.
        name: names the task and the log lines (e.g. "http").
        base_backoff_s: first backoff ceiling; doubles per consecutive failure.
        idle_recheck_s: with nothing pending, recheck this often even without a wake-up.
        rng: random source for the jitter (tests pass a seeded one).
    """

    def __init__(
        self,
        cfg: HttpUplinkConfig,
        outbox: Outbox,
        *,
        name: str = "http",
        base_backoff_s: float = 0.5,
        idle_recheck_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.name = name
        self.status = UplinkStatus()
        self._base = min(base_backoff_s, cfg.max_backoff_s)
        self._idle = idle_recheck_s
        self._rng = rng or random.Random()
        self._token: str | None = cfg.token
        self._limit = cfg.batch_size
        self._one_by_one = 0  # isolate a refused batch: send this many alerts singly
        self._in_error = False

    async def run(self) -> None:
        """Deliver forever; returns only by cancellation (which it never swallows)."""
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await self._load_token()
            while True:
                try:
                    await self.step(session)
                except Exception as exc:
                    # Not seen in tests; a bad header value or a library surprise must not
                    # stop delivery for good: count it as a failed attempt and back off.
                    log.exception("uplink[%s]: unexpected error", self.name)
                    await self._failed(f"unexpected: {exc!r}", None)

    async def step(self, session: aiohttp.ClientSession) -> None:
        """One unit of work: send a batch (and wait out a failure), or idle."""
        self.outbox.changed.clear()  # before reading, so an append after it wakes us
        limit = 1 if self._one_by_one else self._limit
        try:
            rows = await self.outbox.next_batch(limit)
        except StoreError as exc:
            await self._failed(f"outbox: {exc}", None)
            return
        if not rows:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.outbox.changed.wait(), self._idle)
            return
        self.status.attempts_total += 1
        try:
            await self._post(session, rows)
        except UplinkUnavailable as exc:
            if exc.status in AUTH_4XX:
                await self._load_token()
            await self._failed(str(exc), exc.retry_after_s)
            return
        except UplinkRejected as exc:
            await self._rejected(rows, exc)
            return
        try:
            await self.outbox.mark_delivered(r.seq for r in rows)
        except StoreError as exc:
            # Delivered but not recorded: they will be sent again, the backend dedupes.
            await self._failed(f"outbox: marking delivered: {exc}", None)
            return
        self._succeeded(len(rows))

    async def _post(self, session: aiohttp.ClientSession, rows: list[StoredAlert]) -> None:
        # The stored text is sent byte for byte: every retry carries the same record.
        body = ('{"alerts":[' + ",".join(r.json for r in rows) + "]}").encode()
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            async with session.post(
                self.cfg.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                if 200 <= resp.status < 300:
                    return
                if 300 <= resp.status < 400:
                    raise UplinkUnavailable(
                        f"HTTP {resp.status} redirect to {resp.headers.get('Location')!r} not "
                        "followed (a redirect turns the POST into a GET or sends the alerts "
                        "elsewhere); set the uplink url to the final address",
                        uplink=self.name,
                        status=resp.status,
                    )
                raw = await resp.content.read(_MAX_ERROR_BODY)
                text = raw.decode("utf-8", "replace")[:_REASON_CHARS]
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UplinkUnavailable(
                f"POST {self.cfg.url}: {type(exc).__name__}: {exc}", uplink=self.name
            ) from exc
        reason = f"HTTP {status}: {text}"
        if status >= 500 or status in RETRYABLE_4XX or status in AUTH_4XX:
            raise UplinkUnavailable(
                reason, uplink=self.name, status=status, retry_after_s=retry_after
            )
        raise UplinkRejected(reason, uplink=self.name, status=status, reason=reason)

    async def _rejected(self, rows: list[StoredAlert], exc: UplinkRejected) -> None:
        if exc.status == 413 and len(rows) > 1:
            self._limit = max(1, len(rows) // 2)
            log.warning(
                "uplink[%s]: batch of %d too large (413), now %d", self.name, len(rows), self._limit
            )
            return
        if len(rows) > 1:
            # Find the culprits: resend these alerts one by one (same order, still pending).
            self._one_by_one = len(rows)
            log.warning(
                "uplink[%s]: batch of %d refused (%s); resending one by one",
                self.name,
                len(rows),
                exc.reason,
            )
            return
        if self._one_by_one:
            self._one_by_one -= 1
        try:
            moved = await self.outbox.dead_letter([r.seq for r in rows], exc.reason)
        except StoreError as store_exc:
            await self._failed(f"outbox: dead-lettering: {store_exc}", None)
            return
        self.status.dead_lettered_total += len(moved)
        self.status.last_error = exc.reason

    def _succeeded(self, n: int) -> None:
        st = self.status
        st.delivered_total += n
        st.last_success_at = format_ts(datetime.now(UTC))
        if self._one_by_one:
            self._one_by_one -= 1
        if self._limit < self.cfg.batch_size:
            self._limit = min(self.cfg.batch_size, self._limit * 2)
        if self._in_error:
            log.warning(
                "uplink[%s] recovered after %d failure(s): delivered %d alert(s)",
                self.name,
                st.consecutive_failures,
                n,
            )
            self._in_error = False
        st.consecutive_failures = 0

    async def _failed(self, error: str, retry_after_s: float | None) -> None:
        st = self.status
        st.failures_total += 1
        st.consecutive_failures += 1
        st.last_error = error
        delay = retry_delay(
            st.consecutive_failures,
            retry_after_s,
            base_s=self._base,
            cap_s=self.cfg.max_backoff_s,
            rng=self._rng,
        )
        if not self._in_error:
            log.error(
                "uplink[%s] failing: %s; alerts stay in the outbox, retrying", self.name, error
            )
            self._in_error = True
        else:
            log.debug(
                "uplink[%s] still failing (%d): %s; next try in %.2fs",
                self.name,
                st.consecutive_failures,
                error,
                delay,
            )
        start = time.monotonic()
        due = start + delay
        try:
            while (left := due - time.monotonic()) > 0:
                st.next_retry_in_s = round(left, 3)
                # A new alert is worth a try before the backoff ends (alerts are rare, so
                # this cannot hammer the backend); an explicit Retry-After is honoured fully.
                if (
                    retry_after_s is None
                    and self.outbox.changed.is_set()
                    and time.monotonic() - start >= NEW_ALERT_RETRY_AFTER_S
                ):
                    break
                await asyncio.sleep(min(left, NEW_ALERT_RETRY_AFTER_S))
        finally:
            st.next_retry_in_s = None

    async def _load_token(self) -> None:
        if self.cfg.token_file is None:
            return
        try:
            text = await asyncio.to_thread(self.cfg.token_file.read_text, encoding="utf-8")
            token = text.strip()
            if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in token):
                raise ValueError("it contains a line break or control character")
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            err = UplinkError(
                f"cannot use token_file {self.cfg.token_file}: {exc}", uplink=self.name
            )
            log.error("uplink[%s]: %s", self.name, err)
            self.status.last_error = str(err)
            return
        self._token = token or None
