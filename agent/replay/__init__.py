"""`edge-agent replay`: feed a recording through the agent's own Monitor and tell its story.

Inputs: a FEMTO/PRONOSTIA .npz file (keys acc, scale_g, t_s, fs_hz); a folder in the
original PRONOSTIA CSV layout (acc_NNNNN.csv, no header, one row per sample: hour, minute,
second, microsecond, horizontal g, vertical g; the snapshot's time is its first row's, on
the date of --start); or a folder of CSV snapshots, one per file in name order, whose first
line names the channels (e.g. h,v) and whose optional comment lines set "# fs_hz=25600" and
"# timestamp=2026-01-01T00:00:10Z". A header-less CSV of another shape is an error.

Output (stdout, JSON Lines), all from the recording's own clock:
- every alert record as the agent would send it (seq from 1, gateway id "replay" unless -c
  gives one);
- one record per channel with "kind": "estimate": severity, progression and time to failure
  (with the basis of its model) as of the last snapshot, or the reason there is none;
- one "kind": "summary" line: the first alert and its lead time to the end of the
  recording, the asset's time to failure (its shortest channel), the flap counts and the
  estimates over time per channel (time, hours, bounds, model, health index).
With --prior-life-hours (and --age-hours) the asset has a reliability prior, so every cut of
a recording gets an estimate with bounds. Snapshots whose time does not advance, and a
channel's samples that are NaN, inf, beyond 1e6 g or flat (a dropout, a dead sensor), are
skipped, counted in the summary and told on stderr in one line. Exit status 2 on a bad
option, recording or configuration (one line each); a recording found damaged part way (a
bad CSV file, a .npz whose data fails its checksum) ends the output there, without summary.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from agent.analysis.monitor import Monitor, Tuning
from agent.analysis.ttf import PosteriorTuning
from agent.config import ConfigError
from agent.records import dumps, format_ts
from agent.replay import _args
from agent.replay._args import ArgumentError, build_config
from agent.replay._inputs import RecordingError, Snapshot, parse_start, snapshots
from agent.replay._story import PlotError, Story, plot, plot_format
from drivers.reading import Reading, Waveform

__all__ = ["add_arguments", "replay", "run"]

EXIT_USAGE = 2
# No accelerometer reads more; a larger value is a corrupt sample (and overflows the spectra).
_MAX_G = 1e6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options and help text of `edge-agent replay`."""
    _args.add_arguments(parser)
    parser.description = __doc__.split("\n\n", 1)[1] if __doc__ else None
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def replay(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run the replay; writes JSON Lines to `out`. Returns the number of alert records.

    Raises:
        ArgumentError, ConfigError, RecordingError, PlotError: bad input (see run()).
    """
    cfg, gateway, sensor = build_config(args)
    if args.plot is not None:
        plot_format(args.plot)  # a bad --plot path is told now, not after the whole replay
    tuning = Tuning(posterior=PosteriorTuning(point_tail=args.point_tail))
    monitor = Monitor(cfg, tuning=tuning, persist=False)  # a replay keeps nothing
    story = Story(next(s.asset for s in cfg.sensors if s.id == sensor))
    seq = 0
    channels: list[str] = []
    source = snapshots(
        Path(args.input),
        start=parse_start(args.start),
        interval_s=args.interval_s,
        fs_hz=args.fs_hz,
    )
    for snap in _usable(_advancing(source, args.limit, story), story):
        story.snapshot(snap.at)
        for ch, samples in snap.channels.items():
            if ch not in channels:
                channels.append(ch)
            wave = Waveform(samples, snap.fs_hz)
            r = Reading(sensor, ch, snap.at, {}, transport="replay", waveform=wave)
            for draft in monitor.update(r).drafts:
                seq += 1
                rec = draft.record(gateway_id=gateway, seq=seq)
                story.alert(rec)
                out.write(dumps(rec) + "\n")
        story.estimates(monitor.views())
    final = [_estimate_record(monitor, gateway, sensor, ch) for ch in channels]
    final = [r for r in final if r is not None]
    for rec in final:
        out.write(dumps(rec) + "\n")
    flaps = {v.channel: {"severity": v.flaps[0], "trend": v.flaps[1]} for v in monitor.views()}
    summary = story.summary(final, flaps)
    out.write(dumps(summary) + "\n")
    out.flush()
    note = story.skipped_note()
    if note is not None:
        print(f"replay: note: {note}", file=sys.stderr)
    if args.plot is not None:
        plot(summary, args.plot)
    return seq


def _advancing(source: Iterator[Snapshot], limit: int | None, story: Story) -> Iterator[Snapshot]:
    """The first `limit` snapshots (as if the recording stopped there), less those whose time
    does not advance (a recording's clock glitch: skipped and counted)."""
    last = None
    for n, snap in enumerate(source):
        if limit is not None and n >= limit:
            break
        if last is not None and snap.at <= last:
            story.skip("time does not advance", snap.source)
            continue
        last = snap.at
        yield snap


def _usable(source: Iterator[Snapshot], story: Story) -> Iterator[Snapshot]:
    """Each snapshot less its channels whose samples are no measurement (skipped, counted
    and told); a snapshot left without a channel is not analysed at all."""
    for snap in source:
        kept = {}
        for ch, samples in snap.channels.items():
            unusable = _unusable(samples)
            if unusable is None:
                kept[ch] = samples
            else:
                story.skip(f"{unusable} ({ch})", snap.source)
        if len(kept) == len(snap.channels):
            yield snap
        elif kept:
            yield replace(snap, channels=kept)


def _unusable(samples: np.ndarray) -> str | None:
    """Why a channel's samples are no measurement, or None. NaN or inf (a dropout, a
    corrupt file) would be skipped inside the analysis without a trace, and a flat record (a
    dead or unplugged sensor) would count as a quiet machine in the baseline."""
    lo, hi = float(samples.min()), float(samples.max())
    if not (lo >= -_MAX_G and hi <= _MAX_G):  # NaN fails both
        return f"samples not finite or beyond {_MAX_G:g} g"
    if lo == hi:
        return "flat samples"
    return None


def _estimate_record(
    monitor: Monitor, gateway: str, sensor: str, channel: str
) -> dict[str, Any] | None:
    cur = monitor.current(sensor, channel)
    view = next(
        (v for v in monitor.views() if v.sensor_id == sensor and v.channel == channel), None
    )
    if cur is None or view is None:
        return None
    sev, prog, ttf, reason = cur
    rec: dict[str, Any] = {
        "kind": "estimate",
        "gateway_id": gateway,
        "asset": {"id": view.asset_id},
        "sensor": {"id": sensor, "channel": channel, "transport": "replay"},
        "at": format_ts(view.at),
        "severity": asdict(sev),
        "progression": None if prog is None else asdict(prog),
        "time_to_failure": None if ttf is None else asdict(ttf),
        "health_index": view.health_index,
    }
    rec.update(monitor.estimate_basis(sensor, channel))
    if reason is not None:
        rec["no_estimate_reason"] = reason
    return rec


def run(args: argparse.Namespace) -> int:
    """Entry point of `edge-agent replay`: 0 on success, 2 on a bad input or config."""
    try:
        replay(args)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return EXIT_USAGE
    except (ArgumentError, RecordingError, PlotError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        raise  # `edge-agent replay ... | head -1`: the reader left; the CLI exits quietly
    except OSError as exc:
        print(f"replay: {exc.filename or args.input}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0
