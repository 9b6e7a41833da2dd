"""The store file and the WAL beside it belong together, and the file has one name.

SQLite pairs a database with the `-wal` that has its name plus "-wal", nothing more: the
WAL's header holds no mark of the database it was written for. A WAL left by a kill -9 is
read into whatever file is at the name when the store next opens:
- the file moved away (`mv outbox.db outbox.db.bak`): SQLite finds no database (or an
  empty one) and deletes the WAL, with every alert acknowledged since the last checkpoint;
- a backup moved back over it: the WAL's pages are laid over another version of the
  database, a corrupt store (quarantined: its backlog no longer delivered) or alerts lost.

So the agent records which file (its inode) it last opened at the path, in
`<store>.inode` (fsynced before the first write into a new file), and refuses a WAL with
committed frames beside a file that is not that one, beside no database, or written with
another page size. Both files are left as they are: the message says what to do.

A second name (a hard link) gives the same database a second WAL and a second lock index:
two processes opening it by different names both write and overwrite each other's pages
("How To Corrupt An SQLite Database File", multiple links: a database file whose link
count is not 1 is undefined behaviour). Such a file is refused too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from agent.store._sqlite import INODE, MAGIC, create_fresh, fsync_dir, store_file
from agent.store.errors import StoreError

log = logging.getLogger(__name__)

_WAL_MAGICS = (0x377F0682, 0x377F0683)
_WAL_HEADER = 32
_FRAME_HEADER = 24
_SCAN_LIMIT = 10_000
# The store files the agent sets aside, with their -wal/-shm (agent.store._files.aside_name)
_CORRUPT = r"\.corrupt-\d{8}T\d{6}Z(\.\d+)?"
_ASIDE = r"\.(corrupt|replaced|superseded)-\d{8}T\d{6}Z(\.\d+)?"
_FRESH_INODES = frozenset(
    {"vfat", "msdos", "exfat"}
)  # folder entries looked through for another name of a file


def inode_path(path: Path) -> Path:
    return path.with_name(path.name + INODE)


@dataclass(frozen=True)
class Mark:
    """What `<store>.inode` says: the store file's inode, and the mark file's own inode
    when it was written (None in a mark of an earlier version)."""

    store: int
    own: int | None


def _read_mark(path: Path) -> Mark | None:
    try:
        data = json.loads(inode_path(path).read_text(encoding="utf-8"))
        store, own = data.get("inode"), data.get("mark")
    except (OSError, ValueError, AttributeError):
        return None
    if not (isinstance(store, int) and store > 0):
        return None
    return Mark(store, own if isinstance(own, int) and own > 0 else None)


def _mark_copied(path: Path, mark: Mark) -> bool:
    """Whether the mark file is not the one the agent wrote but a copy (the store's folder
    copied whole: cp -a, rsync, tar, an image's layer): every file then has a new inode,
    the store's as well, and the WAL beside it is the one copied with it."""
    try:
        return mark.own is not None and os.stat(inode_path(path)).st_ino != mark.own
    except OSError:
        return True


def record_file(path: Path) -> None:
    """Record the inode of the store file at `path` (before anything is written into its
    WAL), and the mark file's own (see _mark_copied). Durable: after a power cut a stale
    mark would refuse the agent's own WAL."""
    try:
        ino = os.stat(path).st_ino
    except OSError:
        return
    mark = _read_mark(path)
    if mark is not None and mark.store == ino and mark.own and not _mark_copied(path, mark):
        return
    target = inode_path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        fd = create_fresh(tmp)
        with os.fdopen(fd, "wb") as fh:
            # Its own inode is the mark's once renamed (a rename keeps the inode).
            own = os.fstat(fh.fileno()).st_ino
            fh.write(json.dumps({"inode": ino, "mark": own}).encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:  # a full disk, a tmp another user holds (in /tmp)
        # The previous file's mark would refuse this file's own WAL after a kill -9: with
        # none, only the inode check is off (the other checks still stand).
        # Not removable either (root's in a sticky /tmp, not a file): raised, it stopped
        # the agent, for a check that is only off (an unreadable mark is none).
        with contextlib.suppress(OSError):
            target.unlink()
        fsync_dir(target.parent)
        log.warning(
            "cannot record the store file's identity in %s (%s): a backup moved over the "
            "store with a WAL beside it is not detected until it is",
            target,
            exc,
        )


def _head(path: Path, size: int) -> bytes | None:
    """The first `size` bytes of a regular file (None: absent, unreadable, or not a file).
    Never waits: a FIFO another user put at the name in /tmp is not read (refused as
    theirs by refuse_squatted) but would have held the agent's start silently for ever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _wal_page_size(wal: Path) -> int | None:
    """The page size of a WAL holding frames SQLite would read (None: no such frame).

    A WAL restarted after a checkpoint keeps its old frames under a new salt: SQLite
    ignores them, and so does this check (the first frame's salt must be the header's)."""
    head = _head(wal, _WAL_HEADER + _FRAME_HEADER)
    if head is None or len(head) < _WAL_HEADER + _FRAME_HEADER:
        return None
    magic, _version, page_size, _ckpt, salt1, salt2 = struct.unpack(">6I", head[:24])
    frame_salts = struct.unpack(">2I", head[_WAL_HEADER + 8 : _WAL_HEADER + 16])
    if magic not in _WAL_MAGICS or frame_salts != (salt1, salt2):
        return None
    return page_size


def _db_page_size(path: Path) -> int | None:
    head = _head(path, 18)
    if head is None or len(head) < 18 or head[:16] != MAGIC:
        return None
    size = struct.unpack(">H", head[16:18])[0]
    return 65536 if size == 1 else size


def _lock_held(path: Path) -> bool:
    """Whether a running agent holds the store's lock (`<store>.lock`, agent.store._lock).
    A flock probe on its own descriptor: closing it drops no lock of this process."""
    try:
        lock = path.with_name(path.name + ".lock")
        fd = os.open(lock, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: no wait
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _fs_type(folder: Path) -> str | None:
    """The type of the filesystem `folder` is on (Linux's mount table), None if unknown."""
    where = os.path.realpath(folder)
    best: tuple[int, str] | None = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields, _, tail = line.partition(" - ")
                parts = fields.split()
                if len(parts) < 5 or not tail:
                    continue
                # Spaces and the like in a mount point come as octal escapes (\040).
                mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), parts[4])
                inside = where == mount or where.startswith(mount.rstrip("/") + "/")
                if inside and (best is None or len(mount) >= best[0]):
                    best = (len(mount), tail.split()[0])
    except OSError:
        return None
    return None if best is None else best[1]


def _stable_inodes(folder: Path) -> bool:
    """False on a filesystem that numbers inodes afresh at each mount (FAT, exFAT; FUSE
    may): there the inode recorded before a reboot says nothing of the file after it."""
    kind = _fs_type(folder)
    return kind is None or not (kind in _FRESH_INODES or kind.startswith("fuse"))


def _names_of(folder: Path, ino: int, but: str = "") -> list[Path]:
    """Names in `folder` of the file with inode `ino` (bounded scan)."""
    found: list[Path] = []
    with contextlib.suppress(OSError), os.scandir(folder) as it:
        for n, entry in enumerate(it):
            if n >= _SCAN_LIMIT:
                break
            with contextlib.suppress(OSError):
                if entry.name != but and entry.inode() == ino and entry.is_file():
                    found.append(Path(entry.path))
    return found


def _opened_apart(other: Path, target: Path) -> bool:
    """Whether SQLite opened the store by the name `other`: a -wal or -shm beside it that
    is not the store's own (`cp -al` links those too: one file, no second WAL)."""
    for suffix in ("-wal", "-shm"):
        theirs = other.with_name(other.name + suffix)
        if not theirs.exists():
            continue
        try:
            if not theirs.samefile(target.with_name(target.name + suffix)):
                return True
        except OSError:  # the store has none: theirs was made by the other name
            return True
    return False


def refuse_other_names(path: Path, *, warn: bool = True) -> None:
    """Refuse a store file opened by another name (a hard link with its own WAL); a second
    name nothing opened (a `cp -al` snapshot, a hard-link backup) is only warned of (when
    `warn`): refused, one night's snapshot left the agent unable to start, no alert sent.

    Raises:
        StoreError: SQLite opened the file by another name too; nothing was changed.
    """
    target = store_file(path)
    try:
        st = os.stat(target)
    except OSError:
        return
    if st.st_nlink <= 1:
        return
    others = _names_of(target.parent, st.st_ino, but=target.name)
    used = [o for o in others if _opened_apart(o, target)]
    named = ", ".join(map(str, others)) if others else "in another folder (find -samefile)"
    if not used:
        if warn:
            log.warning(
                "%s has %d names (hard links): %s. That is no backup (it changes with the "
                "store), and a process opening the store by another name would write into "
                "it with a second WAL and overwrite the agent's alerts. Remove the other "
                'name(s) with rm; to back the store up, copy it (sqlite3 %s ".backup FILE")',
                target,
                st.st_nlink,
                named,
                target,
            )
        return
    theirs = ", ".join(f"{o}-wal" for o in used)
    raise StoreError(
        f"{target} has {st.st_nlink} names (hard links): {named}. SQLite opened it by "
        f"{', '.join(map(str, used))} too, keeping a second WAL ({theirs}): each name's "
        "WAL overwrites the other's pages, and the agent's alerts with them. Nothing was "
        "changed. Remove the other name(s) with rm (the data stays "
        f'in {target}); to back the store up, copy it (sqlite3 {target} ".backup '
        'FILE") instead of linking it',
        path=path,
    )


def _set_aside(other: Path, target: Path) -> bool:
    """Whether `other` is a name the agent gives a store file it sets aside with its
    sidecars (agent.store._files.aside_name: `<store>.corrupt-20261126T155614Z[.2]`)."""
    return re.fullmatch(re.escape(target.name) + _ASIDE, other.name) is not None


def _quarantine_cut(aside: Path, target: Path) -> bool:
    """Finish a quarantine a kill -9 cut between its renames: the damaged store already
    set aside as `<store>.corrupt-<time>`, its -wal/-shm still at the store's name
    (agent.store._files.move_aside). They follow it, as the evidence they are; refused,
    the agent did not start, advising to put the damaged file back. True when done."""
    if not re.fullmatch(re.escape(target.name) + _CORRUPT, aside.name):
        return False
    sides = ("-wal", "-shm")
    if any(aside.with_name(aside.name + s).exists() for s in sides):
        return False
    for suffix in sides:
        with contextlib.suppress(FileNotFoundError):
            os.replace(target.with_name(target.name + suffix), aside.with_name(aside.name + suffix))
    fsync_dir(target.parent)
    log.error(
        "STORE CORRUPT: finished setting the damaged store %s aside (cut off by a kill): "
        "its WAL moved beside it, NOT deleted, keep them for recovery. A fresh store is "
        "made at %s; alerts not yet delivered from the old file are NOT in it",
        aside,
        target,
    )
    return True


def refuse_unpaired_wal(path: Path) -> None:
    """Refuse a WAL (and -shm) beside the store that was written for another file.

    Raises:
        StoreError: the WAL holds frames SQLite would lay over (or delete beside) a file
            that is not the one they were written for; nothing was changed.
    """
    target = store_file(path)
    wal = target.with_name(target.name + "-wal")
    wal_size = _wal_page_size(wal)
    if wal_size is None or _lock_held(path):
        # A running agent's own WAL: it recovers a file replaced under it by itself (and
        # `requeue` beside it refuses a file the agent does not hold).
        return
    shm = target.with_name(target.name + "-shm")
    files = f"{wal} and {shm}" if shm.exists() else str(wal)
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    mark = _read_mark(path)
    if mark is not None and _mark_copied(path, mark):
        mark = None  # the folder was copied whole: no inode is the one recorded
    home = [p for p in _names_of(target.parent, mark.store) if p != target] if mark else []
    if st is None and len(home) == 1 and _quarantine_cut(home[0], target):
        return
    if mark is not None and st is not None and home and all(_set_aside(p, target) for p in home):
        # The agent moves a file aside only with its -wal/-shm (quarantine, recovery): the
        # WAL here is the file's made in its place by an agent that kept no mark (a
        # rollback to a release before it). Refused, the advice put the damaged file back.
        log.warning(
            "%s records %s, which an agent set aside; %s was made after it without a new "
            "mark (an earlier release ran): its WAL is kept",
            inode_path(path),
            home[0],
            target,
        )
        mark, home = None, []
    why: str | None = None
    if st is None or st.st_size == 0:
        why = (
            f"there is no database at {target} (moved away?): SQLite would delete the WAL, "
            "and the alerts in it"
        )
    elif (db_size := _db_page_size(target)) is not None and db_size != wal_size:
        why = (
            f"the WAL's pages are {wal_size} bytes, {target}'s are {db_size}: it was "
            "written for another database"
        )
    elif mark is not None and st.st_ino != mark.store and _stable_inodes(target.parent):
        why = (
            f"{target} is not the file the agent last wrote (inode {st.st_ino}, the agent's "
            f"was {mark.store}: a backup moved over it?); SQLite would lay the WAL's pages over "
            "it (a corrupt store, or alerts lost)"
        )
    if why is None:
        return
    if home:
        back = (
            f"mv {home[0]} {target}"
            if st is None
            else (f"mv {target} {target}.other; mv {home[0]} {target}")
        )
        fix = (
            f"The WAL belongs to {home[0]}: put that file back ({back}), or "
            + (
                "start with a new, empty store"
                if st is None  # nothing at the store's path to keep
                else f"keep {target}"
            )
            + f" and move the WAL beside its own file (mv {wal} {home[0]}-wal"
            + (f"; mv {shm} {home[0]}-shm" if shm.exists() else "")
            + ")"
        )
    else:
        fix = (
            f"Put back the database file the WAL was written for at {target}, or, to "
            f"start from {target} as it is, move {files} aside (keep them: they hold "
            "alerts, readable with that database file)"
        )
    raise StoreError(
        f"{files} beside the store do not belong to {target}: {why}. Nothing was "
        f"changed. {fix}; then start again",
        path=path,
    )
