"""Reliability classes: the assets of one `reliability.class` share one fleet history.

Every completed life recorded on one asset of a class feeds the prior of every other, so
assets of one class that configure different priors (lives, catalogue Weibull, L10, shape)
contradict each other: a 1,000 h bearing's replacements would pull down a 30,000 h one's
estimate. An asset of the class that configures no prior (only its age) is fine: it takes
the class's fleet lives.
"""

from __future__ import annotations

from typing import Any

from agent.config._data import entries, line_at
from agent.config._errors import ConfigIssue
from agent.config._source import SourceMap

__all__ = ["reliability_classes"]

_PRIOR_KEYS = ("lives_hours", "weibull", "l10_hours", "shape")
# agent.analysis.reliability.DEFAULT_SHAPE (not imported: checking needs no numpy): a
# `shape: 1.5` written out is the same prior as none.
_DEFAULT_SHAPE = 1.5


def _words(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_words(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_words(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _prior(rel: dict[str, Any]) -> str:
    """The prior an asset configures, in words ('' for none)."""
    given = {k: rel[k] for k in _PRIOR_KEYS if rel.get(k) is not None}
    if given.get("shape") == _DEFAULT_SHAPE and "weibull" not in given:
        del given["shape"]
    return ", ".join(f"{k}: {_words(v)}" for k, v in given.items())


def reliability_classes(data: dict[str, Any], smap: SourceMap) -> list[ConfigIssue]:
    """One issue per asset whose prior differs from the first one configured in its class."""
    issues = []
    first: dict[str, tuple[int, str, str]] = {}  # class -> (index, asset id, prior words)
    for i, asset in entries(data, "assets"):
        rel = asset.get("reliability")
        cls = rel.get("class") if isinstance(rel, dict) else None
        if not isinstance(cls, str) or not isinstance(rel, dict):
            continue
        words = _prior(rel)
        if not words:
            continue
        if cls not in first:
            first[cls] = (i, str(asset.get("id")), words)
            continue
        j, other, theirs = first[cls]
        if words != theirs:
            line = line_at(smap, ("assets", j, "reliability"))
            issues.append(
                smap.issue(
                    ("assets", i, "reliability", "class"),
                    f"{other} (line {line}) is of class {cls} too, with another life prior "
                    f"({theirs} there, {words} here); the lives recorded on one asset of a "
                    "class feed every asset of it: give them the same prior, or this asset "
                    "a class of its own",
                )
            )
    return issues
