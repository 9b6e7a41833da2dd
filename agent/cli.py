"""`edge-agent`: run, check, reload, demo, status, alerts, requeue, maintenance, replay,
systemd-dropin.

Every error is one line on stderr with a non-zero exit: a wrong argument (2), an invalid
configuration (2), an agent that cannot be reached (1). Operator commands print one human
line by default and JSON with --json.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from agent.logs import log_level

if TYPE_CHECKING:
    from agent.config import Config

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_USAGE = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug, reported in one line
MAX_LIMIT = 10**9  # beyond any store; SQLite's integers end at 2**63 - 1


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line (with where to look), not usage plus error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _load(path: Path, *, secrets: bool = True) -> Config | None:
    """The configuration, or None after printing every issue to stderr.

    secrets=False for the operator commands (status, alerts, requeue, maintenance): they
    never use the uplinks' token, password or TLS files, and the install notes keep those
    readable by root and the service only; an operator's command must not need them.
    """
    from agent.config import ConfigError, load_config

    try:
        return load_config(path, secrets=secrets)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return None


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    if n > MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_LIMIT}, got {n}")
    return n


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio  # here: the other commands (replay, status...) start without it

    from agent.logs import setup_logging
    from agent.runtime import Agent, run_until_signal
    from agent.shutdown import EXIT_STOP_LOST_DATA
    from agent.store import StoreError, StoreInUseError

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    setup_logging(args.log_level)
    agent = Agent(config, config_path=args.config)
    try:
        asyncio.run(run_until_signal(agent))
    except (StoreInUseError, StoreError) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception:  # a crash: its traceback goes into the log (one JSON line)
        logging.getLogger("agent").critical("agent crashed", exc_info=True)
        return EXIT_FAILED
    return EXIT_STOP_LOST_DATA if agent.stop_lost_data else 0


def _cmd_check(args: argparse.Namespace) -> int:
    from agent.config import main_check

    return main_check(args.config, sys.stdout, sys.stderr)


def _cmd_reload(args: argparse.Namespace) -> int:
    from agent.reload_client import request_reload

    return request_reload(args.config, sys.stdout, sys.stderr, as_json=args.json)


def _cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import DemoOptions, run_demo

    opts = DemoOptions(
        args.duration, args.life_s, args.workdir, args.keep, args.json, args.status_every
    )
    return run_demo(opts)


def _cmd_status(args: argparse.Namespace) -> int:
    from agent.inspect import status

    config = _load(args.config, secrets=False)
    return EXIT_CONFIG if config is None else status(config, sys.stdout, as_json=args.json)


def _cmd_alerts(args: argparse.Namespace) -> int:
    from agent.inspect import alerts

    config = _load(args.config, secrets=False)
    if config is None:
        return EXIT_CONFIG
    return alerts(
        config,
        sys.stdout,
        sys.stderr,
        args.limit,
        as_json=args.json,
        dead_letter=args.dead_letter,
        uplink=args.uplink,
    )


def _cmd_requeue(args: argparse.Namespace) -> int:
    from agent.requeue import requeue

    config = _load(args.config, secrets=False)
    if config is None:
        return EXIT_CONFIG
    if not (args.ids or args.all or args.uplink):
        print(
            "edge-agent requeue: say which dead letters: --id ID, --uplink NAME or --all "
            "(see edge-agent requeue --help)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return requeue(
        config, sys.stdout, sys.stderr, ids=args.ids or None, uplink=args.uplink, as_json=args.json
    )


def _cmd_maintenance(args: argparse.Namespace) -> int:
    from agent.maintenance import MaintenanceRequest, record_maintenance

    config = _load(args.config, secrets=False)
    if config is None:
        return EXIT_CONFIG
    request = MaintenanceRequest(asset=args.asset, note=args.note, replaced=args.replaced)
    return record_maintenance(config, request, sys.stdout, sys.stderr, as_json=args.json)


def _cmd_dropin(args: argparse.Namespace) -> int:
    from agent.unitgen import DropinError, dropin

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        print(dropin(config, base=args.config.parent), end="")
    except DropinError as exc:
        print(f"edge-agent systemd-dropin: {exc}; nothing written", file=sys.stderr)
        return EXIT_FAILED
    return 0


# --- subcommands: one function each, so a new option lands beside its command ------------


def _with_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, required=True, help="YAML configuration")


def _with_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a human line")


def _add_run(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("run", help="run the agent")
    _with_config(p)
    p.add_argument(
        "--log-level", type=log_level, default="INFO", help="debug, info (default), warning..."
    )
    p.set_defaults(func=_cmd_run)


def _add_check(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("check", help="validate a configuration; exit 2 with every error")
    _with_config(p)
    p.set_defaults(func=_cmd_check)


def _add_reload(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "reload",
        help="make the running agent re-read its configuration file (as SIGHUP does) and "
        "print what changed; exit 1 if refused or unreachable, 2 if the file is invalid",
    )
    _with_config(p)
    _with_json(p)
    p.set_defaults(func=_cmd_reload)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _add_demo(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("demo", help="run the whole chain here with simulators (no setup)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument(
        "--life-s",
        type=float,
        default=60.0,
        help="seconds until the simulated bearing fails (default 60)",
    )
    p.add_argument(
        "--status-every",
        type=_seconds,
        default=10.0,
        help="seconds between the 'watching:' lines (default 10)",
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


def _add_status(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "status", help="the running agent's state in one line; exit 1 if it is not reachable"
    )
    _with_config(p)
    _with_json(p)
    p.set_defaults(func=_cmd_status)


def _add_alerts(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("alerts", help="the most recent alerts from the store, newest first")
    _with_config(p)
    _with_json(p)
    p.add_argument("-n", "--limit", type=_positive, default=20, help="how many (default 20)")
    p.add_argument(
        "--dead-letter",
        action="store_true",
        help="the dead letters instead: what a backend refused, per uplink, with the reason",
    )
    p.add_argument("--uplink", default=None, help="with --dead-letter: only this uplink's")
    p.set_defaults(func=_cmd_alerts)


def _add_requeue(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "requeue",
        help="put dead letters back in their uplink's queue (by id, by uplink, or all)",
    )
    _with_config(p)
    _with_json(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--id", dest="ids", action="append", help="an alert id (repeatable)")
    which.add_argument("--all", action="store_true", help="every dead letter of every uplink")
    p.add_argument("--uplink", default=None, help="only this uplink's dead letters")
    p.set_defaults(func=_cmd_requeue)


def _add_maintenance(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "maintenance",
        help="record a repair: resets the asset's baseline and trend, sends a maintenance record",
    )
    _with_config(p)
    _with_json(p)
    p.add_argument("--asset", required=True, help="asset id from the configuration")
    p.add_argument("--note", default="", help="what was done (work order, part replaced)")
    p.add_argument(
        "--replaced",
        nargs="?",
        const="failed",
        choices=("failed", "healthy"),
        help="the part was replaced: its completed life joins the fleet history of the "
        "asset's reliability.class and sharpens later priors of that class. 'failed' "
        "(the default: a run to failure, or replaced for its degradation) counts as a "
        "completed life; 'healthy' (replaced while sound) as a life that lasted at least "
        "that long",
    )
    p.set_defaults(func=_cmd_maintenance)


def _add_replay(sub: argparse._SubParsersAction[_Parser]) -> None:
    from agent import replay

    p = sub.add_parser("replay", help="feed recorded waveforms through the analysis (JSON Lines)")
    replay.add_arguments(p)
    p.set_defaults(func=replay.run)


def _add_dropin(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "systemd-dropin",
        help="print the systemd drop-in this configuration needs (network allow-list, groups)",
    )
    _with_config(p)
    p.set_defaults(func=_cmd_dropin)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edge-agent",
        description="Vibration monitoring on the gateway: read sensors, compute severity and "
        "time to failure, keep every alert on disk and forward it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (
        _add_run,
        _add_check,
        _add_reload,
        _add_demo,
        _add_status,
        _add_alerts,
        _add_requeue,
        _add_maintenance,
        _add_replay,
        _add_dropin,
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edge-agent`."""
    try:
        args = _parser().parse_args(argv)  # imports the commands' modules: a Ctrl-C lands here
    except KeyboardInterrupt:
        return 130
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edge-agent alerts | head`
        return 0
    except Exception as exc:  # a bug: one line, not a traceback in an operator's terminal
        print(f"edge-agent {args.command}: internal error: {exc!r}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
