"""`edge-agent replay`: feed recorded waveforms through the agent's own Monitor.

Inputs:
- a FEMTO/PRONOSTIA .npz file (keys acc int16 (N, n, 2), scale_g, t_s, fs_hz; channels
  "h" and "v"), see ../shared/data/femto/README.md;
- a folder of CSV snapshots: one file per snapshot, read in name order. First line: the
  channel names, comma separated (e.g. `h,v` or `x,y,z`); then one row per sample, one
  column per channel, acceleration in g. Optional comment lines before the header set the
  snapshot's metadata: `# fs_hz=25600` and `# timestamp=2026-01-01T00:00:10Z`. Without
  them --fs-hz and --start + i x --interval-s are used.

Output (stdout, JSON Lines): every alert record as the agent would send it (seq from 1,
gateway id "replay" unless -c gives one), then one record per channel with
"kind": "estimate" carrying severity, progression and time_to_failure (or
no_estimate_reason) as of the last snapshot. The recording's own clock drives the analysis.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from agent.analysis.monitor import Monitor
from agent.config import Config, ConfigError, load_config
from agent.records import dumps, format_ts
from drivers.reading import Reading, Waveform

EXIT_USAGE = 2
_NPZ_CHANNELS = ("h", "v")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `edge-agent replay`."""
    parser.description = __doc__.split("\n\n", 1)[1] if __doc__ else None
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("input", type=Path, help="a .npz recording or a folder of CSV snapshots")
    parser.add_argument("-c", "--config", type=Path, help="asset configuration (YAML)")
    parser.add_argument("--asset", help="asset id in the configuration (default: the first)")
    g = parser.add_argument_group("without -c")
    g.add_argument("--rpm", type=float, default=1800.0, help="shaft speed (default 1800)")
    g.add_argument("--iso-group", type=int, choices=(1, 2), default=2,
                   help="ISO 10816-3 machine group (default 2)")  # fmt: skip
    g.add_argument("--foundation", choices=("rigid", "flexible"), default="rigid")
    g.add_argument(
        "--balls", type=int, help="bearing rolling elements (with --ball-mm, --pitch-mm)"
    )
    g.add_argument("--ball-mm", type=float)
    g.add_argument("--pitch-mm", type=float)
    g.add_argument("--contact-deg", type=float, default=0.0)
    g.add_argument("--failure-metric", default="velocity_rms_mm_s",
                   help="feature that defines failure, e.g. accel_peak_g")  # fmt: skip
    g.add_argument("--failure-threshold", type=float,
                   help="failure value of that metric (default: the ISO C/D boundary)")  # fmt: skip
    g.add_argument("--planning-horizon-hours", type=float, default=168.0)
    g.add_argument("--baseline-readings", type=int, default=60)
    c = parser.add_argument_group("CSV snapshots")
    c.add_argument("--fs-hz", type=float, help="sampling rate when a file has no # fs_hz=")
    c.add_argument("--start", default="2026-01-01T00:00:00Z",
                   help="time of the first snapshot (also for .npz t_s = 0)")  # fmt: skip
    c.add_argument("--interval-s", type=float, default=10.0,
                   help="time between snapshots without # timestamp= (default 10)")  # fmt: skip
    parser.add_argument("--limit", type=int, help="replay at most N snapshots")


def _config(args: argparse.Namespace) -> tuple[Config, str, str]:
    """(config, gateway id, sensor id)."""
    if args.config is not None:
        cfg = load_config(args.config)
        asset = cfg.asset(args.asset) if args.asset else cfg.assets[0]
        sensors = [s for s in cfg.sensors if s.asset == asset.id]
        if not sensors:
            raise ValueError(f"asset {asset.id!r} has no sensor in {args.config}")
        return cfg, cfg.gateway.id, sensors[0].id
    asset: dict[str, Any] = {
        "id": args.asset or "replay",
        "name": "replay",
        "machine": {
            "standard": "iso10816-3",
            "group": args.iso_group,
            "foundation": args.foundation,
            "rpm": args.rpm,
        },
        "failure": {"metric": args.failure_metric, "threshold": args.failure_threshold},
        "planning_horizon_hours": args.planning_horizon_hours,
        "alerting": {"baseline_readings": args.baseline_readings},
    }
    if args.balls is not None:
        asset["bearing"] = {"balls": args.balls, "ball_mm": args.ball_mm,
                            "pitch_mm": args.pitch_mm, "contact_deg": args.contact_deg}  # fmt: skip
    cfg = Config.model_validate(
        {
            "gateway": {"id": "replay"},
            "assets": [asset],
            "sensors": [{"id": "replay", "asset": asset["id"], "modbus": {"host": "127.0.0.1"}}],
            "store": {"path": "/nonexistent/replay.db"},  # replay never opens a store
        }
    )
    return cfg, "replay", "replay"


def _parse_start(text: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def npz_snapshots(path: Path, start: datetime) -> Iterator[tuple[datetime, float, dict]]:
    """(timestamp, fs_hz, channel -> samples in g) per snapshot of a FEMTO .npz."""
    with np.load(path) as data:
        acc, scale = data["acc"], float(data["scale_g"])
        t_s, fs = np.asarray(data["t_s"], dtype=np.float64), float(data["fs_hz"])
    for i in range(acc.shape[0]):
        at = start + timedelta(seconds=float(t_s[i]))
        yield at, fs, {ch: acc[i, :, k] * scale for k, ch in enumerate(_NPZ_CHANNELS)}


def csv_snapshots(
    folder: Path, start: datetime, interval_s: float, fs_hz: float | None
) -> Iterator[tuple[datetime, float, dict]]:
    """(timestamp, fs_hz, channel -> samples in g) per CSV file of a folder, in name order."""
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise ValueError(f"no *.csv files in {folder}")
    for i, f in enumerate(files):
        meta: dict[str, str] = {}
        with f.open() as fh:
            line = fh.readline()
            while line.startswith("#"):
                k, _, v = line[1:].partition("=")
                meta[k.strip()] = v.strip()
                line = fh.readline()
            names = [n.strip() for n in line.split(",")]
            data = np.loadtxt(fh, delimiter=",", ndmin=2)
        fs = float(meta["fs_hz"]) if "fs_hz" in meta else fs_hz
        if fs is None:
            raise ValueError(f"{f}: no '# fs_hz=' line and no --fs-hz")
        at = _parse_start(meta["timestamp"]) if "timestamp" in meta else (
            start + timedelta(seconds=i * interval_s)
        )  # fmt: skip
        yield at, fs, {n: data[:, k] for k, n in enumerate(names)}


def replay(args: argparse.Namespace, out: Any = sys.stdout) -> int:
    """Run the replay; writes JSON Lines to `out`. Returns the number of alert records."""
    cfg, gateway, sensor = _config(args)
    start = _parse_start(args.start)
    src = Path(args.input)
    snaps = (
        npz_snapshots(src, start)
        if src.suffix == ".npz"
        else csv_snapshots(src, start, args.interval_s, args.fs_hz)
    )
    monitor = Monitor(cfg)
    seq = 0
    channels: list[str] = []
    for n, (at, fs, chans) in enumerate(snaps):
        if args.limit is not None and n >= args.limit:
            break
        for ch, samples in chans.items():
            if ch not in channels:
                channels.append(ch)
            r = Reading(sensor, ch, at, {}, transport="replay", waveform=Waveform(samples, fs))
            for draft in monitor.update(r).drafts:
                seq += 1
                out.write(dumps(draft.record(gateway_id=gateway, seq=seq)) + "\n")
    for ch in channels:
        cur = monitor.current(sensor, ch)
        view = next((v for v in monitor.views() if v.sensor_id == sensor and v.channel == ch), None)
        if cur is None or view is None:
            continue
        sev, prog, ttf, reason = cur
        rec: dict[str, Any] = {
            "kind": "estimate",
            "gateway_id": gateway,
            "asset": {"id": view.asset_id},
            "sensor": {"id": sensor, "channel": ch, "transport": "replay"},
            "at": format_ts(view.at),
            "severity": _asdict(sev),
            "progression": _asdict(prog),
            "time_to_failure": _asdict(ttf),
            "health_index": view.health_index,
        }
        if reason is not None:
            rec["no_estimate_reason"] = reason
        out.write(dumps(rec) + "\n")
    out.flush()
    return seq


def _asdict(obj: Any) -> dict[str, Any] | None:
    from dataclasses import asdict

    return None if obj is None else asdict(obj)


def run(args: argparse.Namespace) -> int:
    """Entry point of `edge-agent replay`: 0 on success, 2 on a bad input or config."""
    try:
        replay(args)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError, KeyError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0
