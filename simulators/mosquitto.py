"""``edge-sim mosquitto``: a private mosquitto broker on a free loopback port.

For trying the agent's MQTT input without setting up a broker: runs the installed
``mosquitto`` (Debian package ``mosquitto``) with its own configuration in a temporary
folder (anonymous access, loopback only, persistence there), prints
``READY {"host": "127.0.0.1", "port": N}`` once it accepts connections and stops it on
SIGTERM or SIGINT. Refuses with one line when mosquitto is not installed
(``$EDGE_MOSQUITTO`` may name the executable; empty means none).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import shutil
import socket
import tempfile
import time
from pathlib import Path

from simulators._sim import StartError

READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def find_mosquitto() -> str | None:
    """The mosquitto executable, or None when it is not installed.

    ``$EDGE_MOSQUITTO`` names it when it lives elsewhere; set to "" it means "none".
    """
    if "EDGE_MOSQUITTO" in os.environ:
        given = os.environ["EDGE_MOSQUITTO"]
        return given if given and os.access(given, os.X_OK) else None
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``edge-sim mosquitto`` options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--dir", type=Path, help="folder for its configuration and data")


def check_arguments(args: argparse.Namespace) -> str | None:
    """A one-line problem, or None."""
    if find_mosquitto() is None:
        return (
            "mosquitto is not installed (Debian/Ubuntu: sudo apt install mosquitto); "
            "or point the agent and edge-sim mqtt at a broker you have"
        )
    if not 0 <= args.port <= 65535:
        return "--port must lie within 0..65535"
    return None


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def write_config(folder: Path, host: str, port: int) -> Path:
    """mosquitto.conf for one loopback listener, anonymous, persistence in ``folder``."""
    lines = [
        f"listener {port} {host}",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {folder}/",
        f"log_dest file {folder / 'mosquitto.log'}",
        # As root mosquitto switches to user "mosquitto", who cannot write our folder.
        f"user {pwd.getpwuid(os.getuid()).pw_name}",
    ]
    conf = folder / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


async def _listening(host: str, port: int, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise StartError(f"mosquitto exited with status {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise StartError(f"mosquitto did not listen on {host}:{port} within {READY_TIMEOUT_S:.0f} s")


async def serve(args: argparse.Namespace) -> None:
    """Run mosquitto until cancelled; READY once it listens."""
    exe = find_mosquitto()
    if exe is None:
        raise StartError(check_arguments(args) or "mosquitto is not installed")
    with contextlib.ExitStack() as stack:
        folder = args.dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        port = args.port or _free_port(args.host)
        conf = write_config(folder, args.host, port)
        proc = await asyncio.create_subprocess_exec(
            exe,
            "-c",
            str(conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            try:
                await _listening(args.host, port, proc)
            except StartError as exc:
                log = (folder / "mosquitto.log").read_text(errors="replace")[-500:]
                raise StartError(f"{exc}; its log ends: {log.strip()!r}") from None
            print("READY " + json.dumps({"host": args.host, "port": port}), flush=True)
            await proc.wait()
            raise StartError(f"mosquitto exited with status {proc.returncode}")
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
