"""Readings from one poll's answers: decode each block, check each value against its
profile, and route features to channels (flagged values left out, the reading marked bad)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from drivers.modbus._plan import ReadPlan
from drivers.profiles import ALL_CHANNELS, ALL_ZERO, Register
from drivers.reading import Reading, Transport

__all__ = ["assemble", "readings_from"]

Flags = list[tuple[Register, str]]


def readings_from(
    sensor_id: str,
    channels: Sequence[str],
    values: Sequence[tuple[Register, float]],
    timestamp: datetime,
    *,
    flags: Sequence[tuple[Register, str]] = (),
    transport: Transport = "modbus",
) -> list[Reading]:
    """One Reading per channel: that channel's features plus the shared ones.

    A channel with a flagged value (its own or a shared one) is quality "bad", carries the
    flags, and leaves the flagged values out of its features.
    """
    out = []
    for channel in channels:
        mine = (channel, ALL_CHANNELS)
        bad = tuple(f"{reg.feature}:{reason}" for reg, reason in flags if reg.channel in mine)
        flagged = {id(reg) for reg, _ in flags}
        features = {
            reg.feature: value
            for reg, value in values
            if reg.feature is not None and reg.channel in mine and id(reg) not in flagged
        }
        out.append(
            Reading(
                sensor_id,
                channel,
                timestamp,
                features,
                transport=transport,
                quality="bad" if bad else "good",
                flags=bad,
            )
        )
    return out


def assemble(
    plan: ReadPlan,
    answers: list[list[int]],
    now: datetime,
    *,
    sensor_id: str,
    transport: Transport,
    all_zero_fault: bool,
    mono_s: float | None = None,
) -> tuple[list[Reading], Flags]:
    """One Reading per planned channel from the words of each block, and the flags raised.

    Args:
        plan: the compiled reads; ``answers`` holds one list of words per block.
        now: the readings' UTC timestamp.
        sensor_id: the sensor the readings come from.
        transport: the transport name the readings carry.
        all_zero_fault: the profile says every register reading 0 is a fault.
        mono_s: the monotonic time of ``now`` (durations are measured on it).
    """
    values: list[float] = []
    flags: Flags = []
    any_set = False
    for block, words in zip(plan.blocks, answers, strict=True):
        any_set = any_set or any(words)
        for reg, raw in block.raw_values(words):
            value, reason = reg.assess(raw)
            values.append(value)
            if reason is not None:
                flags.append((reg, reason))
    if not any_set and all_zero_fault:
        flags = [(reg, ALL_ZERO) for reg in plan.registers]
    if flags:
        readings = readings_from(
            sensor_id,
            plan.channels,
            list(zip(plan.registers, values, strict=True)),
            now,
            flags=flags,
            transport=transport,
        )
    else:  # every poll of a healthy sensor: what readings_from makes, compiled routes
        readings = [
            Reading(
                sensor_id,
                channel,
                now,
                {f: values[i] for f, i in route},
                transport,
                mono_s=mono_s,
            )
            for channel, route in zip(plan.channels, plan.routes, strict=True)
        ]
    return readings, flags
