"""The one thread that owns the SQLite connection, with group commit.

Requests queue into the thread through a bounded queue. The thread takes everything that is
queued, answers the reads against committed data, runs all the writes in ONE transaction
(each in its own savepoint, so one bad request fails alone), commits (fsync, WAL,
synchronous=FULL) and only then resolves the callers' asyncio futures with
loop.call_soon_threadsafe. A crash before the commit returns acknowledges nothing.

Before and after every group the thread checks that the file at the store's path is still
the one it opened (agent.store._salvage); a replaced, deleted or damaged store is copied
out and reopened before anything more is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.store._keeper import ConnectionKeeper
from agent.store._salvage import StoreFault
from agent.store._sqlite import is_corrupt, is_full, primary_code, translate
from agent.store.errors import StoreClosedError, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

MAX_GROUP = 512  # requests per transaction: bounds one commit's latency
# Errors after which the whole transaction is rolled back, not just one request.
_TXN_FATAL = (
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_NOTADB,
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_NOMEM,
)


@dataclass(slots=True)
class _Request:
    op: Op
    write: bool
    future: asyncio.Future[Any]
    what: str


Outcome = tuple[_Request, Any, BaseException | None]


@dataclass(slots=True)
class WriterCounters:
    """How the group commit performed (for tests, benchmarks and health)."""

    transactions: int = 0
    write_requests: int = 0
    read_requests: int = 0
    failed_transactions: int = 0
    max_group: int = 0
    recoveries: int = 0  # store files recovered at run time
    groups: list[int] = field(default_factory=list)  # last few group sizes, bounded

    def note_group(self, n: int) -> None:
        self.transactions += 1
        self.write_requests += n
        self.max_group = max(self.max_group, n)
        self.groups.append(n)
        del self.groups[:-64]


_STOP = object()


class Writer:
    """Owns one sqlite3 connection on a dedicated thread.

    Args:
        path: the database file.
        opener: called on the thread; returns the open connection (again after a recovery).
        before_commit: called on the thread inside every write transaction, after the
            requests ran (the disk budget is enforced there, in the same transaction).
        after_commit: called on the thread after every committed write transaction (best
            effort: its errors are logged, the transaction stands).
        queue_size: bound of the request queue; callers wait (asynchronously) beyond it.
        on_fault: called on the event loop after the store was recovered at run time.
    """

    def __init__(
        self,
        path: Path,
        opener: Callable[[], sqlite3.Connection],
        *,
        before_commit: Callable[[sqlite3.Connection], None] | None = None,
        after_commit: Callable[[sqlite3.Connection], None] | None = None,
        queue_size: int = 1024,
        on_fault: Callable[[StoreFault], None] | None = None,
    ) -> None:
        self._path = path
        self._opener = opener
        self._before_commit = before_commit
        self._after_commit = after_commit
        self._on_fault = on_fault
        # One place more than submit lets in (its slots): the stop marker always finds room,
        # so a stop never waits on a thread stuck in a full queue's put (a hung disk).
        self._queue: queue.Queue[_Request | object] = queue.Queue(maxsize=queue_size + 1)
        self._slots: asyncio.Semaphore | None = None
        self._queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed: asyncio.Future[None] | None = None
        self._accepting = False
        self._busy_since: float | None = None  # monotonic start of the batch in hand
        self.counters = WriterCounters()
        # Thread side only. A recovery copying a large store is slow but not stuck: its
        # progress restarts the busy clock the watchdog reads.
        self._keeper = ConnectionKeeper(path, opener, self._recovered, self._progress)
        self._unacked: list[Outcome] = []  # committed into a file that was then replaced
        self._full_failures = 0  # failed transactions since the disk filled up (thread side)

    @property
    def busy_for_s(self) -> float:
        """Liveness, read-only: seconds the thread has spent on its current batch (0.0 when
        idle). A wedged thread (a hung fsync) shows here as a time that keeps growing."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    async def start(self) -> None:
        """Start the thread and open the database on it; raises what opening raised."""
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self._queue_size)
        ready: asyncio.Future[None] = self._loop.create_future()
        self._closed = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._main,
            args=(ready,),
            name=f"store-writer[{self._path.name}]",
            daemon=True,
        )
        self._thread.start()
        await ready  # raises if opening failed (the thread has then exited)
        self._accepting = True

    async def stop(self, *, timeout_s: float | None = None) -> None:
        """Run what is queued, close the connection, join the thread.

        Args:
            timeout_s: stop waiting after this long (a slow or hung disk): the thread is
                left to finish on its own (SQLite's journal keeps the file whole whatever
                the moment the process then exits), and that is logged.
        """
        if self._thread is None or self._closed is None:
            return
        self._accepting = False
        if self._thread.is_alive():
            try:
                async with asyncio.timeout(timeout_s):
                    # Never blocks: a place is kept for it. A put() from a helper thread
                    # blocked that thread until a hung commit ended, and the exit with it.
                    self._queue.put_nowait(_STOP)
                    await asyncio.shield(self._closed)
            except (TimeoutError, queue.Full):
                log.error(
                    "store %s: the writer thread is still busy when the stop's time is up "
                    "(a slow or hung disk); the agent exits without waiting for it (SQLite "
                    "keeps the file whole: what it commits is there after the restart)",
                    self._path,
                )
                self._thread = None
                return
            await asyncio.to_thread(self._thread.join, 10.0)
        self._thread = None

    async def submit(self, op: Op, *, write: bool, what: str) -> Any:
        """Queue `op(conn)` for the thread; returns its result once committed."""
        if not self._accepting or self._loop is None or self._slots is None:
            raise StoreClosedError(f"store {self._path} is not open", path=self._path)
        await self._slots.acquire()  # bounded queue, without blocking the loop
        future: asyncio.Future[Any] = self._loop.create_future()
        try:
            self._queue.put_nowait(_Request(op, write, future, what))
        except BaseException:
            self._slots.release()
            raise
        return await future

    # --- thread side -------------------------------------------------------------------

    def _resolve(self, req: _Request, result: Any, exc: BaseException | None) -> None:
        assert self._loop is not None

        def done() -> None:
            assert self._slots is not None
            self._slots.release()
            if req.future.done():  # the caller was cancelled; the work still happened
                return
            if exc is None:
                req.future.set_result(result)
            else:
                req.future.set_exception(exc)

        _call_soon(self._loop, done)

    def _main(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None and self._closed is not None
        try:
            self._keeper.open()
        except BaseException as exc:  # hand every opening failure to the awaiting caller
            # One callback, `ready` last: once the caller sees the error its loop may close
            # (asyncio.run in a CLI), and a second call from here would raise on this thread.
            self._loop.call_soon_threadsafe(_open_failed, ready, self._closed, exc)
            return
        self._loop.call_soon_threadsafe(_settle, ready, None, None)
        try:
            stop = False
            while not stop:
                batch: list[_Request] = []
                item = self._queue.get()
                while True:
                    if item is _STOP:
                        stop = True
                    else:
                        assert isinstance(item, _Request)
                        batch.append(item)
                    if len(batch) >= MAX_GROUP:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                self._busy_since = time.monotonic()
                try:
                    self._run_group(batch)
                finally:
                    self._busy_since = None
        finally:
            self._accepting = False
            self._keeper.settle()
            self._keeper.close()
            # Nothing may wait forever on a thread that is gone.
            closed = StoreClosedError(f"store {self._path} was closed", path=self._path)
            for req, _result, _err in self._unacked:
                self._resolve(req, None, closed)
            while True:
                try:
                    left = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(left, _Request):
                    self._resolve(left, None, closed)
            _call_soon(self._loop, _settle, self._closed, None, None)

    def _run_group(self, batch: list[_Request]) -> None:
        # Concurrent requests have no order among themselves, so reads may go first,
        # against committed data only: no caller ever sees a write that could roll back.
        writes = [r for r in batch if r.write]
        for req in batch:
            if not req.write:
                self.counters.read_requests += 1
                self._read(req)
        if not writes:
            return
        for _attempt in range(2):  # a second time only after a recovery
            conn = self._keeper.usable()
            if conn is None:
                break
            outcomes, fatal = self._transaction(conn, writes)
            if fatal is not None and is_corrupt(fatal):
                self._keeper.corrupt(fatal)
                continue
            if fatal is not None:
                self._fail(writes, fatal)
                return
            if self._keeper.moved():
                # Committed into a file that is no longer the store: acknowledged only
                # once the recovery has copied it into the fresh one (_recovered).
                self._unacked += outcomes
                self._keeper.usable()
                return
            for req, result, err in outcomes:
                self._resolve(req, result, err)
            return
        for req in writes:
            self._resolve(req, None, self._keeper.unavailable())

    def _progress(self) -> None:
        self._busy_since = time.monotonic()

    def _recovered(self, fault: StoreFault) -> None:
        self.counters.recoveries += 1
        for req, result, err in self._unacked:  # now in the fresh store too
            self._resolve(req, result, err)
        self._unacked.clear()
        if self._on_fault is not None and self._loop is not None:
            _call_soon(self._loop, self._on_fault, fault)

    def _read(self, req: _Request) -> None:
        for _attempt in range(2):  # a second time only after a recovery
            conn = self._keeper.usable()
            if conn is None:
                break
            try:
                result = req.op(conn)
            except Exception as exc:
                if is_corrupt(exc):
                    self._keeper.corrupt(exc)
                    continue
                self._resolve(req, None, self._wrap(exc, req.what))
                return
            self._resolve(req, result, None)
            return
        self._resolve(req, None, self._keeper.unavailable())

    def _wrap(self, exc: BaseException, what: str) -> BaseException:
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, sqlite3.Error | OSError):
            err = translate(exc, self._path, what)
            err.__cause__ = exc
            return err
        return exc  # a programming or data error (e.g. NaN in a record): the caller's

    def _transaction(
        self, conn: sqlite3.Connection, writes: list[_Request]
    ) -> tuple[list[Outcome], BaseException | None]:
        """Run the writes in one transaction: their outcomes, or the error that undid all."""
        outcomes: list[Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for req in writes:
                conn.execute("SAVEPOINT req")
                try:
                    result = req.op(conn)
                except Exception as exc:
                    if primary_code(exc) in _TXN_FATAL or is_full(exc) or is_corrupt(exc):
                        raise
                    conn.execute("ROLLBACK TO req")
                    conn.execute("RELEASE req")
                    outcomes.append((req, None, self._wrap(exc, req.what)))
                    continue
                conn.execute("RELEASE req")
                outcomes.append((req, result, None))
            if self._before_commit is not None:
                self._before_commit(conn)
            conn.execute("COMMIT")  # returns after the WAL is fsynced (synchronous=FULL)
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            self.counters.failed_transactions += 1
            return [], exc
        self.counters.note_group(len(writes))
        if self._full_failures:
            log.warning(
                "store %s is writable again after %d transaction(s) failed on a full disk",
                self._path,
                self._full_failures,
            )
            self._full_failures = 0
        if self._after_commit is not None:
            try:
                self._after_commit(conn)
            except sqlite3.Error as exc:
                log.warning("store %s: after a commit: %s", self._path, exc)
        return outcomes, None

    def _fail(self, writes: list[_Request], exc: BaseException) -> None:
        err = self._wrap(exc, f"a transaction of {len(writes)} request(s)")
        if is_full(exc):
            self._full_failures += 1
            # Once per episode: every write fails while the disk stays full, and a log line
            # per failure would itself fill the journal of a gateway with no space left.
            log.log(
                logging.ERROR if self._full_failures == 1 else logging.DEBUG,
                "store %s is FULL: %d write(s) rolled back, none acknowledged; "
                "will retry on the next write (said once until a write succeeds)",
                self._path,
                len(writes),
            )
        else:
            log.error("store %s transaction failed, rolled back: %s", self._path, exc)
        for req in writes:
            self._resolve(req, None, err)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Hand a callback to the event loop; none when the loop is closed: the agent stopped
    without waiting for this thread (a bounded stop on a slow disk), nobody awaits it."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _open_failed(
    ready: asyncio.Future[None], closed: asyncio.Future[None], exc: BaseException
) -> None:
    _settle(closed, None, None)
    _settle(ready, None, exc)


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(result)
    else:
        fut.set_exception(exc)
