"""How much of a serial line a poll plan needs. Pure: the check command and /metrics use it.

One read costs its request (8 characters) and answer (5 + 2 x registers characters), the
inter-frame silence before each, and the device's turnaround; a line whose devices need
more than the whole second per second cannot keep their configured rates.
"""

from __future__ import annotations

from collections.abc import Iterable

from drivers.modbus._frames import char_time_s, inter_frame_gap_s, rtu_exchange_chars
from drivers.modbus._plan import ReadPlan

TURNAROUND_S = 0.01  # assumed device turnaround per request (typical RTU sensors: 2-20 ms)


def exchange_s(count: int, *, baudrate: int, parity: str = "N", stop_bits: int = 1) -> float:
    """Line seconds for one read of ``count`` registers."""
    char_s = char_time_s(baudrate, parity, stop_bits)
    return rtu_exchange_chars(count) * char_s + 2 * inter_frame_gap_s(baudrate, char_s) + (
        TURNAROUND_S)  # fmt: skip


def line_utilisation(
    devices: Iterable[tuple[ReadPlan, float]],
    *,
    baudrate: int,
    parity: str = "N",
    stop_bits: int = 1,
) -> float:
    """Share of the line the devices' polls need: sum of exchange time per second.

    Args:
        devices: (read plan, poll interval in seconds) of each device on the line.
        baudrate: line speed; parity, stop_bits: the character frame.
    """
    total = 0.0
    for plan, interval_s in devices:
        per_poll = sum(
            exchange_s(b.count, baudrate=baudrate, parity=parity, stop_bits=stop_bits)
            for b in plan.blocks
        )
        total += per_poll / interval_s
    return total
