"""Cross-checks of `cmms` uplinks that one model cannot see: the mapping's asset ids."""

from __future__ import annotations

from typing import Any

from agent.config._errors import ConfigIssue
from agent.config._messages import unknown_id
from agent.config._source import SourceMap


def cmms_asset_refs(data: dict[str, Any], smap: SourceMap) -> list[ConfigIssue]:
    """Every key of `uplinks[].cmms.mapping.assets` must be a configured asset id (a typo
    would send that asset's work orders under our id, which the CMMS may not know)."""
    assets = data.get("assets")
    known = [
        a["id"] for a in (assets if isinstance(assets, list) else [])
        if isinstance(a, dict) and isinstance(a.get("id"), str)
    ]  # fmt: skip
    uplinks = data.get("uplinks")
    issues = []
    for i, uplink in enumerate(uplinks if isinstance(uplinks, list) and known else []):
        cmms = uplink.get("cmms") if isinstance(uplink, dict) else None
        mapping = cmms.get("mapping") if isinstance(cmms, dict) else None
        names = mapping.get("assets") if isinstance(mapping, dict) else None
        for ours in names if isinstance(names, dict) else {}:
            if isinstance(ours, str) and ours not in known:
                issues.append(
                    smap.issue(
                        ("uplinks", i, "cmms", "mapping", "assets", ours),
                        unknown_id("asset", ours, known),
                        at="key",
                    )
                )
    return issues
