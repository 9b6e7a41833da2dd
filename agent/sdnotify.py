"""systemd notify protocol (READY, WATCHDOG, STOPPING) without a dependency."""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    """Sends sd_notify messages when NOTIFY_SOCKET is set; does nothing otherwise."""

    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        self._addr = addr or None
        usec = os.environ.get("WATCHDOG_USEC", "")
        # Ping at half the watchdog period, as systemd recommends.
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if usec.isdigit() else None

    def notify(self, message: str) -> None:
        """Send one message; never raises (systemd being absent is normal)."""
        if self._addr is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._addr)
                sock.sendall(message.encode())
        except OSError:
            pass
