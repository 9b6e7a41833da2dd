"""Errors of the uplink package: aiohttp/MQTT/OS errors are translated into these at the edge."""

from __future__ import annotations


class UplinkError(Exception):
    """Delivering a batch failed.

    Attributes:
        uplink: the uplink's name.
        status: the HTTP status or MQTT reason code, when the far end answered.
    """

    def __init__(self, message: str, *, uplink: str, status: int | None = None) -> None:
        super().__init__(message)
        self.uplink = uplink
        self.status = status


class UplinkUnavailable(UplinkError):
    """Worth retrying later: 5xx, 408, 429, 3xx, auth trouble, connection errors, timeouts.

    Attributes:
        retry_after_s: the server's Retry-After, in seconds, when it sent one.
        down: the far end did not answer usefully (no connection, a timeout, a 5xx without
            Retry-After): a cheap probe watches for its return. False when it answered and
            refused for a reason a probe cannot see change (credentials, a wrong URL).
        timed_out: no (whole) answer within the timeout: the batch may be too large for
            the link to carry in time, so the delivery loop halves it.
    """

    def __init__(
        self,
        message: str,
        *,
        uplink: str,
        status: int | None = None,
        retry_after_s: float | None = None,
        down: bool = False,
        timed_out: bool = False,
    ) -> None:
        super().__init__(message, uplink=uplink, status=status)
        self.retry_after_s = retry_after_s
        self.down = down
        self.timed_out = timed_out


class UplinkRejected(UplinkError):
    """The far end refused the items themselves: do not retry them as they are.

    Attributes:
        reason: what it said (kept with a dead letter).
        too_large: too large (halve a batch; a single item, or one named by a per-item
            refusal, is dead-lettered and counted as too large).
        per_item: the refusal names exactly the failed items (MQTT: one PUBACK per
            message); False for a whole-batch refusal that must be narrowed down first.
        alike: what an endpoint refusing everything would answer every item alike (an
            HTTP answer's status, content type and body, with ids and numbers masked):
            such a refusal is held back until an item behind it is delivered
            (agent.uplink._canary). None when the
            refusal is certainly the item's own (too large, an MQTT PUBACK, a CMMS 422
            naming its request): dead-lettered at once.
    """

    def __init__(
        self,
        message: str,
        *,
        uplink: str,
        status: int | None,
        reason: str,
        too_large: bool = False,
        per_item: bool = False,
        alike: str | None = None,
    ) -> None:
        super().__init__(message, uplink=uplink, status=status)
        self.reason = reason
        self.too_large = too_large
        self.per_item = per_item
        self.alike = alike
