"""Uplinks: forward the outbox to the portfolio backend (HTTP)."""

from agent.uplink._backoff import full_jitter, parse_retry_after, retry_delay
from agent.uplink._http import HttpUplink, UplinkStatus
from agent.uplink.errors import UplinkError, UplinkRejected, UplinkUnavailable

__all__ = [
    "HttpUplink",
    "UplinkError",
    "UplinkRejected",
    "UplinkStatus",
    "UplinkUnavailable",
    "full_jitter",
    "parse_retry_after",
    "retry_delay",
]
