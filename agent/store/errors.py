"""Errors of the store package: every sqlite3/OSError is translated into these at the edge."""

from __future__ import annotations

from pathlib import Path


class StoreError(Exception):
    """A store operation failed; nothing it would have written was acknowledged.

    Attributes:
        path: the database file concerned, when known.
        code: SQLite's error name (e.g. "SQLITE_IOERR_WRITE") or errno name, when known.
    """

    def __init__(self, message: str, *, path: Path | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.code = code


class StoreSquattedError(StoreError):
    """A store file in a folder every local user can write belongs to another user (see
    refuse_squatted): refused untouched."""


class StoreFullError(StoreError):
    """The disk (or SQLite's page limit) is full: the transaction was rolled back.

    The store stays open and usable; a later write succeeds once space is back.
    """


class StoreClosedError(StoreError):
    """The outbox is not open (never entered, or already left)."""


class StoreBusyError(StoreError):
    """Another process holds a lock on the store beyond the wait allowed: retry later."""
