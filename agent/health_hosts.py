"""Which Host headers name the health endpoint: anything else is DNS rebinding (a web page
in the machine's browser talking to a loopback port) or a mistake."""

from __future__ import annotations

import socket

from agent.netaddr import ip_of, is_loopback

__all__ = ["WILDCARDS", "HostCheck", "machine_names"]

WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def _split_host(header: str) -> tuple[str, int | None]:
    """("name", port) from a Host header value; port None when absent or malformed."""
    name, port = header.strip().lower(), None
    if name.startswith("["):  # [v6]:port
        end = name.find("]")
        tail, name = name[end + 1 :], name[1:end]
        if tail.startswith(":") and tail[1:].isdigit():
            port = int(tail[1:])
    elif name.count(":") == 1:
        name, _, digits = name.partition(":")
        port = int(digits) if digits.isdigit() else -1
    return name, port


class HostCheck:
    """Which Host headers name this server (anything else is DNS rebinding or a mistake).

    Args:
        host: the listen address.
        names: this machine's names, accepted when listening beyond loopback.
    """

    def __init__(self, host: str, names: frozenset[str]) -> None:
        self._host = host.strip().lower()
        self._names = names
        self.port: int | None = None

    def accepts(self, header: str | None) -> bool:
        if not header:
            return False
        name, port = _split_host(header)
        if port is not None and port != self.port:
            return False
        if self._host in WILDCARDS:
            return ip_of(name) is not None or name in self._names
        if name == self._host or name in self._names:
            return True
        return is_loopback(self._host) and is_loopback(name)


def machine_names() -> frozenset[str]:
    # getfqdn() may ask DNS: called once, in a thread, at start.
    return frozenset(n.lower() for n in (socket.gethostname(), socket.getfqdn()) if n)
