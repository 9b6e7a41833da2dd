"""`edge-sim`: sensor, backend and CMMS simulators, each a process of its own as in a plant."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

LEVELS = ("debug", "info", "warning", "error", "critical")
# Set by a parent that starts simulators as its children (agent.demo_sims.SimProcess) to its
# pid: the simulator then ends when that parent dies, even by SIGKILL, instead of serving on
# as an orphan nobody stops (with mosquitto under it and the demo's files in use).
PARENT_ENV = "EDGE_SIM_PARENT_PID"
_PR_SET_PDEATHSIG = 1


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line, not usage plus error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _level(text: str) -> str:
    if text.lower() not in LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r}; choose one of {', '.join(LEVELS)}"
        )
    return text.upper()


# (command, its module, its help): a simulator imports only its own module, since importing
# all five (numpy, aiohttp, pymodbus...) made each start ~0.3 s slower, and tests start many.
_COMMANDS = (
    ("modbus", "modbus", "Modbus TCP server with QM30VT2 sensors and scenarios"),
    ("backend", "backend", "portfolio backend: takes alerts, builds cases, serves the page"),
    ("cmms", "cmms", "CMMS work-order receiver: idempotent on Idempotency-Key"),
    ("mqtt", "mqtt", "wireless vibration sensors (NCD style) publishing to an MQTT broker"),
    ("mosquitto", "mosquitto", "a private mosquitto broker on a free loopback port"),
)


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (None: none, or not one of ours)."""
    it = iter(argv)
    for token in it:
        if token == "--log-level":
            next(it, None)
        elif not token.startswith("-"):
            return token if token in {c for c, _, _ in _COMMANDS} else None
    return None


def _parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with the command known from `argv`, only that command's module is loaded
    (the others are listed by name and help, which is all their parsers are used for)."""
    chosen = _command(sys.argv[1:] if argv is None else argv)
    parser = _Parser(prog="edge-sim", description=__doc__)
    parser.add_argument(
        "--log-level", type=_level, default="WARNING", help="logging level (default warning)"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module_name, text in _COMMANDS:
        p = sub.add_parser(name, help=text)
        if chosen not in (None, name):
            continue
        module = importlib.import_module(f"simulators.{module_name}")
        module.add_arguments(p)
        p.set_defaults(serve=module.serve)
        if hasattr(module, "check_arguments"):
            p.set_defaults(check=module.check_arguments)
    return parser


async def _serve_until_signal(
    serve: Callable[[argparse.Namespace], Awaitable[None]], args: argparse.Namespace
) -> None:
    task = asyncio.ensure_future(serve(args))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _parent_gone() -> bool:
    """Under a parent named by $EDGE_SIM_PARENT_PID: ask Linux for SIGTERM (a clean stop)
    when it dies; True when it is already gone (then there is nobody to serve)."""
    want = os.environ.pop(PARENT_ENV, "")
    if not want.isdigit():
        return False
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() != int(want)  # it died before prctl: no signal will come


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edge-sim`."""
    if _parent_gone():
        return 1
    args = _parser(argv).parse_args(argv)
    problem = args.check(args) if hasattr(args, "check") else None
    if problem:
        print(f"edge-sim {args.command}: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from simulators._sim import StartError

    try:
        asyncio.run(_serve_until_signal(args.serve, args))
    except (StartError, OSError) as exc:  # a bad --db, a port in use
        print(f"edge-sim {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
