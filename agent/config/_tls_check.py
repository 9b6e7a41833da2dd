"""`check` of the uplinks' and the MQTT input brokers' TLS files: each must exist, be
readable and hold what it is named for (a PEM CA certificate; an unencrypted PEM key; a
client certificate that its key matches), so a mistake is reported at its line before the
agent runs, not as a failing uplink or a silent sensor in production.

Files are loaded exactly as the runtime loads them (drivers.tls.tls_context).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.config._data import entries
from agent.config._errors import ConfigIssue, KeyPath
from agent.config._secrets import secret_path
from agent.config._source import SourceMap
from drivers.tls import tls_file_problem

# (section under an uplink, where its TLS files are inside it)
UPLINK_TLS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("http", ()),
    ("cmms", ()),
    ("mqtt", ("tls",)),
)


def tls_file_issues(data: dict[str, Any], smap: SourceMap, base: Path) -> list[ConfigIssue]:
    """An issue per unusable ca_file, cert_file or key_file of an uplink or of an input
    broker (``mqtt[].tls``).

    Args:
        data: the parsed file.
        smap: positions, for the issues.
        base: directory that relative paths are relative to (the config's).
    """
    issues = []
    for i, uplink in entries(data, "uplinks"):
        for section, inside in UPLINK_TLS:
            block: Any = uplink.get(section)
            for key in inside:
                block = block.get(key) if isinstance(block, dict) else None
            if isinstance(block, dict):
                issues += _block(block, ("uplinks", i, section, *inside), smap, base)
    for i, broker in entries(data, "mqtt"):
        tls = broker.get("tls")
        if isinstance(tls, dict):
            issues += _block(tls, ("mqtt", i, "tls"), smap, base)
    return issues


def _block(block: dict[str, Any], where: KeyPath, smap: SourceMap, base: Path) -> list[ConfigIssue]:
    files = {
        key: secret_path(base, value)
        for key in ("ca_file", "key_file", "cert_file")  # the key before its certificate
        if isinstance(value := block.get(key), str) and value
    }
    issues = []
    key_ok = False
    for key, path in files.items():
        pair = files.get("key_file") if key == "cert_file" and key_ok else None
        try:
            problem = tls_file_problem(key, path, pair=pair)
        except ValueError:  # a NUL byte in the name
            problem = f"{key} {str(path)!r} is not a valid path; fix the path"
        if problem is not None:
            issues.append(smap.issue((*where, key), problem))
        elif key == "key_file":
            key_ok = True
    return issues
