"""`edge-sim modbus` as the Modbus benchmarks start it: a process of its own, run from the
tree under test, its READY line awaited (bounded), stopped with SIGTERM (then SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any


@contextlib.asynccontextmanager
async def modbus_simulator(args: list[str], tree: Path) -> AsyncIterator[dict[str, Any]]:
    """`edge-sim modbus ARGS` run in `tree`; yields its READY line's address info."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.cli", "modbus", *args,
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, cwd=tree,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            while not (line := await proc.stdout.readline()).startswith(b"READY "):
                if not line:
                    raise RuntimeError("simulator exited")
        yield json.loads(line[6:])
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
