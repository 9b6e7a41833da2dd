"""ISO vibration severity: zone boundaries by machine class and the zone of a velocity RMS.

The tables (ISO 10816-3 / 20816-3 groups and foundations, ISO 10816-1 classes I-IV,
velocity RMS in mm/s) live with the configuration, which shows them in `check`. A value
exactly on a boundary belongs to the upper zone: an engineer would rather see a warning
one reading early than one reading late.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from agent.analysis.features import VELOCITY_BAND_PERIODS
from agent.config import ExplicitLimits, Iso10816_1, Iso10816_3, standard_label, zone_limits

Zone = Literal["A", "B", "C", "D"]

# Zone -> alert level index (0 = no alert). C: plan maintenance; D: damage likely.
ZONE_LEVEL: dict[str, int] = {"A": 0, "B": 0, "C": 1, "D": 2}
LEVEL_NAMES: dict[int, Literal["info", "warning", "critical"]] = {
    0: "info",
    1: "warning",
    2: "critical",
}


@dataclass(frozen=True, slots=True)
class ZoneTable:
    """Velocity RMS boundaries (mm/s) and the name of the standard they come from."""

    ab: float
    bc: float
    cd: float
    standard: str

    def zone(self, velocity_rms_mm_s: float) -> Zone:
        """The zone of a velocity RMS value (boundary values belong to the upper zone)."""
        v = velocity_rms_mm_s
        if v >= self.cd:
            return "D"
        if v >= self.bc:
            return "C"
        if v >= self.ab:
            return "B"
        return "A"

    def threshold_for(self, zone: str) -> float:
        """The lower boundary of a zone (B, C or D)."""
        return {"B": self.ab, "C": self.bc, "D": self.cd}[zone]


def zone_table(machine: Iso10816_3 | Iso10816_1 | ExplicitLimits) -> ZoneTable:
    """The zone boundaries for a configured machine (tables in agent.config._zones)."""
    lim = zone_limits(machine)
    return ZoneTable(lim.ab, lim.bc, lim.cd, standard_label(machine))


def iso_alarm_level(baseline_mm_s: float, bc_boundary_mm_s: float) -> float:
    """ISO 20816-1 alarm level for velocity RMS from a machine's own baseline.

    Args:
        baseline_mm_s: the machine's baseline velocity RMS, mm/s.
        bc_boundary_mm_s: the zone B/C boundary of the applicable standard, mm/s.

    Returns:
        min(baseline + 0.25 x B/C, 1.25 x B/C).
    """
    return min(baseline_mm_s + 0.25 * bc_boundary_mm_s, 1.25 * bc_boundary_mm_s)


def velocity_band_hz(rpm: float) -> tuple[float, float]:
    """The velocity RMS band ISO prescribes: 2-1000 Hz at or below 600 rpm, else 10-1000 Hz."""
    return (2.0, 1000.0) if rpm <= 600 else (10.0, 1000.0)


# Periods of the band's lowest frequency a waveform must span for its velocity RMS to be a
# measurement (a 0.1 s record resolves 10 Hz bins only: 10 Hz content is one period).
MIN_PERIODS_FOR_VELOCITY = 4


def velocity_resolved(features: Mapping[str, float]) -> bool:
    """Whether a reading's velocity RMS covers the ISO band.

    Smart sensors measure velocity over the band themselves (no marker); features computed
    from a waveform carry velocity_band_periods, which must reach MIN_PERIODS_FOR_VELOCITY.
    Velocity alarms that are not measurements stay off.
    """
    return features.get(VELOCITY_BAND_PERIODS, math.inf) >= MIN_PERIODS_FOR_VELOCITY


def velocity_unresolved_reason(periods: float, band_hz: tuple[float, float]) -> str:
    """Why a velocity RMS is no ISO measurement: its waveform spans `periods` periods of the
    band's lowest frequency, fewer than MIN_PERIODS_FOR_VELOCITY."""
    return (
        f"not measured: the {band_hz[0]:g}-{band_hz[1]:g} Hz velocity band is not resolved "
        f"(the waveform spans {periods:.2g} period(s) of {band_hz[0]:g} Hz; ISO severity needs "
        f"at least {MIN_PERIODS_FOR_VELOCITY}), so no ISO zone or severity alert comes from it"
    )
