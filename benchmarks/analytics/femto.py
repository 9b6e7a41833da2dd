"""Helpers for the FEMTO / PRONOSTIA run-to-failure bearings (IEEE PHM 2012 learning set).

The data stays in ../shared/data/femto (read-only); nothing is copied or cached into the repo.
Cite: P. Nectoux et al., "PRONOSTIA: An experimental platform for bearings accelerated
degradation tests", IEEE PHM 2012.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.analysis.bearing import FEMTO_BEARING
from agent.analysis.features import waveform_features

FEMTO_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "femto"
BEARINGS = ("Bearing1_1", "Bearing1_2", "Bearing2_1", "Bearing2_2", "Bearing3_1", "Bearing3_2")
SHAFT_RPM = {"1": 1800.0, "2": 1650.0, "3": 1500.0}
CHANNELS = ("h", "v")  # column 0 horizontal, column 1 vertical
FEATURES = (
    "accel_rms_g",
    "accel_peak_g",
    "crest_factor",
    "kurtosis",
    "velocity_rms_mm_s",
    "velocity_band_periods",
    "hf_accel_rms_g",
    "envelope_bpfo_g",
    "envelope_bpfi_g",
    "envelope_bsf_g",
    "envelope_ftf_g",
)


@dataclass(frozen=True)
class BearingRun:
    """Per-snapshot features of one bearing.

    Attributes:
        name: e.g. "Bearing1_1".
        t_s: snapshot times, seconds since the first snapshot.
        features: channel -> feature name -> array over snapshots.
        shaft_hz: shaft speed of the bearing's operating condition.
    """

    name: str
    t_s: np.ndarray
    features: dict[str, dict[str, np.ndarray]]
    shaft_hz: float

    @property
    def life_s(self) -> float:
        """Time of the last snapshot (failure: amplitude > 20 g)."""
        return float(self.t_s[-1])


def available(directory: Path = FEMTO_DIR) -> bool:
    """True when all six bearing files are present."""
    return all((directory / f"{b}.npz").exists() for b in BEARINGS)


def load_bearing(name: str, directory: Path = FEMTO_DIR, *, step: int = 1) -> BearingRun:
    """Load one bearing and compute every feature of every snapshot on both channels.

    Args:
        name: bearing name, e.g. "Bearing1_1".
        directory: folder holding the .npz files.
        step: keep every step-th snapshot (1 = all); the last snapshot is always kept.
    """
    with np.load(directory / f"{name}.npz") as data:
        acc = data["acc"]
        scale = float(data["scale_g"])
        t_s = np.asarray(data["t_s"], dtype=np.float64)
        fs = float(data["fs_hz"])
    idx = np.arange(0, acc.shape[0], step)
    if idx[-1] != acc.shape[0] - 1:
        idx = np.append(idx, acc.shape[0] - 1)
    shaft_hz = SHAFT_RPM[name[len("Bearing")]] / 60.0
    feats: dict[str, dict[str, np.ndarray]] = {}
    for col, ch in enumerate(CHANNELS):
        rows = [
            waveform_features(
                acc[i, :, col].astype(np.float64) * scale,
                fs,
                shaft_hz=shaft_hz,
                bearing=FEMTO_BEARING,
            )
            for i in idx
        ]
        feats[ch] = {k: np.array([r[k] for r in rows]) for k in FEATURES}
    return BearingRun(name=name, t_s=t_s[idx], features=feats, shaft_hz=shaft_hz)
