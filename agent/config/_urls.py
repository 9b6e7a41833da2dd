"""Uplink address hygiene: no secrets in URLs, no clear text to another host.

A bearer token or an MQTT password travels with every request: over plain http:// (or
MQTT without TLS) to a host that is not this machine, anyone on the plant network can read
it, and the alerts with it. Credentials written into a URL (`https://user:pass@host`) end
up in logs, /healthz and `check` output; they are refused, never echoed.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from agent.netaddr import is_loopback


def public_url(url: str) -> str:
    """The URL without user:password (replaced by ***), safe for logs and messages."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:  # an invalid port: cut everything up to the last '@'
        return url[: url.find("//") + 2] + "***@" + url.rsplit("@", 1)[-1] if "@" in url else url
    return urlunsplit(parts._replace(netloc=f"***@{netloc}"))


def url_problem(url: str, *, allow_insecure_http: bool) -> str | None:
    """What is wrong with an uplink URL, in words that never repeat a secret; or None."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        return f"url {public_url(url)!r} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"url {public_url(url)!r} must be http:// or https:// followed by a host"
    if parts.username is not None or parts.password is not None:
        return (
            f"url {public_url(url)!r} holds a user name or password, which would end up in "
            "logs and /healthz; remove it and give the secret as token or token_file"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not allow_insecure_http:
        return (
            f"url {url!r}: plain http:// to {parts.hostname} sends the bearer token and the "
            "alerts in clear text; use https://, or set allow_insecure_http: true if this "
            "network is trusted"
        )
    return None
