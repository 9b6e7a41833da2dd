"""Each asset's age and life prior: its configuration, its class's fleet history, replacements.

Age: from `reliability.installed_at`, or `reliability.age_hours` (the age when the agent
first sees the asset, anchored then and persisted, so restarts do not rewind it), or the last
`maintenance --replaced` (a new part: age 0 then). The most recent of these anchors wins, so a
replacement recorded after the configured installation date counts, and editing the
configuration afterwards counts again. Ages advance with the readings' clock (the recording's
own clock in replay). An installed_at after the reading's time gives no age (the record says
to correct it or the clock); the agent's own anchors found after now were taken with a clock
that was ahead and count from now. A replacement within DUPLICATE_S of the previous one is
that one recorded twice: its "life" of a few seconds is not added to the fleet history;
recorded again as the other kind (`--replaced healthy` corrected by `--replaced failed`),
it corrects the life the first one stored (the store replaces that row).

Prior: agent.analysis.reliability from the asset's `reliability` block plus the completed
lives of its class (`reliability.class`, by default the asset's own id) recorded in the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from agent.analysis.channel import state_key
from agent.analysis.reliability import FleetLife, LifePrior, life_prior
from agent.config import Asset
from agent.records import format_ts

__all__ = ["AssetLives", "Life", "life_key"]

LIFE_KIND = "life"
_HOUR_S = 3600.0
_NO_PRIOR = (
    "no reliability prior is configured (reliability: lives_hours, weibull or l10_hours; "
    "or fleet lives of its class)"
)
_NO_AGE_TO_END = (
    "the asset's age was unknown (set reliability.installed_at or age_hours); "
    "its age counts from this replacement"
)
# Two replacements of one asset closer than this are one replacement recorded twice.
DUPLICATE_S = 60.0
_NO_AGE = (
    "the asset's age is unknown (set reliability.installed_at or age_hours, or record a "
    "replacement with maintenance --replaced)"
)


def _future_install(installed: datetime, now_s: float) -> str:
    now = format_ts(datetime.fromtimestamp(now_s, tz=UTC))
    return (
        f"the asset's age is unknown: reliability.installed_at ({format_ts(installed)}) is "
        f"after the reading's time ({now}); correct it, or the gateway's clock"
    )


def life_key(asset_id: str) -> str:
    """The store key of an asset's age anchors."""
    return state_key(asset_id, "*", "*", LIFE_KIND)


@dataclass(frozen=True, slots=True)
class Life:
    """An asset's prior and age now, or why there is none."""

    prior: LifePrior | None
    age_hours: float | None
    reason: str | None  # why prior or age is missing
    age_from: str = ""  # how the age is known, for the record


class AssetLives:
    """Ages, priors and replacements of every configured asset.

    Args:
        assets: the configured assets.
        saved: persisted state by key (this reads the life keys, it does not pop them).
        fleet: completed lives by class, as the store returned them.
    """

    def __init__(
        self,
        assets: Iterable[Asset],
        saved: Mapping[str, str],
        fleet: Mapping[str, Sequence[FleetLife]] | None = None,
    ) -> None:
        self._fleet = {k: list(v) for k, v in (fleet or {}).items()}
        self._anchors: dict[str, dict[str, float | None]] = {}
        self._changed: set[str] = set()
        self._not_recorded: dict[str, str] = {}  # why replaced() kept no life, by asset
        self._corrected: dict[str, str] = {}  # what replaced() corrected, by asset
        self.reconfigure(assets, saved)

    def reconfigure(self, assets: Iterable[Asset], saved: Mapping[str, str]) -> None:
        """Take the assets of a (re)loaded configuration: their priors are worked out again;
        the age anchors of assets already known are kept, a new asset's come from saved."""
        self._assets = {a.id: a for a in assets}
        self._priors: dict[str, LifePrior | None] = {}
        for asset_id in self._assets:
            if asset_id in self._anchors:
                continue
            try:
                data = json.loads(saved.get(life_key(asset_id), "{}"))
            except ValueError:
                data = {}
            self._anchors[asset_id] = data if isinstance(data, dict) else {}

    def class_of(self, asset: Asset) -> str:
        """The fleet-history class of an asset (its own id without reliability.class)."""
        rel = asset.reliability
        return rel.class_ if rel is not None and rel.class_ else asset.id

    def fleet(self, cls: str) -> list[FleetLife]:
        """The completed lives of a class known to this agent."""
        return list(self._fleet.get(cls, []))

    def prior(self, asset: Asset) -> LifePrior | None:
        """The asset's life prior (cached until its class's fleet history changes)."""
        if asset.id not in self._priors:
            rel = asset.reliability
            fleet = self._fleet.get(self.class_of(asset), [])
            weibull = rel.weibull if rel else None
            self._priors[asset.id] = life_prior(
                lives_hours=(rel.lives_hours or ()) if rel else (),
                weibull=(weibull.shape, weibull.scale_hours) if weibull else None,
                l10_hours=rel.l10_hours if rel else None,
                shape=rel.shape if rel else None,
                fleet=fleet,
            )
        return self._priors[asset.id]

    def _age(self, asset: Asset, now_s: float) -> tuple[float | None, str, str]:
        """(age in hours or None, the anchor it comes from, why there is none)."""
        rel = asset.reliability
        anchor = self._anchors[asset.id]
        self._clock_went_back(asset.id, now_s)
        # (anchor time, rank on a tie: a replacement is the newest news, age then, how)
        candidates: list[tuple[float, int, float, str]] = []
        replaced = anchor.get("replaced_at_s")
        if replaced is not None:
            candidates.append((float(replaced), 1, 0.0, "replaced"))
        if rel is not None and rel.age_hours is not None:
            if anchor.get("age_hours") != rel.age_hours or anchor.get("anchor_s") is None:
                anchor["age_hours"], anchor["anchor_s"] = rel.age_hours, now_s  # first seen
                self._changed.add(asset.id)
            at = anchor["anchor_s"]
            assert at is not None
            candidates.append((float(at), 0, rel.age_hours, "age_hours"))
        installed = rel.installed_at_utc if rel is not None else None
        if installed is not None:
            # After now (mistyped, or the clock far behind) it says nothing about the age
            # yet; as an age of 0 it would also outrank every later replacement.
            if installed.timestamp() <= now_s:
                candidates.append((installed.timestamp(), 0, 0.0, "installed_at"))
            elif not candidates:
                return None, "", _future_install(installed, now_s)
        if not candidates:
            return None, "", _NO_AGE
        at, _, age, how = max(candidates)
        return age + (now_s - at) / _HOUR_S, how, ""

    def _clock_went_back(self, asset_id: str, now_s: float) -> None:
        """The agent's own anchors after now were taken with a clock that was ahead (a
        gateway that booted with a wrong time, then synced): they count from now."""
        anchor = self._anchors[asset_id]
        for key in ("replaced_at_s", "anchor_s"):
            at = anchor.get(key)
            if at is not None and float(at) > now_s:
                anchor[key] = now_s
                self._changed.add(asset_id)

    def life(self, asset: Asset, now_s: float) -> Life:
        """The asset's prior and age at now_s (reading time, s)."""
        prior = self.prior(asset)
        age, how, why = self._age(asset, now_s)
        if prior is None:
            return Life(None, age, _NO_PRIOR)
        if age is None:
            return Life(prior, None, why)
        return Life(prior, age, None, how)

    def replaced(
        self, asset: Asset, at_s: float, *, failed: bool, ended_at: str
    ) -> FleetLife | None:
        """A part replaced at at_s: its completed life joins the class's fleet history.

        Returns:
            The completed life (None when the asset's age was unknown), already added to
            this agent's history; the asset's age restarts from 0 at at_s.
        """
        age, how, why = self._age(asset, at_s)
        done = None
        if age is not None and how == "replaced" and age * _HOUR_S < DUPLICATE_S:
            # The same replacement recorded twice (a retried command): one life, not a
            # second "failed" life of a few seconds that would drag the class's prior down.
            # Recorded as the other kind, it is a correction of the first: its life changes.
            corrected = self._correct(asset, failed=failed)
            if corrected is not None:
                return corrected
            self._not_recorded[asset.id] = (
                f"{asset.id} was replaced {age * _HOUR_S:.0f} s before; a life this short is "
                "taken as the same replacement recorded twice"
            )
            return None
        if age is None:
            self._not_recorded[asset.id] = _NO_AGE_TO_END if why == _NO_AGE else why
        else:
            done = FleetLife(round(age, 6), failed, asset.id, ended_at)
            cls = self.class_of(asset)
            self._fleet.setdefault(cls, []).append(done)
            self._forget_priors(cls)
        self._anchors[asset.id]["replaced_at_s"] = at_s
        self._changed.add(asset.id)
        return done

    def _correct(self, asset: Asset, *, failed: bool) -> FleetLife | None:
        """The life the asset's last replacement stored, as `failed` now says (None: it
        stored none, or already says so). It keeps its hours and end: the part's life
        ended at the first record; the new part's age still counts from there."""
        at_s = self._anchors[asset.id].get("replaced_at_s")
        if at_s is None:
            return None
        ended_at = format_ts(datetime.fromtimestamp(float(at_s), tz=UTC))
        lives = self._fleet.get(self.class_of(asset), [])
        for i in range(len(lives) - 1, -1, -1):
            life = lives[i]
            if life.asset == asset.id and life.ended_at == ended_at:
                if life.failed == failed:
                    return None
                lives[i] = replace(life, failed=failed)
                self._corrected[asset.id] = "failed" if life.failed else "healthy"
                self._forget_priors(self.class_of(asset))
                return lives[i]
        return None

    def _forget_priors(self, cls: str) -> None:
        for a in self._assets.values():
            if self.class_of(a) == cls:
                self._priors.pop(a.id, None)

    def record_replacement(
        self, asset: Asset, at: datetime, how: str
    ) -> tuple[dict[str, object], list[tuple[str, FleetLife]], dict[str, str]]:
        """A replacement reported by maintenance: (the record's evidence about it, the
        completed lives to store with it by class, the state to persist).

        Raises:
            ValueError: how is neither "failed" nor "healthy".
        """
        if how not in ("failed", "healthy"):
            raise ValueError(f"replaced must be 'failed' or 'healthy', got {how!r}")
        done = self.replaced(asset, at.timestamp(), failed=how == "failed", ended_at=format_ts(at))
        cls = self.class_of(asset)
        info: dict[str, object] = {"replaced": how, "class": cls, "completed_life_hours": None}
        lives = []
        if done is None:
            info["life_not_recorded"] = self._not_recorded.pop(asset.id, _NO_AGE_TO_END)
        else:
            lives.append((cls, done))
            info["completed_life_hours"] = round(done.hours, 4)
            was = self._corrected.pop(asset.id, None)
            if was is not None:  # the store replaces the row the first record added
                info["corrects"] = (
                    f"the replacement recorded at {done.ended_at} as {was}: its life is "
                    f"now counted as {how}"
                )
        info["fleet_lives"] = len(self.fleet(cls))
        return {"replacement": info}, lives, self.take_changes()

    def take_changes(self) -> dict[str, str]:
        """Anchors changed since the last call, as store state to persist."""
        if not self._changed:  # the usual case, once per reading: no work
            return {}
        out = {life_key(a): json.dumps(self._anchors[a], sort_keys=True) for a in self._changed}
        self._changed.clear()
        return out
