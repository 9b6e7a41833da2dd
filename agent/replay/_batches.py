"""A recording's snapshots with their features, computed a batch of snapshots at a time.

The features of one snapshot are those the live agent computes for its waveform
(agent.analysis.channel.asset_waveform_features), computed for BATCH snapshots in one call
per channel (a FEMTO bearing's replay: 2.1 s instead of 2.4 s, benchmarks/README.md). A
snapshot's features do not depend on the batch it is in, so a replay cut with --limit
gives the same numbers as the full one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from agent.analysis.channel import asset_waveform_features
from agent.config import Asset
from agent.replay._inputs import Snapshot

__all__ = ["BATCH", "with_features"]

# Snapshots per batch. Small on purpose: a batch's temporaries (4 x 2560 samples, 80 KB)
# stay under glibc malloc's mmap threshold (128 KB) and are reused; at 64 every temporary
# was fresh memory from the kernel, and the page faults (0.5 s of system time for a FEMTO
# bearing) ate the saving.
BATCH = 4


def with_features(
    snaps: Iterable[Snapshot], asset: Asset
) -> Iterator[tuple[Snapshot, dict[str, dict[str, float]]]]:
    """Each snapshot, in order, with its channels' features."""
    batch: list[Snapshot] = []
    for snap in snaps:
        if batch and _shape(snap) != _shape(batch[0]):
            yield from _computed(batch, asset)
            batch = []
        batch.append(snap)
        if len(batch) == BATCH:
            yield from _computed(batch, asset)
            batch = []
    yield from _computed(batch, asset)


def _shape(snap: Snapshot) -> tuple[object, ...]:
    """What must agree for snapshots to go in one batch: rate, channels, sample counts."""
    return (snap.fs_hz, *((ch, len(s)) for ch, s in snap.channels.items()))


def _computed(
    batch: list[Snapshot], asset: Asset
) -> Iterator[tuple[Snapshot, dict[str, dict[str, float]]]]:
    if not batch:
        return
    per_channel = {
        ch: asset_waveform_features(
            asset, np.stack([s.channels[ch] for s in batch]), batch[0].fs_hz
        )
        for ch in batch[0].channels
    }
    for i, snap in enumerate(batch):
        yield snap, {ch: feats[i] for ch, feats in per_channel.items()}
