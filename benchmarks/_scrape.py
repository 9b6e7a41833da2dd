"""The agent's /metrics, as the benchmarks read it: one GET, samples summed over labels."""

from __future__ import annotations

import re
import urllib.request

_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def metrics(port: int, timeout_s: float = 5.0) -> dict[str, float]:
    """GET /metrics on 127.0.0.1:port, summed over labels: sample name -> value ({} when
    the agent does not answer: a loaded agent may miss a scrape)."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m and not line.startswith("#"):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out
