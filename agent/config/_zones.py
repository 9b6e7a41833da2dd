"""Velocity RMS zone boundaries (mm/s) for the machine description of an asset.

Tables from ISO 10816-3 / 20816-3 (groups, foundations) and ISO 10816-1 (classes I-IV),
10-1000 Hz band. Kept next to the models so `check` can show the limits that will apply.
"""

from __future__ import annotations

from agent.config._models import ExplicitLimits, Iso10816_1, Iso10816_3, ZoneLimits

_ISO10816_3: dict[tuple[int, str], tuple[float, float, float]] = {
    (1, "rigid"): (2.3, 4.5, 7.1),
    (1, "flexible"): (3.5, 7.1, 11.0),
    (2, "rigid"): (1.4, 2.8, 4.5),
    (2, "flexible"): (2.3, 4.5, 7.1),
}
_ISO10816_1: dict[str, tuple[float, float, float]] = {
    "I": (0.71, 1.8, 4.5),
    "II": (1.12, 2.8, 7.1),
    "III": (1.8, 4.5, 11.2),
    "IV": (2.8, 7.1, 18.0),
}


def zone_limits(machine: Iso10816_3 | Iso10816_1 | ExplicitLimits) -> ZoneLimits:
    """A/B, B/C and C/D boundaries in mm/s velocity RMS for one machine description.

    Args:
        machine: the asset's ``machine`` entry.
    """
    if isinstance(machine, Iso10816_3):
        ab, bc, cd = _ISO10816_3[(machine.group, machine.foundation)]
    elif isinstance(machine, Iso10816_1):
        ab, bc, cd = _ISO10816_1[machine.class_]
    else:
        return machine.limits
    return ZoneLimits(ab=ab, bc=bc, cd=cd)


def standard_label(machine: Iso10816_3 | Iso10816_1 | ExplicitLimits) -> str:
    """The standard as alert records name it, e.g. 'ISO 10816-3 group 2 rigid'."""
    if isinstance(machine, Iso10816_3):
        return f"ISO 10816-3 group {machine.group} {machine.foundation}"
    if isinstance(machine, Iso10816_1):
        return f"ISO 10816-1 class {machine.class_}"
    return "explicit limits"
