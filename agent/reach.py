"""Operator commands reaching the running agent over HTTP, with errors a person can act on.

"cannot resolve HOST", "nothing listens at URL", "no answer from URL within 3 s": never a
bare "refused or timed out", never a traceback, and never through a proxy from the
environment (the agent is on this machine).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from agent.config import Config, public_url

MAX_BODY_BYTES = 4 * 2**20
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Unreachable(Exception):
    """No usable answer; the message says why, naming the URL without credentials."""


def health_url(config: Config, path: str = "/healthz") -> str:
    """The agent's health endpoint as this configuration places it.

    Raises:
        Unreachable: the port is random (0), so no client can find it.
    """
    hc = config.health
    if hc.port == 0:
        raise Unreachable(
            "health.port is 0 (a random port): no command can find the agent; set a fixed port"
        )
    host = "127.0.0.1" if hc.host in ("", "0.0.0.0") else "::1" if hc.host == "::" else hc.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{hc.port}{path}"


def get_json(url: str, *, timeout_s: float = 3.0) -> tuple[int, Any]:
    """GET a JSON document: (HTTP status, body). A 503 with a JSON body is an answer.

    Raises:
        Unreachable: no JSON answer (the message names the cause).
    """
    shown = public_url(url)
    try:
        with _NO_PROXY.open(url, timeout=timeout_s) as resp:
            status, raw = resp.status, resp.read(MAX_BODY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read(MAX_BODY_BYTES + 1)
    except urllib.error.URLError as exc:
        raise Unreachable(_why(exc.reason, url, timeout_s)) from None
    except (OSError, ValueError) as exc:
        raise Unreachable(_why(exc, url, timeout_s)) from None
    try:
        if len(raw) > MAX_BODY_BYTES:
            raise ValueError("too large")
        return status, json.loads(raw)
    except (ValueError, RecursionError):
        raise Unreachable(f"{shown} answered HTTP {status} without a JSON document") from None


def _why(reason: object, url: str, timeout_s: float) -> str:
    shown = public_url(url)
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve {urlsplit(url).hostname}"
    if isinstance(reason, ConnectionRefusedError):
        return f"nothing listens at {shown} (connection refused)"
    if isinstance(reason, TimeoutError):
        return f"no answer from {shown} within {timeout_s:.0f} s"
    if isinstance(reason, OSError):
        return f"cannot reach {shown}: {reason.strerror or reason}"
    return f"cannot reach {shown}: {reason}"


def _proc_ip(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp* spells it: 32-bit words in the host's (little-endian)
    byte order."""
    raw = bytes.fromhex(hex_addr)
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(swapped)


def listener_uid(host: str, port: int) -> int | None:
    """The uid that owns the TCP socket listening on host:port, as the kernel says (Linux);
    None when unknown (another system, a host name, no such listener).

    Anyone can listen on a free port, and copy the agent's identity from its /healthz: the
    owner of the listening socket is what such an impostor cannot fake.
    """
    try:
        target = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    exact: int | None = None
    wildcard: int | None = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 8 or cols[3] != _LISTEN:
                continue
            addr, _, hex_port = cols[1].partition(":")
            if int(hex_port, 16) != port:
                continue
            ip = _proc_ip(addr)
            if ip == target or getattr(ip, "ipv4_mapped", None) == target:
                exact = int(cols[7])
            elif ip.is_unspecified:
                wildcard = int(cols[7])
    return exact if exact is not None else wildcard
