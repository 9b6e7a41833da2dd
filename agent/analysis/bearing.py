"""Rolling-element bearing fault frequencies from geometry and shaft speed."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BearingGeometry:
    """Geometry of a rolling-element bearing.

    Attributes:
        balls: number of rolling elements.
        ball_mm: rolling element diameter, mm.
        pitch_mm: pitch (cage) diameter, mm.
        contact_deg: contact angle, degrees (0 for deep-groove radial bearings).
    """

    balls: int
    ball_mm: float
    pitch_mm: float
    contact_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.balls < 3:
            raise ValueError(f"balls must be >= 3, got {self.balls}")
        if not 0.0 < self.ball_mm < self.pitch_mm:
            raise ValueError(
                f"need 0 < ball_mm < pitch_mm, got ball_mm={self.ball_mm} pitch_mm={self.pitch_mm}"
            )
        if not 0.0 <= self.contact_deg < 90.0:
            raise ValueError(f"contact_deg must be in [0, 90), got {self.contact_deg}")


# PRONOSTIA / FEMTO bench bearing (IEEE PHM 2012 data set).
FEMTO_BEARING = BearingGeometry(balls=13, ball_mm=3.5, pitch_mm=25.6, contact_deg=0.0)


def fault_frequencies(shaft_hz: float, geometry: BearingGeometry) -> dict[str, float]:
    """Kinematic fault frequencies of a bearing with a stationary outer race.

    Args:
        shaft_hz: shaft (inner race) rotation frequency, Hz.
        geometry: the bearing's geometry.

    Returns:
        Frequencies in Hz under keys "ftf" (cage), "bsf" (ball spin, once per
        revolution of the ball), "bpfo" (ball pass, outer race) and "bpfi" (ball pass,
        inner race).
    """
    if shaft_hz <= 0.0:
        raise ValueError(f"shaft_hz must be > 0, got {shaft_hz}")
    ratio = geometry.ball_mm / geometry.pitch_mm * math.cos(math.radians(geometry.contact_deg))
    half = shaft_hz / 2.0
    return {
        "ftf": half * (1.0 - ratio),
        "bsf": shaft_hz * geometry.pitch_mm / (2.0 * geometry.ball_mm) * (1.0 - ratio * ratio),
        "bpfo": geometry.balls * half * (1.0 - ratio),
        "bpfi": geometry.balls * half * (1.0 + ratio),
    }
