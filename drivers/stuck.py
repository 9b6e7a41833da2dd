"""Stuck values: a sensor that repeats one exact value is frozen, not healthy.

A transmitter stuck at its last value, or a gateway serving a cached register, keeps
answering plausible numbers: without this check its machine reads "healthy" for ever and
every alert for it is silenced. A feature (or a waveform, by its bytes) that repeats the
exact same value for ``min_readings`` readings in a row, over at least ``min_duration_s``,
is flagged ``feature:stuck`` and left out of its reading (quality "bad"), like a saturated
register: the monitor never takes it as evidence of health, the sensor's implausible-value
time runs (a sensor_fault after its bad_values_fault_s), and the first reading that moves
clears it.

Real vibration never repeats at float resolution (FEMTO: 0 repeats in 7534 consecutive
RMS pairs of six bearings), but a coarse integer register can: the same RMS at 0.01 g
resolution repeats in 11-26 % of consecutive pairs, in runs of up to 8. So the readings
needed grow with how often the value has repeated before (its finished runs, not the one
going on): a run that live data would reach by chance less than once in FALSE_RUN_ODDS.
A value of exactly 0 is never judged stuck (a stopped machine reads 0 at rest; the
all-zero check covers a dead register), nor a channel whose velocity RMS says its machine
is stopped (StuckRule.at_rest_below_mm_s). And a value is stuck only while its whole channel
is still: a frozen transmitter or a cached register block freezes every value at once,
while a coarse value that repeats beside live ones is a steady machine inside one
register step (see StuckWatch._frozen).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field, replace

from drivers.reading import (
    ACCEL_PEAK,
    ACCEL_RMS,
    CREST_FACTOR,
    HF_ACCEL_RMS,
    KURTOSIS,
    VELOCITY_PEAK,
    VELOCITY_RMS,
    Reading,
)

STUCK = "stuck"  # the quality reason (counted per sensor in /metrics)
WAVEFORM = "waveform"  # a reading's waveform, compared by its samples' bytes
# Judged by default: the noisy statistics. Temperature drifts slowly at 0.01 degC, and a
# constant-speed machine's dominant frequency is the same bin every time: both repeat
# legitimately for hours (add them per sensor when they do move).
DEFAULT_FEATURES = (
    VELOCITY_RMS, VELOCITY_PEAK, ACCEL_RMS, ACCEL_PEAK, HF_ACCEL_RMS, KURTOSIS, CREST_FACTOR,
    WAVEFORM,
)  # fmt: skip
DEFAULT_MIN_READINGS = 10
DEFAULT_MIN_DURATION_S = 300.0
FALSE_RUN_ODDS = 1e-6  # chance that a live value repeats as long as a stuck one
MAX_NEEDED = 100_000  # a value that nearly always repeats is never judged stuck sooner
VALUES_LEARNED = 4  # values whose own repeat odds are kept, per feature (bounded memory)
_LEARNED_PAIRS = 4096.0  # past pairs weighed (halved beyond: a sensor's resolution may change)
# A gateway that refreshes a wireless sensor's registers every few minutes serves each
# measurement to every poll until the next: its channel stands still for one refresh
# period, then moves, again and again. A channel is frozen only once it has stood still
# STILL_FACTOR times its usual still stretch (the lower median of its last
# STILL_STRETCHES, each from a move of one of its judged values to the next; one long
# real freeze that ended does not change it), so a gateway that missed two refreshes in a
# row is not frozen yet. Its served-again repeats also raise its values' learned repeat
# rate, so a stopped gateway is found later (hours for a 10-minute refresh) but never
# taken for one at every refresh.
STILL_FACTOR = 3.0
STILL_STRETCHES = 8


@dataclass(frozen=True, slots=True)
class StuckRule:
    """When a repeated value is stuck (see the module docstring)."""

    min_readings: int = DEFAULT_MIN_READINGS
    min_duration_s: float = DEFAULT_MIN_DURATION_S
    features: frozenset[str] = frozenset(DEFAULT_FEATURES)
    # A channel whose velocity RMS is under this (its asset's machine.running_above_mm_s)
    # is a stopped machine: its values sit at the sensor's noise floor for the whole stop,
    # and the monitor takes no evidence from them anyway (agent.analysis.channel).
    at_rest_below_mm_s: float = 0.0


@dataclass(slots=True)
class _Run:
    value: Hashable
    since: float
    count: int = 1
    stuck: bool = False
    repeats: float = 0.0  # of the finished runs: consecutive equal pairs
    pairs: float = 0.0  # and all consecutive pairs
    # The same per value that has repeated (at most VALUES_LEARNED): a steady machine
    # sits on one coarse step far longer than the feature's average run says.
    # (repeats + 1j * pairs: one small object a value; None until a value repeats)
    by_value: dict[Hashable, complex] | None = None

    def learn(self) -> None:
        """Take the finished run into its feature's and its value's repeat odds."""
        self.repeats += self.count - 1
        self.pairs += self.count
        if self.pairs > _LEARNED_PAIRS:
            self.repeats, self.pairs = self.repeats / 2, self.pairs / 2
        known = self.by_value
        if known is None or self.value not in known:
            if self.count < 2:
                return  # a float-resolution value never repeats: nothing to keep
            if known is None:
                known = self.by_value = {}
            elif len(known) >= VALUES_LEARNED:  # forget the least seen one
                del known[min(known, key=lambda v: known[v].imag)]
        mine = known.get(self.value, 0j) + complex(self.count - 1, self.count)
        known[self.value] = mine / 2 if mine.imag > _LEARNED_PAIRS else mine


@dataclass(slots=True)
class _Channel:
    since: float  # when one of its judged values last moved
    moved_once: bool = False  # since the watch began: before, a run's true age is unknown
    stretches: deque[float] = field(default_factory=lambda: deque(maxlen=STILL_STRETCHES))
    at_rest: bool = False  # a reading of this stretch was of a stopped machine

    def moved(self, mono_s: float) -> None:
        """One of the channel's values moved: its still stretch ends and teaches."""
        stretch = mono_s - self.since
        if not self.at_rest:  # a stop's stillness says nothing of the running sensor
            self.stretches.append(stretch)
        self.since, self.moved_once, self.at_rest = mono_s, True, False

    def required_s(self, floor_s: float) -> float:
        """How long the channel must stand still to be frozen."""
        usual = statistics.median_low(self.stretches) if self.stretches else 0.0
        return max(floor_s, STILL_FACTOR * usual)


@dataclass(slots=True)
class StuckWatch:
    """One sensor's runs of equal values, by (channel, feature)."""

    rule: StuckRule
    episodes: int = 0  # features found stuck (each run counted once), for /metrics
    # The last readings' values have not moved since the watch began (an agent restart or
    # a reload): whether they are frozen is not known yet, so they are no sign that a
    # frozen sensor answers again (agent.sensor_faults holds a raised fault meanwhile).
    undecided: bool = False
    # The last channel judged stands still past the rule's floor, not (yet) frozen: a
    # gateway serving one measurement again, or a freeze still inside its learned wait.
    _served_again: bool = False
    _runs: dict[tuple[str, str], _Run] = field(default_factory=dict)
    _channels: dict[str, _Channel] = field(default_factory=dict)

    def needed(self, key: tuple[str, str]) -> int:
        """Readings in a row that make the value at ``key`` stuck now."""
        run = self._runs.get(key)
        floor = self.rule.min_readings
        if run is None:
            return floor
        p = (run.repeats + 1.0) / (run.pairs + 2.0)  # a repeat's odds, by its history
        mine = run.by_value.get(run.value) if run.by_value else None
        if mine is not None:  # the value's own, when it stays longer than the others
            p = max(p, (mine.real + 1.0) / (mine.imag + 2.0))
        return max(floor, min(MAX_NEEDED, 1 + math.ceil(math.log(FALSE_RUN_ODDS) / math.log(p))))

    def observe(self, key: tuple[str, str], value: Hashable, mono_s: float) -> bool:
        """Take one value at monotonic ``mono_s``; whether it is stuck (judged alone)."""
        run = self._take(key, value, mono_s)
        return self._mark(run, self._qualifies(key, run, mono_s))

    def _take(self, key: tuple[str, str], value: Hashable, mono_s: float) -> _Run:
        """The run of ``key`` with ``value`` taken (a new value ends and learns the old run)."""
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = _Run(value, mono_s)
            return run
        if value != run.value:
            if not run.stuck:  # a frozen stretch says nothing of the live resolution
                run.learn()
            run.value, run.since, run.count, run.stuck = value, mono_s, 1, False
            return run
        run.count += 1
        return run

    def _still(self, run: _Run, mono_s: float) -> bool:
        """Whether the run has not moved for the rule's floor (readings and time)."""
        return (
            run.count >= self.rule.min_readings and mono_s - run.since >= self.rule.min_duration_s
        )

    def _qualifies(self, key: tuple[str, str], run: _Run, mono_s: float) -> bool:
        """Whether the run alone is stuck: longer than live data reaches by chance."""
        return (
            run.value != 0
            and run.count >= self.needed(key)
            and mono_s - run.since >= self.rule.min_duration_s
        )

    def _mark(self, run: _Run, stuck: bool) -> bool:
        if stuck and not run.stuck:
            self.episodes += 1
        run.stuck = stuck
        return stuck

    def _frozen(
        self, channel: str, values: dict[str, Hashable], mono_s: float, at_rest: bool = False
    ) -> list[str]:
        """The judged values of one channel's reading that are stuck.

        A frozen transmitter or a gateway's cached register freezes every value of the
        channel at once; a coarse value that repeats while its channel's other values
        move is the machine holding steady at its register's resolution (0.3 mm/s at
        0.1 mm/s steps on an idle machine, for an hour), not a frozen sensor. So values are
        stuck only while none of the channel's judged values moved for the rule's floor and
        one of them repeated longer than chance; then every one not at 0 is.
        """
        known = [self._runs.get((channel, f)) for f in values]
        moved = any(
            run is None or run.value != v for run, v in zip(known, values.values(), strict=True)
        )
        ch = self._channels.get(channel)
        if ch is None:
            ch = self._channels[channel] = _Channel(mono_s)
        elif moved:
            ch.moved(mono_s)
        ch.at_rest |= at_rest
        runs = {f: self._take((channel, f), v, mono_s) for f, v in values.items()}
        alone = {f for f, run in runs.items() if self._qualifies((channel, f), run, mono_s)}
        frozen = (
            not at_rest
            and bool(alone)
            and all(self._still(run, mono_s) for run in runs.values())
            and mono_s - ch.since >= ch.required_s(self.rule.min_duration_s)
        )
        live = not at_rest and any(v != 0 for v in values.values())
        if not (frozen or ch.moved_once) and live:
            self.undecided = True
        self._served_again = (
            live and not frozen and all(self._still(run, mono_s) for run in runs.values())
        )
        return [f for f, run in runs.items() if self._mark(run, frozen and run.value != 0)]

    @property
    def stuck_now(self) -> tuple[str, ...]:
        """``channel/feature`` of every value stuck now (for status)."""
        return tuple(sorted(f"{c}/{f}" for (c, f), run in self._runs.items() if run.stuck))

    def check(self, readings: Iterable[Reading]) -> tuple[list[Reading], list[str]]:
        """The readings with their stuck values flagged and left out, and the new flags."""
        out: list[Reading] = []
        flags: dict[str, None] = {}
        self.undecided = False
        for r in readings:
            mono = r.mono_s if r.mono_s is not None else r.timestamp.timestamp()
            values: dict[str, Hashable] = {
                f: v for f, v in r.features.items() if f in self.rule.features
            }
            wave = r.waveform
            if wave is not None and WAVEFORM in self.rule.features:
                values[WAVEFORM] = hash(wave.samples.tobytes())
            velocity = r.features.get(VELOCITY_RMS)
            at_rest = velocity is not None and velocity < self.rule.at_rest_below_mm_s
            frozen = self._frozen(r.channel, values, mono, at_rest) if values else []
            if WAVEFORM in frozen:
                wave = None
            if not frozen:
                # One measurement served again past the rule's floor is no new evidence:
                # not analysed (a cached zone A value must not fill an alert's clear hold
                # while the freeze is not yet judged), but no fault either.
                again = values and self._served_again and r.quality == "good"
                out.append(replace(r, quality="uncertain") if again else r)
                continue
            mine = tuple(f"{f}:{STUCK}" for f in frozen)
            flags.update(dict.fromkeys(mine))
            features = {k: v for k, v in r.features.items() if k not in frozen}
            out.append(replace(r, features=features, waveform=wave, quality="bad",
                               flags=(*r.flags, *mine)))  # fmt: skip
        return out, list(flags)
