"""paho's socket in the event loop's selector, registered and unregistered in order, on the
loop's own thread only.

aiomqtt 2.x adds the reader and writer with call_soon_threadsafe but removes them at once,
from whichever thread paho calls from (the connect runs in an executor thread). Under CPU
load the loop lags: a socket closed by paho's connect thread is removed before its pending
add runs, the add then registers the fd while still open, and the close leaves a key the
kernel no longer has. The next socket, given the same fd number, fails its add_reader or
add_writer ("Exception in callback ... add_writer(24)", ENOENT or EBADF) and that link
reads or writes nothing while it looks connected (a publish waits out its timeout, a
subscriber hears nothing until the keepalive gives up). Here every add and remove is one
loop callback, queued in paho's order, and an add for a socket closed meanwhile is skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import aiomqtt


class LoopSockets(aiomqtt.Client):
    """aiomqtt's client; its socket callbacks touch the selector in order, on the loop."""

    def _in_order(self, op: Callable[[], None]) -> None:
        # Always queued, even on the loop's thread: a remove run at once would overtake an
        # add still queued from the connect thread (the bug this module is for).
        self._loop.call_soon_threadsafe(op)

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        loop = self._loop

        def read() -> None:
            # As aiomqtt: a read error ends the connection (its disconnect future).
            try:
                while True:
                    client.loop_read()
                    pending = getattr(client._sock, "pending", None)  # SSL's buffered bytes
                    if callable(pending) and pending() > 0:
                        continue
                    break
            except Exception as exc:
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def add() -> None:
            if sock.fileno() == fd:  # not closed meanwhile
                loop.add_reader(fd, read)

        def misc() -> None:
            self._misc_task = loop.create_task(self._misc_loop())

        self._in_order(add)
        self._in_order(misc)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        if fd > -1:
            self._in_order(lambda: _remove(self._loop.remove_reader, fd))
        task = self._misc_task
        if task is not None and not task.done():
            self._loop.call_soon_threadsafe(task.cancel)

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        loop = self._loop

        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def add() -> None:
            if sock.fileno() == fd:  # not closed meanwhile
                loop.add_writer(fd, write)

        self._in_order(add)

    def _on_socket_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        if fd > -1:
            self._in_order(lambda: _remove(self._loop.remove_writer, fd))


def _remove(remove: Callable[[int], object], fd: int) -> None:
    # The socket may be closed by now: the kernel dropped it from epoll already, and the
    # selector drops its key when epoll says so (EBADF, ENOENT): what a remove is for.
    with contextlib.suppress(OSError):
        remove(fd)
