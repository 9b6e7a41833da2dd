"""Address literals: is this text an IP address, and does it stay on this machine."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_of(text: str) -> IPAddress | None:
    """The IP address `text` spells, or None for a host name."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Whether a host (address or the name localhost) keeps traffic on this machine."""
    ip = ip_of(host)
    return ip.is_loopback if ip is not None else host.strip().lower() == "localhost"
