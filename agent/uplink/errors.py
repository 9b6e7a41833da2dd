"""Errors of the uplink package: aiohttp/OS errors are translated into these at the edge."""

from __future__ import annotations


class UplinkError(Exception):
    """Delivering a batch failed.

    Attributes:
        uplink: the uplink's name (e.g. "http").
        status: the HTTP status, when there was a response.
    """

    def __init__(self, message: str, *, uplink: str, status: int | None = None) -> None:
        super().__init__(message)
        self.uplink = uplink
        self.status = status


class UplinkUnavailable(UplinkError):
    """Worth retrying later: 5xx, 408, 429, auth trouble, connection errors, timeouts.

    Attributes:
        retry_after_s: the server's Retry-After, in seconds, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        uplink: str,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, uplink=uplink, status=status)
        self.retry_after_s = retry_after_s


class UplinkRejected(UplinkError):
    """The backend refused the batch itself (a 4xx other than 408/429): do not retry it."""

    def __init__(self, message: str, *, uplink: str, status: int, reason: str) -> None:
        super().__init__(message, uplink=uplink, status=status)
        self.reason = reason
