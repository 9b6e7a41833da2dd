"""The writer thread's connection, kept pointing at the store file (recovering if not).

Thread side only: every method runs on the store's writer thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from agent.store._files import Quarantined
from agent.store._salvage import StoreFault, file_fault, salvage
from agent.store._schema import record_quarantine
from agent.store._sqlite import identity
from agent.store.errors import StoreError

log = logging.getLogger(__name__)

RECOVERY_RETRY_S = 5.0  # a failed recovery or reopen is tried again after this


class ConnectionKeeper:
    """Holds the connection; a replaced, deleted or damaged file is salvaged and reopened.

    Args:
        path: the database file.
        opener: opens (or reopens) the store and returns the connection.
        on_fault: called (on this thread) after each recovery, with what happened.
        on_progress: called while a recovery copies (it is slow, but not stuck).
    """

    def __init__(
        self,
        path: Path,
        opener: Callable[[], sqlite3.Connection],
        on_fault: Callable[[StoreFault], None],
        on_progress: Callable[[], None] = lambda: None,
    ) -> None:
        self._path = path
        self._opener = opener
        self._on_fault = on_fault
        self._on_progress = on_progress
        self.conn: sqlite3.Connection | None = None
        self._opened: tuple[int, int] | None = None  # (device, inode) we opened
        self._head_fd: int | None = None  # on that file, for its header (see file_fault)
        self.broken: tuple[str, str] | None = None  # (kind, reason) awaiting recovery
        self._retry_at = 0.0
        self.recoveries = 0

    def open(self) -> None:
        """The first open (and each reopen); raises what opening raised, with nothing of
        it left open: the writer thread ends on a failed first open, and a reopen is
        retried every RECOVERY_RETRY_S (a descriptor and a lock kept per try)."""
        conn = self._opener()
        try:
            self._opened = identity(self._path)
            self._keep_head()
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def _keep_head(self) -> None:
        """One descriptor on the file just opened, kept until the next open or close: the
        header is read through it, since closing a descriptor of the store would drop
        this process's SQLite locks on it (file_fault says what follows)."""
        old, self._head_fd = self._head_fd, None
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = None  # unreadable now: no header check; SQLite's errors say more
        if fd is not None and (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != self._opened:
            os.close(fd)  # another file already: it is not ours, closing it drops nothing
            fd = None
        self._head_fd = fd
        if old is not None:
            os.close(old)  # the previous file's: moved aside, no longer written

    def settle(self) -> None:
        """Before the close: a file replaced or deleted since the last write is recovered
        now. Closed as it is, our WAL stays beside the file now at the path, and the next
        open reads it into that file as if it were its own (a backup moved back over the
        store: pages of two stores mixed); what was acknowledged lives only in that WAL."""
        if self.conn is not None:
            with contextlib.suppress(OSError, sqlite3.Error):
                self.usable()

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None
        if self._head_fd is not None:
            os.close(self._head_fd)
            self._head_fd = None

    def moved(self) -> bool:
        """True when the file at the path is no longer the one we write into."""
        return file_fault(self._path, self._opened, self._head_fd) is not None

    def corrupt(self, exc: BaseException) -> None:
        """SQLite reported damage: recover at the next `usable()`."""
        self.broken = ("corrupt", f"{type(exc).__name__}: {exc}")

    def usable(self) -> sqlite3.Connection | None:
        """The connection, after a recovery if the file is no longer ours; None when the
        store cannot be used right now (recovery or reopening failed, retried later)."""
        if self.broken is None and self.conn is not None:
            reason = file_fault(self._path, self._opened, self._head_fd)
            if reason is not None:
                self.broken = ("corrupt" if "overwritten" in reason else "replaced", reason)
        if time.monotonic() >= self._retry_at:
            if self.broken is not None and self.conn is not None:
                self._recover(self.conn, *self.broken)
            elif self.conn is None:
                self._reopen()
        return None if self.broken or self.conn is None else self.conn

    def unavailable(self) -> StoreError:
        why = self.broken[1] if self.broken else "it could not be reopened"
        return StoreError(f"store {self._path} unavailable: {why}; retrying", path=self._path)

    def _recover(self, conn: sqlite3.Connection, kind: str, reason: str) -> None:
        log.critical("STORE FAULT (%s): %s; copying it out to a fresh store", kind, reason)
        try:
            fault = salvage(conn, self._path, kind, reason, self._on_progress)
        except Exception as exc:
            self._retry_at = time.monotonic() + RECOVERY_RETRY_S
            log.critical(
                "store recovery failed (%s); nothing more is acknowledged until it succeeds "
                "(retry in %.0f s)",
                exc,
                RECOVERY_RETRY_S,
            )
            return
        self.conn, self.broken = None, None
        self.recoveries += 1
        if self._reopen():
            assert self.conn is not None
            moved = fault.moved_to or self._path
            q = Quarantined(moved, reason, fault.seq_restart - 1, fault.seq_restart)
            with contextlib.suppress(sqlite3.Error):
                record_quarantine(self.conn, q)
        log.critical(
            "store recovered: %s moved aside to %s; copied %s; unreadable rows: %s; "
            "next alert seq %d",
            self._path,
            fault.moved_to,
            fault.copied,
            fault.lost_rows or "none",
            fault.seq_restart,
        )
        self._on_fault(fault)

    def _reopen(self) -> bool:
        try:
            self.open()
        except Exception as exc:
            self.conn = None
            self._retry_at = time.monotonic() + RECOVERY_RETRY_S
            log.critical("cannot open the store %s (%s); retrying", self._path, exc)
            return False
        return True
