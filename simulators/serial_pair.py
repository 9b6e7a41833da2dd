"""A null-modem cable in software: two connected pseudo-terminals made by socat.

The agent opens one end as its RS-485 port, ``edge-sim modbus --rtu`` serves the other.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT_S = 5.0


@contextlib.contextmanager
def pty_pair(folder: Path | None = None) -> Iterator[tuple[str, str]]:
    """Yield (agent end, device end) paths while socat links them.

    Raises:
        FileNotFoundError: socat is not installed.
        RuntimeError: socat did not create the pair in time.
    """
    socat = shutil.which("socat")
    if socat is None:
        raise FileNotFoundError("socat is not installed (apt-get install socat)")
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-rtu-")))
        a, b = folder / "agent-tty", folder / "device-tty"
        proc = subprocess.Popen(
            [socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not (a.exists() and b.exists()):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("socat did not create the pseudo-terminal pair")
                time.sleep(0.02)
            yield str(a), str(b)
        finally:
            proc.terminate()
            proc.wait(timeout=5)
