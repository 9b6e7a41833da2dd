"""The options of `edge-agent replay`, checked like `edge-agent check` checks a file.

Every flag ends up in the same pydantic models as the YAML; a bad value is reported as a
one-line message naming the flag, what was given and what is expected (with the list of
valid names for a metric), never as pydantic's own output.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.analysis.ttf import POINT_TAIL
from agent.config import Config
from agent.replay._inputs import parse_start, rate_problem
from drivers.reading import FEATURE_NAMES, TEMPERATURE

__all__ = ["FAILURE_METRICS", "ArgumentError", "add_arguments", "build_config"]

# What a waveform gives (no temperature): the metrics failure can be defined on.
FAILURE_METRICS = tuple(sorted(FEATURE_NAMES - {TEMPERATURE}))

# Where each flag lands in the configuration, for the messages.
_FLAG_OF = {
    ("machine", "rpm"): "--rpm",
    ("machine", "group"): "--iso-group",
    ("machine", "foundation"): "--foundation",
    ("bearing", "balls"): "--balls",
    ("bearing", "ball_mm"): "--ball-mm",
    ("bearing", "pitch_mm"): "--pitch-mm",
    ("bearing", "contact_deg"): "--contact-deg",
    ("bearing",): "--balls/--ball-mm/--pitch-mm",
    ("failure", "metric"): "--failure-metric",
    ("failure", "threshold"): "--failure-threshold",
    ("planning_horizon_hours",): "--planning-horizon-hours",
    ("alerting", "baseline_readings"): "--baseline-readings",
    ("reliability", "lives_hours"): "--prior-life-hours",
    ("reliability", "age_hours"): "--age-hours",
    ("reliability",): "--prior-life-hours/--age-hours",
}


# The options of the "machine (without -c)" group, by dest: with -c the asset is the file's.
_MACHINE_FLAGS = {
    "rpm": "--rpm",
    "iso_group": "--iso-group",
    "foundation": "--foundation",
    "balls": "--balls",
    "ball_mm": "--ball-mm",
    "pitch_mm": "--pitch-mm",
    "contact_deg": "--contact-deg",
    "failure_metric": "--failure-metric",
    "failure_threshold": "--failure-threshold",
    "planning_horizon_hours": "--planning-horizon-hours",
    "baseline_readings": "--baseline-readings",
}


class ArgumentError(ValueError):
    """A bad option value; the message is one line for the user."""


class _Once(argparse.Action):
    """argparse's "store" that refuses a second value: argparse keeps the last without a
    word (--rpm 1800 ... --rpm 1500 would replay at 1500), as YAML does with a key given
    twice, which `check` refuses too."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given: dict[str, Any] = namespace.__dict__.setdefault("_given_once", {})
        if self.dest in given:
            raise argparse.ArgumentError(
                self, f"given twice ({given[self.dest]}, then {values}); give it once"
            )
        given[self.dest] = values
        setattr(namespace, self.dest, values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `edge-agent replay`."""
    for name in (None, "store"):  # the default action of every option below: given once
        parser.register("action", name, _Once)
    parser.add_argument("input", type=Path, help="a .npz recording or a folder of CSV files")
    parser.add_argument("-c", "--config", type=Path, help="asset configuration (YAML)")
    parser.add_argument("--asset", help="asset id in the configuration (default: the first)")
    g = parser.add_argument_group("the machine (without -c)")
    g.add_argument("--rpm", type=float, default=1800.0, help="shaft speed (default 1800)")
    g.add_argument("--iso-group", type=int, default=2, help="ISO 10816-3 group, 1 or 2 (default 2)")
    g.add_argument("--foundation", default="rigid", help="rigid (default) or flexible")
    g.add_argument(
        "--balls", type=int, help="bearing rolling elements (with --ball-mm, --pitch-mm)"
    )
    g.add_argument("--ball-mm", type=float)
    g.add_argument("--pitch-mm", type=float)
    g.add_argument("--contact-deg", type=float, default=0.0)
    g.add_argument(
        "--failure-metric",
        default="velocity_rms_mm_s",
        help="feature that defines failure, e.g. accel_peak_g",
    )
    g.add_argument(
        "--failure-threshold",
        type=float,
        help="failure value of that metric (default: the ISO C/D boundary)",
    )
    g.add_argument("--planning-horizon-hours", type=float, default=168.0)
    g.add_argument("--baseline-readings", type=int, default=60)
    r = parser.add_argument_group("reliability prior (with or without -c)")
    r.add_argument(
        "--prior-life-hours",
        metavar="H1,H2,...",
        help="completed lives of comparable machines, hours (the YAML's "
        "reliability.lives_hours); gives an estimate at every stage",
    )
    r.add_argument(
        "--age-hours",
        type=float,
        help="the machine's age at the first snapshot, hours, with a prior (default: -c's "
        "age, else 0)",
    )
    r.add_argument(
        "--point-tail",
        type=float,
        default=POINT_TAIL,
        metavar="SHARE",
        help="the estimate is the geometric mean of the remaining time over this lowest share "
        f"of its posterior (default {POINT_TAIL:g}: about the remaining L10; 0.5 or more is "
        "less conservative)",
    )
    c = parser.add_argument_group("CSV snapshots")
    c.add_argument("--fs-hz", type=float, help="sampling rate when a file has no # fs_hz=")
    c.add_argument(
        "--start",
        default="2026-01-01T00:00:00Z",
        help="time of the first snapshot, ISO-8601, UTC without an offset (the date of a "
        "PRONOSTIA folder); default 2026-01-01T00:00:00Z",
    )
    c.add_argument(
        "--interval-s",
        type=float,
        default=10.0,
        help="time between snapshots without # timestamp= (default 10)",
    )
    parser.add_argument(
        "--limit", type=int, help="only the first N snapshots, as if the recording stopped there"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="OUT.png",
        help="draw the health index and the estimate with its bounds against time, as PNG "
        "(or SVG, PDF... by the suffix; needs matplotlib, the plot extra: "
        "pip install -e '.[plot]' in the checkout)",
    )


def _lives(text: str) -> list[float]:
    # An empty item ('1,,2', '2.4,') is a life lost on the way (an unset shell variable, a
    # cut paste): refused, not dropped, so the prior is never built on fewer lives unsaid.
    try:
        lives = [float(x) for x in text.split(",")]
    except ValueError:
        lives = []
    if not lives or not all(math.isfinite(x) and x > 0 for x in lives):
        raise ArgumentError(
            f"--prior-life-hours {text!r}: expected completed lives in hours, comma-separated "
            "and each greater than 0, e.g. 2.4,7.8"
        )
    return lives


def _check_plain(args: argparse.Namespace) -> None:
    """Flags that never reach the configuration models."""
    if args.age_hours is not None and not math.isfinite(args.age_hours):
        raise ArgumentError(f"--age-hours {args.age_hours:g}: expected a finite number of hours")
    if args.limit is not None and args.limit < 1:
        raise ArgumentError(f"--limit {args.limit}: expected at least 1 snapshot")
    if not (math.isfinite(args.point_tail) and 0.0 < args.point_tail <= 1.0):
        raise ArgumentError(f"--point-tail {args.point_tail:g}: expected a share in (0, 1]")
    if args.interval_s is not None and not (math.isfinite(args.interval_s) and args.interval_s > 0):
        raise ArgumentError(f"--interval-s {args.interval_s:g}: expected a number greater than 0")
    if args.fs_hz is not None and (problem := rate_problem(args.fs_hz)) is not None:
        raise ArgumentError(f"--fs-hz {args.fs_hz:g}: {problem}")
    try:
        parse_start(args.start)
    except ValueError:
        raise ArgumentError(
            f"--start {args.start!r}: expected an ISO-8601 time, e.g. 2026-01-01T00:00:00Z"
        ) from None
    if args.failure_metric not in FAILURE_METRICS:
        from agent.config._messages import did_you_mean  # only on this error: a slow import

        raise ArgumentError(
            f"--failure-metric {args.failure_metric!r}: unknown metric; valid names: "
            f"{', '.join(FAILURE_METRICS)}" + did_you_mean(args.failure_metric, FAILURE_METRICS)
        )
    geometry = (args.balls, args.ball_mm, args.pitch_mm)
    if any(x is not None for x in geometry) and any(x is None for x in geometry):
        raise ArgumentError("--balls, --ball-mm and --pitch-mm go together: give all three")


def _check_with_config(args: argparse.Namespace) -> None:
    """With -c, a machine flag would be dropped without a word (the asset is the file's):
    refuse it, naming the first one given."""
    if args.config is None:
        return
    given = getattr(args, "_given_once", {})  # what _Once saw on the command line
    flag = next((_MACHINE_FLAGS[d] for d in given if d in _MACHINE_FLAGS), None)
    if flag is not None:
        raise ArgumentError(
            f"{flag} applies without -c only; with -c the asset's machine, failure and "
            f"alerting come from {args.config} (set it there, or drop -c)"
        )


def _message(err: Any, asset: dict[str, Any]) -> str:
    """One line for one pydantic error on the replay's asset."""
    tags = ("iso10816-3", "iso10816-1", "limits")  # union tags pydantic puts in the path
    loc = tuple(x for x in err["loc"] if not isinstance(x, int) and x not in tags)
    loc = loc[1:] if loc[:1] == ("assets",) else loc
    flag = next((f for k, f in _FLAG_OF.items() if loc[: len(k)] == k), None)
    value: Any = asset
    for part in loc:
        value = value.get(part) if isinstance(value, dict) else None
    msg = str(err["msg"]).removeprefix("Value error, ")
    msg = "expected " + msg.removeprefix("Input should be ") if msg.startswith("Input") else msg
    if flag is None:
        return f"{'.'.join(map(str, loc))}: {msg}"
    shown = "" if isinstance(value, dict) or value is None else f" {value}"
    return f"{flag}{shown}: {msg}"


def build_config(args: argparse.Namespace) -> tuple[Config, str, str]:
    """(config, gateway id, sensor id) of the replay, from -c or from the flags.

    Raises:
        ArgumentError: a bad flag (one line).
        ConfigError: a bad configuration file (every issue, file:line:col).
    """
    _check_with_config(args)
    _check_plain(args)
    flags: dict[str, Any] = {}
    if args.prior_life_hours is not None:
        flags["lives_hours"] = _lives(args.prior_life_hours)
    if args.age_hours is not None:
        flags["age_hours"] = args.age_hours
    if args.config is not None:
        from agent.config import load_config  # with -c only: yaml and the checks load slowly

        cfg = load_config(args.config)
        try:
            asset = cfg.asset(args.asset) if args.asset else cfg.assets[0]
        except KeyError:
            known = ", ".join(a.id for a in cfg.assets)
            raise ArgumentError(
                f"--asset {args.asset!r}: not in {args.config}; assets: {known}"
            ) from None
        sensors = [s for s in cfg.sensors if s.asset == asset.id]
        if not sensors:
            raise ArgumentError(f"asset {asset.id!r} has no sensor in {args.config}")
        if flags:
            data = cfg.model_dump(by_alias=True)
            i = [a.id for a in cfg.assets].index(asset.id)
            rel = _with_flags(data["assets"][i].get("reliability") or {}, flags, args.config)
            data["assets"][i]["reliability"] = rel
            cfg = _validate(data, data["assets"][i])
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
        asset["bearing"] = {
            "balls": args.balls,
            "ball_mm": args.ball_mm,
            "pitch_mm": args.pitch_mm,
            "contact_deg": args.contact_deg,
        }
    if flags:
        asset["reliability"] = _with_flags({}, flags, None)
    data = {
        "gateway": {"id": "replay"},
        "assets": [asset],
        "sensors": [{"id": "replay", "asset": asset["id"], "modbus": {"host": "127.0.0.1"}}],
        "store": {"path": "/nonexistent/replay.db"},  # replay never opens a store
    }
    return _validate(data, asset), "replay", "replay"


_PRIORS = ("lives_hours", "weibull", "l10_hours")
_AGES = ("age_hours", "installed_at")


def _with_flags(rel: dict[str, Any], flags: dict[str, Any], config: Path | None) -> dict[str, Any]:
    """The asset's reliability with each flag replacing only its own part: --prior-life-hours
    the file's life prior (lives_hours, weibull or l10_hours), --age-hours its age
    (age_hours or installed_at); class and shape stay. An age without a prior is refused: it
    would be dropped without a word (the estimate needs a prior to age)."""
    out = dict(rel)
    if "lives_hours" in flags:
        out.update(dict.fromkeys(_PRIORS), lives_hours=flags["lives_hours"])
        if not any(out.get(k) is not None for k in _AGES):
            out["age_hours"] = 0.0  # the recording starts with a new part
    if "age_hours" in flags:
        out.update(dict.fromkeys(_AGES), age_hours=flags["age_hours"])
        if not any(out.get(k) for k in _PRIORS):
            where = "" if config is None else f" and the asset in {config} has none"
            raise ArgumentError(
                f"--age-hours {flags['age_hours']:g}: an age needs a life prior{where}; give "
                "--prior-life-hours too (completed lives of comparable machines, e.g. 2.4,7.8)"
            )
    return out


def _validate(data: dict[str, Any], asset: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ArgumentError(_message(exc.errors()[0], asset)) from None
