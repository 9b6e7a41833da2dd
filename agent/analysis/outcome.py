"""What the Monitor is tuned with (Tuning) and what each of its calls returns (Update)."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.analysis.degradation import DegradationPrior
from agent.analysis.health_index import HealthIndexTuning
from agent.analysis.reliability import FleetLife
from agent.analysis.ttf import PosteriorTuning
from agent.records import AlertDraft

__all__ = ["Tuning", "Update"]


@dataclass(frozen=True, slots=True)
class Tuning:
    """Analysis settings that are not per-asset configuration (benchmark-chosen defaults).

    Attributes:
        health: health-index smoothing and alarm level.
        posterior: how the degradation posterior becomes a number.
        prior: growth-rate prior for every asset; None: from each asset's configuration.
        bin_s: trend history bin width, seconds of reading time (an asset's
            alerting.trend_bin_s overrides it).
        capacity: maximum bins kept per channel (older half thinned beyond it).
        persist_every_s: model state is written at most this often per channel.
    """

    health: HealthIndexTuning = field(default_factory=HealthIndexTuning)
    posterior: PosteriorTuning = field(default_factory=PosteriorTuning)
    prior: DegradationPrior | None = None  # growth rate; None: each asset's own
    bin_s: float = 60.0
    capacity: int = 256
    persist_every_s: float = 60.0


@dataclass(slots=True)
class Update:
    """What one reading produced: drafts to store, and state to store with them."""

    drafts: list[AlertDraft] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)
    lives: list[tuple[str, FleetLife]] = field(default_factory=list)  # (class, completed life)
