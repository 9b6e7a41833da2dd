"""Host fields (a sensor's, a gateway's, a broker's): an IP address or a host name alone.

What an integrator pastes instead (a URL, "host:port", a bracketed IPv6 address, a stray
space, a mistyped address) passed every check and failed only at run time, as a sensor
that "cannot resolve" forever (a sensor_fault alert for a typo). Each is refused at its
line, saying what to write.
"""

from __future__ import annotations

import re
import socket
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, WithJsonSchema

from agent.netaddr import ip_of

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_IPV4_LIKE = re.compile(r"^[0-9.]+$")
_HOST_PORT = re.compile(r"^([^:\[\]]+):(\d+)$")
_MAX_NAME = 253


def host_problem(text: str) -> str | None:
    """What is wrong with a host field's value, or None for an IP address or host name."""
    if not text.strip():
        return "expected an IP address or host name"
    if text != text.strip():
        return f"remove the spaces around it: {text.strip()}"
    if "://" in text:
        return _without_scheme(text)
    if text.startswith("[") and text.endswith("]"):
        return f"write an IPv6 address without brackets: {text[1:-1]}"
    if m := _HOST_PORT.match(text):
        return f"give the port under port, not in the host: host: {m[1]}, port: {m[2]}"
    ip = ip_of(text)
    if ip is not None:
        if ip.version == 6 and ip.is_link_local and not ip.scope_id:
            return f"a link-local IPv6 address needs its interface: {text}%eth0 (the gateway's)"
        return None
    if _IPV4_LIKE.match(text):
        return (
            _zero_padded(text) or "not a valid IPv4 address: four numbers 0-255 separated by dots"
        )
    if ":" in text:
        return "not a valid IPv6 address"
    name = _ascii_name(text)
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    if len(name) > _MAX_NAME or not all(_LABEL.match(label) for label in labels):
        return (
            "expected an IP address or a host name (letters, digits, '-' and '.'), "
            "without scheme, port or path"
        )
    return None


def _zero_padded(text: str) -> str | None:
    """What to write for an IPv4 address with leading zeros (192.168.001.010), or None.
    The system reads such a number as octal (010 is 8): it reached another device."""
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        return None
    meant = ".".join(str(int(p)) for p in parts)
    try:
        read = socket.inet_ntoa(socket.inet_aton(text))
    except OSError:  # 08 or 09: not octal, looked up as a name
        read = "not an address at all"
    return (
        f"write the numbers without leading zeros: {meant} (the system reads a number with "
        f"a leading zero as octal: {text} is {read})"
    )


def _ascii_name(text: str) -> str:
    """A host name as it is resolved: Python sends a Unicode name (pumpe-müller.example)
    through IDNA (xn--...) in getaddrinfo, so such a name reaches its device; "" when it
    has no IDNA form (then it is refused with the others)."""
    if text.isascii():
        return text
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def _without_scheme(url: str) -> str:
    """What to write instead of a URL: its host, and its port under port."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "the host"
    if port is not None:
        return f"give the host alone, without a scheme, port or path: host: {host}, port: {port}"
    return f"give the host alone, without a scheme or path: {host}"


def _valid_host(text: str) -> str:
    problem = host_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text


_HOST_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "description": "an IP address or host name, without scheme, port or path",
}

Host = Annotated[str, AfterValidator(_valid_host), WithJsonSchema(_HOST_SCHEMA)]


def _valid_listen_host(text: str) -> str:
    # "" listens on every interface, IPv4 and IPv6 (asyncio's spelling, kept by the
    # health endpoint, status and check since before host spellings were checked): a
    # configuration using it must not stop starting after an upgrade.
    return text if text == "" else _valid_host(text)


_LISTEN_SCHEMA = {
    "type": "string",
    "description": (
        "an IP address or host name to listen on, without scheme or port; "
        "0.0.0.0, :: or an empty string for every interface"
    ),
}

ListenHost = Annotated[str, AfterValidator(_valid_listen_host), WithJsonSchema(_LISTEN_SCHEMA)]
