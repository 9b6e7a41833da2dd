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

Garbage bursts are rare; jumps that keep coming back are not garbage. An intermittent fault
(an impacting bearing, looseness) can alternate tenfold high and normal readings: each burst
falls back, and dropping them all would silence a real alert for good. So once RECUR_BURSTS
bursts have fallen back within RECUR_READINGS readings, the last one is analysed, and so is
every jump of the channel until RECUR_READINGS readings in a row have not jumped: severity
and trend judge them (their debounce and median), the planner hears of it, and a recurring
garbage source is seen as one too. Logged once per channel.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agent.analysis.health_index import HI_FEATURES
from drivers.reading import VELOCITY_RMS, Reading

__all__ = [
    "JUMP_CONFIRM", "JUMP_FACTOR", "RECUR_BURSTS", "RECUR_READINGS", "WATCHED", "Held", "JumpGate",
]  # fmt: skip

JUMP_FACTOR = 10.0  # one order of magnitude over the last analysed reading
JUMP_CONFIRM = 4  # readings in a row that a jump needs: bursts of up to 3 are garbage
# Bursts that fell back within this many readings recur: from then on jumps are analysed,
# until this many readings in a row have not jumped.
RECUR_BURSTS = 3
RECUR_READINGS = 60
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
    seen: int = 0  # readings offered
    ends: deque[int] = field(default_factory=lambda: deque(maxlen=RECUR_BURSTS))  # bursts' ends
    recurring_since: int | None = None  # jumps recur: analysed (None: they are held)
    last_jump: int = 0  # the latest jumping reading (its `seen`)
    recur_warned: bool = False  # recurring jumps were logged for this channel

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
        self.seen += 1
        name = self.jump(item.features, watched)
        if name is None:  # almost every reading: no tuple or list beyond the answer's
            if self.recurring_since is not None and self.seen - self.last_jump > RECUR_READINGS:
                self.recurring_since = None  # the jumps stopped recurring: hold them again
            if not self.held:
                self.accept(item.features, watched)
                return (item,), ()
            if self.recurs():  # the burst is one of many: analysed, with this reading
                ready, self.held, self.jumped = [*self.held, item], [], None
                self.accept(item.features, watched)
                return ready, ()
            dropped = self.interrupt()
            self.accept(item.features, watched)
            return (item,), dropped
        self.last_jump = self.seen
        if self.recurring_since is not None:
            self.accept(item.features, watched)
            return (item,), ()
        self.held.append(item)
        self.jumped = self.jumped or name
        if len(self.held) < JUMP_CONFIRM:
            return (), ()
        ready, self.held, self.jumped = self.held, [], None
        self.accept(ready[-1].features, watched)
        return ready, ()

    def recurs(self) -> bool:
        """The held burst fell back: is it the RECUR_BURSTS-th within RECUR_READINGS readings
        (then jumps are analysed from now on)?"""
        self.ends.append(self.seen)
        if len(self.ends) < RECUR_BURSTS or self.seen - self.ends[0] > RECUR_READINGS:
            return False
        self.recurring_since = self.seen
        return True

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
