"""Compile a register profile into read blocks. Pure: no sockets, no clock.

The poller only executes the plan. Adjacent rows merge into one read; a gap is bridged when
every register in it is listed in the profile (an ignored row the device still serves) or
when it is at most ``max_gap`` registers; a read never exceeds the protocol's 125 registers
and never splits a multi-register value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from drivers.profiles import ALL_CHANNELS, Profile, Register

MAX_READ_REGISTERS = 125  # Modbus limit for function codes 3 and 4 (spec section 6.3)


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers from ``address``, feeding ``registers``."""

    address: int
    count: int
    registers: tuple[Register, ...]

    def values(self, words: Sequence[int]) -> list[tuple[Register, float]]:
        """Decode this block's answer into (row, scaled value) pairs.

        Raises:
            ValueError: ``words`` does not hold exactly ``count`` registers.
        """
        if len(words) != self.count:
            raise ValueError(f"expected {self.count} registers, got {len(words)}")
        out = []
        for reg in self.registers:
            offset = reg.address - self.address
            out.append((reg, reg.value(words[offset : offset + reg.count])))
        return out


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """The reads for one device: function code and blocks in address order."""

    function_code: int
    blocks: tuple[ReadBlock, ...]
    channels: tuple[str, ...]


def plan_reads(
    registers: Iterable[Register],
    *,
    known: Iterable[Register] = (),
    max_gap: int = 0,
    max_count: int = MAX_READ_REGISTERS,
) -> tuple[ReadBlock, ...]:
    """Group rows into as few reads as the rules allow.

    Args:
        registers: the rows to read.
        known: further rows the device serves (ignored rows); gaps they cover are bridged.
        max_gap: bridge a gap of at most this many unlisted registers as well.
        max_count: the largest read, at most 125.

    Raises:
        ValueError: ``max_count`` outside 2..125 or a negative ``max_gap``.
    """
    if not 2 <= max_count <= MAX_READ_REGISTERS:
        raise ValueError(f"max_count must be 2..{MAX_READ_REGISTERS}, got {max_count}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    served: set[int] = set()
    for reg in known:
        served.update(range(reg.address, reg.end))
    rows = sorted(registers, key=lambda r: r.address)
    for reg in rows:
        served.update(range(reg.address, reg.end))

    blocks: list[ReadBlock] = []
    current: list[Register] = []
    start = end = 0
    for reg in rows:
        if current:
            gap = range(end, reg.address)
            unlisted = sum(1 for a in gap if a not in served)
            if reg.address >= end and unlisted <= max_gap and reg.end - start <= max_count:
                current.append(reg)
                end = max(end, reg.end)
                continue
            blocks.append(ReadBlock(start, end - start, tuple(current)))
        current, start, end = [reg], reg.address, reg.end
    if current:
        blocks.append(ReadBlock(start, end - start, tuple(current)))
    return tuple(blocks)


def plan_profile(
    profile: Profile,
    channels: Sequence[str] | None = None,
    *,
    max_gap: int = 0,
    max_count: int = MAX_READ_REGISTERS,
) -> ReadPlan:
    """The read plan for ``channels`` of ``profile`` (all of its channels by default).

    Raises:
        ValueError: a channel the profile does not have.
    """
    wanted = tuple(channels) if channels is not None else profile.channels
    missing = [c for c in wanted if c not in profile.channels]
    if missing or not wanted:
        raise ValueError(
            f"profile {profile.name!r} has channels {list(profile.channels)}, "
            f"not {missing or list(wanted)}"
        )
    rows = [r for r in profile.registers if r.channel in wanted or r.channel == ALL_CHANNELS]
    # Every listed row, used or not, is a register the device serves: safe to bridge.
    known = profile.registers + profile.ignored
    blocks = plan_reads(rows, known=known, max_gap=max_gap, max_count=max_count)
    return ReadPlan(function_code=profile.function_code, blocks=blocks, channels=wanted)
