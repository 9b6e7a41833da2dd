"""Uplink address hygiene: no secrets in URLs, no clear text to another host.

A bearer token or an MQTT password travels with every request: over plain http:// (or
MQTT without TLS) to a host that is not this machine, anyone on the plant network can read
it, and the alerts with it. Credentials written into a URL (`https://user:pass@host`) end
up in logs, /healthz and `check` output; they are refused, never echoed. A key in the query
(an Azure function's `?code=`, `?api_key=`) is what some backends require: it is kept, and
shown as `?code=***` (/healthz can be read by every local user).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from agent.netaddr import is_loopback


def _masked_query(query: str) -> str:
    """Each query parameter's value replaced by *** (a bare parameter may be the key)."""
    if not query:
        return query
    return "&".join(f"{k}=***" if sep else "***" for k, sep, _ in
                    (p.partition("=") for p in query.split("&")))  # fmt: skip


def public_url(url: str) -> str:
    """The URL without user:password and query values (replaced by ***), safe for logs,
    /healthz and messages."""
    try:
        parts = urlsplit(url)
        if parts.query and parts.netloc:  # a URL's, not any text's with a '?'
            parts = parts._replace(query=_masked_query(parts.query))
            url = urlunsplit(parts)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:  # an invalid port: cut everything up to the last '@', and the query
        url = url.split("?", 1)[0] + ("?***" if "?" in url else "")
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
            f"url {public_url(url)!r}: plain http:// to {parts.hostname} sends the bearer "
            "token and the alerts in clear text; use https://, or set allow_insecure_http: "
            "true if this network is trusted"
        )
    return None
