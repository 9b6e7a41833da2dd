"""Confirmation of a jump: a burst of garbage is not a step of the machine.

A value a register or a packet garbles (a bit flip, a torn read, a sensor rebooting) can
stay inside its valid range and be x30 the machine's level: three such readings in a row
met the debounce and raised ISO zone D; two made the health index's smoothed value stay
over its level for the debounce (its median of 3 takes out one). A machine's vibration
does not rise tenfold from one reading to the next and fall back: worn bearings grow over
hours, and the steepest real step in the FEMTO run-to-failure data is x9 snapshot to
snapshot (Bearing3_1, at its failure) but for one at the start of Bearing2_1 (x14, which
lasted: it is analysed, JUMP_CONFIRM readings late).

So a running reading whose velocity RMS or health-index feature (RMS values: WATCHED) is
more than JUMP_FACTOR times the channel's last analysed reading's is held, not analysed; held
readings are analysed in order, with their own times, once JUMP_CONFIRM readings in a row
have jumped (a real step: its records come at most JUMP_CONFIRM - 1 readings later than
without the rule, their times the readings'), and dropped as garbage when a reading that
does not jump (or a stop) comes first. The hold is in memory: a restart drops what it holds
(at most JUMP_CONFIRM - 1 readings).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agent.analysis.health_index import HI_FEATURES
from drivers.reading import VELOCITY_RMS, Reading

__all__ = ["JUMP_CONFIRM", "JUMP_FACTOR", "WATCHED", "Held", "JumpGate"]

JUMP_FACTOR = 10.0  # one order of magnitude over the last analysed reading
JUMP_CONFIRM = 4  # readings in a row that a jump needs: bursts of up to 3 are garbage
# The features a jump is judged on: RMS values, which a machine does not multiply tenfold
# for one reading. Not a peak (a failure metric such as accel_peak_g): a spall's impact
# lifts it tenfold for one snapshot for real (FEMTO Bearing3_1, 1_1, 1_2, 3_2).
WATCHED = (VELOCITY_RMS, *HI_FEATURES)


@dataclass(frozen=True, slots=True)
class Held:
    """A reading waiting for its jump to be confirmed, with what analysing it needs."""

    reading: Reading
    features: Mapping[str, float]
    value: float  # velocity RMS, mm/s
    t_s: float  # analysis time
    wall_s: float


@dataclass(slots=True)
class JumpGate:
    """One channel's hold of jumping readings (see the module docstring)."""

    reference: dict[str, float] = field(default_factory=dict)  # the last analysed values
    held: list[Held] = field(default_factory=list)
    jumped: str | None = None  # the feature the held burst jumped on
    dropped_on: str | None = None  # ...and the last dropped burst's, for the log
    warned: bool = False  # a dropped burst was logged for this channel
    dropped_total: int = 0  # readings dropped as garbage bursts

    def jump(self, features: Mapping[str, float], watched: Sequence[str]) -> str | None:
        """The first watched feature more than JUMP_FACTOR x its reference, or None."""
        ref = self.reference
        for name in watched:
            r, v = ref.get(name), features.get(name)
            if r is not None and v is not None and r > 0.0 and v > JUMP_FACTOR * r:
                return name
        return None

    def offer(self, item: Held, watched: Sequence[str]) -> tuple[Sequence[Held], Sequence[Held]]:
        """(readings to analyse now, in order; readings dropped as a garbage burst)."""
        name = self.jump(item.features, watched)
        if name is None:  # almost every reading: no tuple or list beyond the answer's
            dropped = self.interrupt() if self.held else ()
            self.accept(item.features, watched)
            return (item,), dropped
        self.held.append(item)
        self.jumped = self.jumped or name
        if len(self.held) < JUMP_CONFIRM:
            return (), ()
        ready, self.held, self.jumped = self.held, [], None
        self.accept(ready[-1].features, watched)
        return ready, ()

    def interrupt(self) -> list[Held]:
        """A reading that does not jump (or a stop) ends a burst: what was held is dropped."""
        if self.held:
            self.dropped_on = self.jumped
            self.dropped_total += len(self.held)
        dropped, self.held, self.jumped = self.held, [], None
        return dropped

    def accept(self, features: Mapping[str, float], watched: Sequence[str]) -> None:
        """The latest analysed values become the reference."""
        ref = self.reference
        for name in watched:
            v = features.get(name)
            if v is not None:
                ref[name] = v
