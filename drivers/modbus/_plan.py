"""Compile a register profile into read blocks. Pure: no sockets, no clock.

The poller only executes the plan. Rows of one function code (3 or 4) that are adjacent
merge into one read; a gap is bridged when every register in it is listed in the profile
(an ignored row the device still serves) or when it is at most ``max_gap`` registers; a
read never exceeds the protocol's 125 registers and never splits a multi-register value.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from drivers.decoders import MAX_READ_REGISTERS, unpacker
from drivers.profiles import ALL_CHANNELS, Profile, Register


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers from ``address``, feeding ``registers``."""

    address: int
    count: int
    registers: tuple[Register, ...]
    function_code: int = 3
    # (row, unpack function, byte offset), compiled once: decoding is on every poll's path.
    _decoders: tuple[tuple[Register, Callable[[bytes, int], int | float], int], ...] = field(
        init=False, repr=False, compare=False
    )
    _words: struct.Struct = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        decoders = tuple(
            (reg, unpacker(reg.dtype, reg.order), 2 * (reg.address - self.address))
            for reg in self.registers
        )
        object.__setattr__(self, "_decoders", decoders)
        object.__setattr__(self, "_words", struct.Struct(f">{self.count}H"))

    def raw_values(self, words: Sequence[int]) -> list[tuple[Register, int | float]]:
        """Decode this block's answer into (row, raw number) pairs: packed once, each row
        unpacked in place.

        Raises:
            ValueError: ``words`` does not hold exactly ``count`` registers.
        """
        if len(words) != self.count:
            raise ValueError(f"expected {self.count} registers, got {len(words)}")
        buf = self._words.pack(*words)
        return [(reg, unpack(buf, offset)) for reg, unpack, offset in self._decoders]

    def values(self, words: Sequence[int]) -> list[tuple[Register, float]]:
        """Decode this block's answer into (row, scaled value) pairs (see raw_values)."""
        return [(reg, reg.scaled(float(raw))) for reg, raw in self.raw_values(words)]


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """The reads for one device: blocks in (function, address) order.

    ``registers`` lists every block's rows in read order (the order of a poll's decoded
    values); ``routes`` gives, per channel in ``channels`` order, the (feature, index into
    those values) pairs its Reading carries: the channel's own rows and the shared ones,
    in read order. Compiled once, used on every poll.
    """

    blocks: tuple[ReadBlock, ...]
    channels: tuple[str, ...]
    registers: tuple[Register, ...] = field(init=False, repr=False, compare=False)
    routes: tuple[tuple[tuple[str, int], ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regs = tuple(reg for block in self.blocks for reg in block.registers)
        routes = tuple(
            tuple(
                (reg.feature, i)
                for i, reg in enumerate(regs)
                if reg.feature is not None and reg.channel in (channel, ALL_CHANNELS)
            )
            for channel in self.channels
        )
        object.__setattr__(self, "registers", regs)
        object.__setattr__(self, "routes", routes)

    @property
    def registers_read(self) -> int:
        """Registers transferred per poll (for the line's capacity plan)."""
        return sum(b.count for b in self.blocks)


def plan_reads(
    registers: Iterable[Register],
    *,
    known: Iterable[Register] = (),
    max_gap: int = 0,
    max_count: int = MAX_READ_REGISTERS,
) -> tuple[ReadBlock, ...]:
    """Group rows into as few reads as the rules allow (each function code apart).

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
    served: set[tuple[int, int]] = set()
    rows = sorted(registers, key=lambda r: (r.function_code, r.address))
    for reg in [*known, *rows]:
        served.update((reg.function_code, a) for a in range(reg.address, reg.end))

    blocks: list[ReadBlock] = []
    current: list[Register] = []
    fc = start = end = 0
    for reg in rows:
        if current:
            unlisted = sum(1 for a in range(end, reg.address) if (fc, a) not in served)
            if (
                reg.function_code == fc
                and reg.address >= end
                and unlisted <= max_gap
                and reg.end - start <= max_count
            ):
                current.append(reg)
                end = max(end, reg.end)
                continue
            blocks.append(ReadBlock(start, end - start, tuple(current), fc))
        current, fc, start, end = [reg], reg.function_code, reg.address, reg.end
    if current:
        blocks.append(ReadBlock(start, end - start, tuple(current), fc))
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
    return ReadPlan(blocks=blocks, channels=wanted)
