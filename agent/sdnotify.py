"""systemd notify protocol (READY, WATCHDOG, STOPPING) without a dependency."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class SystemdNotifier:
    """Sends sd_notify messages when NOTIFY_SOCKET is set; does nothing otherwise.

    Args:
        environ: where NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID come from.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        self._addr = addr or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ours = not pid.isdigit() or int(pid) == os.getpid()  # else it is meant for a parent
        # systemd's limit without a ping (None: no watchdog for this process).
        self.watchdog_s: float | None = (
            int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and ours else None
        )

    def notify(self, message: str) -> None:
        """Send one message; never raises (systemd being absent is normal)."""
        if self._addr is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never block the event loop: if systemd's queue is full, drop this one.
                sock.setblocking(False)
                sock.connect(self._addr)
                sock.send(message.encode())
        except OSError:
            pass
