"""The record every driver produces: one sensor channel at one instant."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np

Quality = Literal["good", "uncertain", "bad"]
Transport = Literal["modbus", "modbus-rtu", "mqtt", "replay"]

# Canonical feature names. Smart sensors (QM30VT2, NCD) and the agent's own waveform
# analysis use the same names, so one monitor serves both.
VELOCITY_RMS = "velocity_rms_mm_s"
VELOCITY_PEAK = "velocity_peak_mm_s"
ACCEL_RMS = "accel_rms_g"
ACCEL_PEAK = "accel_peak_g"
HF_ACCEL_RMS = "hf_accel_rms_g"
KURTOSIS = "kurtosis"
CREST_FACTOR = "crest_factor"
TEMPERATURE = "temperature_c"
PEAK_FREQUENCY = "peak_frequency_hz"
ENVELOPE_BPFO = "envelope_bpfo_g"
ENVELOPE_BPFI = "envelope_bpfi_g"
ENVELOPE_BSF = "envelope_bsf_g"
ENVELOPE_FTF = "envelope_ftf_g"

FEATURE_NAMES: frozenset[str] = frozenset(
    {
        VELOCITY_RMS,
        VELOCITY_PEAK,
        ACCEL_RMS,
        ACCEL_PEAK,
        HF_ACCEL_RMS,
        KURTOSIS,
        CREST_FACTOR,
        TEMPERATURE,
        PEAK_FREQUENCY,
        ENVELOPE_BPFO,
        ENVELOPE_BPFI,
        ENVELOPE_BSF,
        ENVELOPE_FTF,
    }
)


@dataclass(frozen=True, slots=True)
class Waveform:
    """Raw acceleration samples of one channel, in g."""

    samples: np.ndarray
    fs_hz: float


@dataclass(frozen=True, slots=True)
class Reading:
    """One channel of one sensor at one instant: features, a waveform, or both.

    Attributes:
        sensor_id: the sensor's id from the configuration.
        channel: axis or channel name ("x", "y", "z", "h", "v"...).
        timestamp: UTC time of the measurement (aware datetime).
        features: canonical feature name -> value (see FEATURE_NAMES).
        transport: where the reading came from.
        quality: "good", or "uncertain"/"bad" when the sensor flagged it.
        waveform: raw samples when the sensor sent them; the monitor computes features.
        flags: why the reading is not "good": ``feature:reason`` entries (reason one of
            sentinel, out_of_range, not_finite, all_zero, saturated); flagged values are left out of
            ``features``, so garbage never reaches severity or trend.
        mono_s: ``time.monotonic()`` when it was read, for durations (a wall clock stepped
            by NTP must not stretch or shrink a hold); None when the timestamp is the only
            clock (a recording, a sensor's own time).
    """

    sensor_id: str
    channel: str
    timestamp: datetime
    features: Mapping[str, float] = field(default_factory=dict)
    transport: Transport = "modbus"
    quality: Quality = "good"
    waveform: Waveform | None = None
    flags: tuple[str, ...] = ()
    mono_s: float | None = None

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is None:
            raise ValueError("Reading.timestamp must be timezone-aware (UTC)")


def utc_now() -> datetime:
    """The current time, UTC, aware."""
    return datetime.now(UTC)
