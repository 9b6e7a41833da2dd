"""What `edge-sim mqtt` publishes and when: sensors, their behaviour, the message schedule.

No I/O: `Plan.next()` hands out the next due message (topic, payload, kind), so the
schedule, the hostile-message fractions and the payloads are testable without a broker.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from simulators import ncd
from simulators.scenario import NOISE_TICK_S as TICK_S
from simulators.scenario import Degrade, Healthy, Sample, Scenario, make_scenario

Behaviour = Literal["healthy", "degrade", "dead", "garbage", "malformed"]
BEHAVIOURS: tuple[Behaviour, ...] = ("healthy", "degrade", "dead", "garbage", "malformed")
Kind = Literal["processed", "waveform", "femto", "garbage", "malformed"]
KINDS: tuple[Kind, ...] = ("processed", "waveform", "femto", "garbage", "malformed")


def next_stamp(now: float, last: float) -> float:
    """``now``, or 1 ms after ``last`` if that is later, in whole milliseconds: the payload's
    resolution (ncd.iso). Adding 0.001 to a float time could print as the same millisecond
    (.9339995 and .9349995 both as .934): a second reading of a flood with the first one's
    bytes, which the agent drops as a redelivery."""
    return max(math.floor(now * 1000), round(last * 1000) + 1) / 1000


@dataclass(slots=True)
class Sensor:
    """One simulated wireless sensor."""

    index: int
    behaviour: Behaviour
    scenario: Scenario
    mac: str = ""
    last_ts: float = 0.0  # timestamps strictly increase per sensor
    hostile_credit: float = 0.0  # accumulated share of extra garbage/malformed messages
    _body_cache: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # kind -> (tick, body)
    _sample_cache: tuple[int, Scenario, Sample] | None = None

    def sample(self, t_s: float) -> Sample:
        """The scenario's values at ``t_s``; they change once per tick (100 ms), and a
        flood asks thousands of times per second."""
        tick = int(t_s / TICK_S)
        cached = self._sample_cache
        if cached is None or cached[0] != tick or cached[1] is not self.scenario:
            cached = (tick, self.scenario, self.scenario.sample(t_s))
            self._sample_cache = cached
        return cached[2]

    def __post_init__(self) -> None:
        self.mac = ncd.mac(self.index)

    def stamp(self, now: float) -> float:
        self.last_ts = next_stamp(now, self.last_ts)
        return self.last_ts


@dataclass(frozen=True, slots=True)
class Message:
    """One publish: where, what, and what kind (for the counts)."""

    topic: str
    payload: bytes
    kind: Kind
    sensor: int


def parse_sensor_specs(specs: list[str], count: int) -> dict[int, Behaviour]:
    """``IDX[-IDX]:BEHAVIOUR`` specs over sensors 1..count (default healthy).

    Raises:
        ValueError: a malformed spec or an index outside 1..count, with the reason.
    """
    out: dict[int, Behaviour] = dict.fromkeys(range(1, count + 1), "healthy")
    for spec in specs:
        span, sep, name = spec.partition(":")
        lo, _, hi = span.partition("-")
        if not sep or name not in BEHAVIOURS or not lo.isdigit() or not (hi or lo).isdigit():
            raise ValueError(
                f"sensor {spec!r}: expected IDX[-IDX]:BEHAVIOUR with BEHAVIOUR one of "
                f"{', '.join(BEHAVIOURS)}, e.g. 3:degrade or 4-6:dead"
            )
        a, b = int(lo), int(hi or lo)
        if not 1 <= a <= b <= count:
            raise ValueError(f"sensor {spec!r}: indexes must lie within 1..{count} (--sensors)")
        out.update(dict.fromkeys(range(a, b + 1), name))  # type: ignore[arg-type]
    return out


@dataclass(slots=True)
class Plan:
    """The schedule of every sensor's messages.

    Args:
        behaviours: sensor index -> behaviour.
        rate_hz: processed readings per second per sensor (0: none).
        waveform_hz: waveform snapshots per second per sensor (0: none).
        flood: ignore the rates; every sensor publishes as fast as the broker takes it.
        garbage / malformed: extra hostile messages, as a fraction of everything published.
    """

    behaviours: dict[int, Behaviour]
    rate_hz: float = 1.0
    waveform_hz: float = 0.0
    flood: bool = False
    nested: bool = False
    encoding: str = "json"
    samples: int = 2560
    odr_hz: float = 25600.0
    garbage: float = 0.0
    malformed: float = 0.0
    oversize_bytes: int = 2 * 2**20
    life_s: float = 60.0
    seed: int = 0
    prefix: str = "ncd"
    femto: Iterator[Any] | None = None  # snapshots of a recording (agent/replay reader)
    femto_index: int = 0
    speedup: float = 1.0
    t0: float = field(default_factory=time.monotonic)
    sensors: list[Sensor] = field(default_factory=list)
    _heap: list[tuple[float, int, int, str]] = field(default_factory=list)
    _seq: int = 0
    _rng: random.Random = field(default_factory=random.Random)
    _pending: list[Message] = field(default_factory=list)
    _femto_first: float | None = None
    _femto_next: Any = None
    _femto_last: float = 0.0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        n = max(len(self.behaviours), 1)
        for i, (index, behaviour) in enumerate(sorted(self.behaviours.items())):
            name = "degrade" if behaviour == "degrade" else "healthy"
            scenario = make_scenario(name, seed=self.seed + index, life_s=self.life_s)
            s = Sensor(index, behaviour, scenario)
            s.hostile_credit = self._rng.random()
            self.sensors.append(s)
            if behaviour == "dead":
                continue
            for kind, hz in (("processed", self.rate_hz), ("waveform", self.waveform_hz)):
                if hz > 0:
                    # Spread the sensors over one period, so 200 sensors at 1 Hz are not a burst.
                    self._push(0.0 if self.flood else i / n / hz, len(self.sensors) - 1, kind)
        if self.femto is not None:
            self._femto_next = next(self.femto, None)
            if self._femto_next is not None:
                self._femto_first = self._femto_next.at.timestamp()
                self._push(0.0, -1, "femto")

    def _push(self, due: float, slot: int, kind: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, slot, kind))

    def topic(self, kind: str, addr: str) -> str:
        return f"{self.prefix}/{'vibration' if kind == 'processed' else 'waveform'}/{addr}"

    def repair(self) -> list[int]:
        """Replace every degrading sensor's bearing: healthy from now on."""
        fixed = [s for s in self.sensors if isinstance(s.scenario, Degrade)]
        for s in fixed:
            s.scenario = Healthy(seed=s.scenario.seed)
        return [s.index for s in fixed]

    def next(self) -> tuple[float, Message] | None:
        """(seconds since start when due, message), or None when nothing is left."""
        if self._pending:
            return 0.0, self._pending.pop()
        while self._heap:
            due, _, slot, kind = heapq.heappop(self._heap)
            if kind == "femto":
                msg = self._femto_message(due)
                if msg is not None:
                    return due, msg
                continue
            sensor = self.sensors[slot]
            hz = self.rate_hz if kind == "processed" else self.waveform_hz
            self._push(due if self.flood else due + 1.0 / hz, slot, kind)
            return due, self._message(sensor, kind, max(due, self.elapsed()))
        return None

    def restart_clock(self) -> None:
        """Scenario time and the schedule count from now (the broker connection)."""
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _message(self, sensor: Sensor, kind: str, t_s: float) -> Message:
        at = sensor.stamp(time.time())
        good = self._good(sensor, kind, t_s, at)
        topic = self.topic(kind, sensor.mac)
        if sensor.behaviour == "garbage":
            return self._garbage(sensor, topic, good, at)
        if sensor.behaviour == "malformed":
            return self._malformed(sensor, topic, good)
        keep = 1.0 - self.garbage - self.malformed
        sensor.hostile_credit += (self.garbage + self.malformed) / keep
        while sensor.hostile_credit >= 1.0:  # interleave the hostile ones after the good one
            sensor.hostile_credit -= 1.0
            if self._rng.random() * (self.garbage + self.malformed) < self.garbage:
                self._pending.append(self._garbage(sensor, topic, good, at))
            else:
                self._pending.append(self._malformed(sensor, topic, good))
        return Message(topic, good, kind, sensor.index)  # type: ignore[arg-type]

    def _good(self, sensor: Sensor, kind: str, t_s: float, at: float) -> bytes:
        # The values change once per scenario tick: encode the body once per tick and kind,
        # and only the head (addr, timestamp) per message, however fast we publish.
        tick = int(t_s / TICK_S)
        cached = sensor._body_cache.get(kind)
        if cached is None or cached[0] != tick:
            cached = (tick, self._body(sensor, kind, t_s, tick))
            sensor._body_cache[kind] = cached
        return ncd.stamped(sensor.mac, at, cached[1])

    def _body(self, sensor: Sensor, kind: str, t_s: float, tick: int) -> bytes:
        sample = sensor.sample(t_s)
        if kind == "processed":
            rssi = -55 - (sensor.index * 7) % 30
            msg = ncd.processed(sensor.mac, sample, 0.0, nested=self.nested, rssi=rssi)
            del msg["addr"], msg["timestamp"]
            return ncd.encode(msg)
        wave = ncd.synth_waveform(
            sample, fs_hz=self.odr_hz, n=self.samples, seed=self.seed + sensor.index, tick=tick
        )
        return ncd.waveform_body(wave, self.odr_hz, encoding=self.encoding)

    def _garbage(self, sensor: Sensor, topic: str, good: bytes, at: float) -> Message:
        bad = ncd.garbage(json.loads(good), self._rng.choice(ncd.GARBAGE_KINDS), at)
        return Message(topic, ncd.encode(bad), "garbage", sensor.index)

    def _malformed(self, sensor: Sensor, topic: str, good: bytes) -> Message:
        kind = self._rng.choice(ncd.MALFORMED_KINDS)
        payload = ncd.malformed(good, kind, self._rng, oversize=self.oversize_bytes)
        return Message(topic, payload, "malformed", sensor.index)

    def _femto_message(self, due: float) -> Message | None:
        assert self.femto is not None and self._femto_first is not None
        snap, self._femto_next = self._femto_next, next(self.femto, None)
        if snap is None:
            return None
        if self._femto_next is not None:  # due after the recording's own interval, sped up
            upcoming = (self._femto_next.at.timestamp() - self._femto_first) / self.speedup
            self._push(max(upcoming, due), -1, "femto")
        addr = ncd.mac(self.femto_index)
        at = self._femto_last = next_stamp(time.time(), self._femto_last)
        body = ncd.waveform_body(snap.channels, snap.fs_hz, encoding=self.encoding)
        return Message(self.topic("waveform", addr), ncd.stamped(addr, at, body), "femto",
                       self.femto_index)  # fmt: skip
