"""`edge-agent`: run, check, demo, status, alerts, replay."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.config import Config

EXIT_CONFIG = 2


def _load(path: Path) -> Config | None:
    """The configuration, or None after printing every issue to stderr."""
    from agent.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return None


def _cmd_run(args: argparse.Namespace) -> int:
    from agent.logs import setup_logging
    from agent.runtime import Agent, run_until_signal
    from agent.store import StoreInUseError

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    setup_logging(args.log_level)
    try:
        asyncio.run(run_until_signal(Agent(config)))
    except StoreInUseError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from agent.config import main_check

    return main_check(args.config, sys.stdout, sys.stderr)


def _cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import DemoOptions, run_demo

    opts = DemoOptions(args.duration, args.life_s, args.workdir, args.keep, args.json)
    return run_demo(opts)


def _cmd_status(args: argparse.Namespace) -> int:
    from agent.inspect import status

    config = _load(args.config)
    return EXIT_CONFIG if config is None else status(config, sys.stdout)


def _cmd_alerts(args: argparse.Namespace) -> int:
    from agent.inspect import alerts

    config = _load(args.config)
    return EXIT_CONFIG if config is None else alerts(config, sys.stdout, sys.stderr, args.limit)


def _cmd_maintenance(args: argparse.Namespace) -> int:
    from agent.maintenance import record_maintenance

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    return record_maintenance(config, args.asset, args.note, sys.stdout, sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Vibration monitoring on the gateway: read sensors, compute severity and "
        "time to failure, keep every alert on disk and forward it.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", type=Path, required=True, help="YAML configuration")

    p = sub.add_parser("run", help="run the agent")
    with_config(p)
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check", help="validate a configuration; exit 2 with every error")
    with_config(p)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("demo", help="run the whole chain here with simulators (no setup)")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: until Ctrl-C)",
    )
    p.add_argument(
        "--life-s",
        type=float,
        default=60.0,
        help="seconds until the simulated bearing fails (default 60)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the demo's files here instead of a temporary directory",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the agent's store and the backend's database afterwards (prints where)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print each record the backend receives as JSON Lines on stdout (the story "
        "goes to stderr)",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("status", help="store depth and, when reachable, the agent's /healthz")
    with_config(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("alerts", help="print the most recent alerts from the store (JSON Lines)")
    with_config(p)
    p.add_argument("-n", "--limit", type=int, default=20)
    p.set_defaults(func=_cmd_alerts)

    p = sub.add_parser(
        "maintenance",
        help="record a repair: resets the asset's baseline and trend, sends a maintenance record",
    )
    with_config(p)
    p.add_argument("--asset", required=True, help="asset id from the configuration")
    p.add_argument("--note", default="", help="what was done (work order, part replaced)")
    p.set_defaults(func=_cmd_maintenance)

    from agent import replay

    p = sub.add_parser("replay", help="feed recorded waveforms through the analysis (JSON Lines)")
    replay.add_arguments(p)
    p.set_defaults(func=replay.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edge-agent`."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edge-agent alerts | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
