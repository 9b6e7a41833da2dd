"""How to reach one broker, and what a persistent session was last subscribed to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from drivers.mqtt._broker_drops import DEFAULT_TOPIC as SYS_DROPPED_TOPIC


class SessionLog(Protocol):
    """Which topic filters a persistent session was last given, by session (broker
    entry and client id), kept across restarts by whoever runs the links."""

    def subscribed(self, session: str) -> frozenset[str]:
        """The filters recorded for the session (empty: none known)."""
        ...

    def record(self, session: str, filters: frozenset[str]) -> None:
        """The filters the session now holds (its run subscribed them)."""
        ...


class TlsFilesError(ValueError):
    """The broker's TLS files cannot be loaded: no connection is tried without them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    """How to reach one broker (the drivers' view of a ``mqtt:`` entry; paths absolute)."""

    id: str
    host: str
    port: int
    client_id: str
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    persistent: bool = False
    session_expiry_s: int = 86_400
    keepalive_s: int = 30
    protocol: str = "5"
    max_payload_bytes: int = 256 * 2**10
    queue_size: int = 10_000
    queue_max_bytes: int = 32 * 2**20
    reconnect_max_s: float = 2.0
    connect_timeout_s: float = 10.0
    # The broker's $SYS counter of messages it dropped (None: not asked for).
    sys_dropped_topic: str | None = SYS_DROPPED_TOPIC

    @property
    def address(self) -> str:
        return f"mqtt{'s' if self.tls else ''}://{self.host}:{self.port}"
