"""Recordings `edge-agent replay` reads: snapshots of (time, sampling rate, channel samples).

- A FEMTO/PRONOSTIA .npz file (keys acc int16 or float (N, n, 2), scale_g, t_s, fs_hz;
  channels "h" and "v"), see ../shared/data/femto/README.md. acc is read a chunk of
  snapshots at a time, the next chunk decompressing in a worker thread while the current
  one is analysed (memory stays bounded; damage is found when its chunk is read).
- A folder in the original PRONOSTIA layout: one acc_NNNNN.csv per snapshot, no header, one
  row per sample: hour, minute, second, microsecond, horizontal g, vertical g (',' or ';'
  separated; with ';', a ',' is a decimal mark, as European spreadsheets write it). The
  snapshot's time is its first row's time of day (on the date of --start, rolling over at
  midnight); the sampling rate comes from the rows' own times.
- A folder of CSV snapshots with a header: one file per snapshot, read in name order; first
  line the channel names (e.g. `h,v` or `x,y,z`), then one row per sample in g. Optional
  comment lines before the header set `# fs_hz=25600` and `# timestamp=...Z`; without them
  --fs-hz and --start + i x --interval-s are used.
A header-less CSV of any other shape is an error: its first row is never taken for names.
"""

from __future__ import annotations

import io
import math
import re
import stat
import warnings
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from agent.records import format_ts

__all__ = ["RecordingError", "Snapshot", "parse_start", "snapshots"]

_NPZ_CHANNELS = ("h", "v")
PRONOSTIA_CHANNELS = ("h", "v")
_PRONOSTIA_COLUMNS = 6
_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
_DAY_S = 86400.0
_TIME_OF_DAY_TOPS = (24, 60, 61, 1e6)  # hour, minute, second (a leap second), microsecond
MIN_SAMPLES = 16  # the features need at least this many samples per channel
_MAX_FILE_BYTES = 64 * 2**20  # one snapshot; anything larger is not a snapshot
_MAX_T_S = 1e10  # 300 years of seconds: a larger t_s is a corrupt value, not a time
# No vibration recording samples outside this (the agent's MQTT decoders take 100 Hz to
# 200 kHz by default); 1e308 Hz, a corrupt field or a typo, overflows the spectra.
FS_RANGE_HZ = (1.0, 1e7)


class RecordingError(ValueError):
    """A recording that cannot be read as snapshots (the message names the file)."""


def rate_problem(fs: float) -> str | None:
    """Why a sampling rate is no sampling rate of a vibration recording, or None."""
    lo, hi = FS_RANGE_HZ
    if lo <= fs <= hi:  # NaN fails it too
        return None
    return f"expected a sampling rate of {lo:g} to {hi:g} Hz"


def _check_rate(fs: float, what: str) -> float:
    problem = rate_problem(fs)
    if problem is not None:
        raise RecordingError(f"{what} {fs:.3g} Hz; {problem}")
    return fs


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One snapshot of a recording."""

    at: datetime
    fs_hz: float
    channels: dict[str, np.ndarray]
    source: str  # file (and index) it came from, for messages


def parse_start(text: str) -> datetime:
    """An ISO-8601 time; UTC when it carries no offset."""
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


_NPZ_KEYS = ("acc", "scale_g", "t_s", "fs_hz")


def _scalar(data: Any, key: str, path: Path, what: str) -> float:
    """A positive finite number stored as a one-element array (scale_g, fs_hz)."""
    value = np.asarray(data[key])
    if value.size != 1 or not np.issubdtype(value.dtype, np.number):
        raise RecordingError(f"{path}: {key} must be one number ({what}); got shape {value.shape}")
    x = float(value.reshape(()).real)
    if not (math.isfinite(x) and x > 0):
        raise RecordingError(f"{path}: {key} is {x:g}; expected {what}, finite and > 0")
    return x


def _after(start: datetime, seconds: float, where: str, check: str) -> datetime:
    """start + seconds; a time past the year 9999 (a corrupt time, an absurd --interval-s)
    is a RecordingError naming the file and what to check."""
    try:
        return start + timedelta(seconds=seconds)
    except OverflowError:
        raise RecordingError(
            f"{where}: {format_ts(start)} + {seconds:g} s is past the year 9999; check {check}"
        ) from None


class _Npz:
    """A FEMTO .npz opened and checked, its acc array read in chunks of snapshots on
    demand (not all at once: memory stays bounded however long the recording)."""

    def __init__(self, path: Path, data: Any) -> None:
        missing = [k for k in _NPZ_KEYS if k not in data.files]
        if missing:
            raise RecordingError(
                f"{path}: not a FEMTO .npz: missing {', '.join(missing)} (expected keys "
                f"{', '.join(_NPZ_KEYS)}: acc (N, samples, 2), scale_g, t_s (N,), fs_hz)"
            )
        self.path, self.done = path, 0
        self._member, self._loaded = _acc_member(data), None
        try:
            self._check(data)
        except BaseException:
            self.close()
            raise

    def _check(self, data: Any) -> None:
        path = self.path
        if self._member is None:  # not a plain .npy member: numpy reads (and refuses) it
            self._loaded = data["acc"]
            dtype, shape = self._loaded.dtype, self._loaded.shape
        else:
            dtype, shape = self._member[1], self._member[2]
        t_s = np.asarray(data["t_s"])
        self.scale = _scalar(data, "scale_g", path, "g per count")
        self.fs = _check_rate(
            _scalar(data, "fs_hz", path, "the sampling rate in Hz"), f"{path}: fs_hz is"
        )
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise RecordingError(f"{path}: acc holds {dtype} values; expected integers or floats")
        if len(shape) != 3 or shape[2] != len(_NPZ_CHANNELS) or t_s.shape != shape[:1]:
            raise RecordingError(f"{path}: acc must be (N, samples, 2) with one t_s per snapshot")
        if shape[1] < MIN_SAMPLES:
            raise RecordingError(
                f"{path}: {shape[1]} sample(s) per snapshot; a snapshot needs {MIN_SAMPLES}"
            )
        if not np.issubdtype(t_s.dtype, np.number) or np.iscomplexobj(t_s):
            raise RecordingError(f"{path}: t_s holds {t_s.dtype} values; expected seconds")
        self.t_s = t_s.astype(np.float64)
        bad = np.flatnonzero(~(np.abs(self.t_s) < _MAX_T_S))  # NaN too
        if bad.size:
            raise RecordingError(
                f"{path}: t_s[{bad[0]}] is {self.t_s[bad[0]]:g}; every snapshot needs a time in "
                f"seconds since the first (finite, within +-{_MAX_T_S:g})"
            )
        self.dtype, self.shape = np.dtype(dtype), tuple(shape)

    def close(self) -> None:
        if self._member is not None:
            self._member[0].close()

    def chunk(self) -> np.ndarray | None:
        """The next up to _NPZ_CHUNK snapshots (count, samples, 2), or None at the end."""
        count = min(_NPZ_CHUNK, self.shape[0] - self.done)
        if count <= 0:
            return None
        if self._member is None:
            assert self._loaded is not None
            out = self._loaded[self.done : self.done + count]
        else:
            size = count * self.shape[1] * self.shape[2] * self.dtype.itemsize
            try:
                raw = self._member[0].read(size)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise _not_npz(self.path, exc) from None
            if len(raw) != size:
                raise _not_npz(self.path, EOFError())
            out = np.frombuffer(raw, self.dtype).reshape(count, *self.shape[1:])
        self.done += count
        return out


_NPZ_CHUNK = 32  # snapshots per read: 330 kB of int16 for FEMTO's 2 x 2560 samples


def _acc_member(data: Any) -> tuple[Any, np.dtype, tuple[int, ...]] | None:
    """(open file positioned at the data, dtype, shape) of acc.npy in the archive when it is
    a C-ordered array without Python objects; None for numpy to read it whole instead."""
    if "acc.npy" not in data.zip.namelist():
        return None
    f = data.zip.open("acc.npy")
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            fortran, dtype, shape = True, None, ()
    except BaseException:
        f.close()
        raise
    if fortran or dtype is None or dtype.hasobject:
        f.close()
        return None
    return f, dtype, shape


def _not_npz(path: Path, exc: BaseException) -> RecordingError:
    # numpy's own words mislead here (allow_pickle=...): say what the file must be
    return RecordingError(
        f"{path}: not a .npz archive of numeric arrays ({type(exc).__name__}); "
        "write one with numpy.savez"
    )


def _read_ahead(read: Callable[[], np.ndarray | None]) -> Iterator[np.ndarray]:
    """read() until None, one call ahead in a worker thread: zlib inflates without the
    GIL, so the next chunk decompresses while the current one is analysed."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-read") as pool:
        ahead = pool.submit(read)
        while (chunk := ahead.result()) is not None:
            ahead = pool.submit(read)
            yield chunk


def _npz(path: Path, start: datetime) -> Iterator[Snapshot]:
    try:
        with np.load(path) as data:
            npz = _Npz(path, data)
            try:
                i = 0
                for chunk in _read_ahead(npz.chunk):
                    for acc in chunk:
                        where = f"{path}[{i}]"
                        at = _after(start, float(npz.t_s[i]), where, "t_s and --start")
                        channels = {ch: acc[:, k] * npz.scale for k, ch in enumerate(_NPZ_CHANNELS)}
                        yield Snapshot(at, npz.fs, channels, where)
                        i += 1
            finally:
                npz.close()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, RecordingError):
            raise
        raise _not_npz(path, exc) from None


def _numbers(text: str, columns: int, where: str, first_line: int = 1) -> np.ndarray:
    """Rows of `columns` numbers from CSV text (',' or ';'), fast; `first_line` is the
    text's first line number in the file, for messages."""
    text = text.replace("\r", "")
    if ";" in text:  # ';'-separated (a European spreadsheet): ',' is the decimal mark
        text = text.replace(",", ".").replace(";", ",")
    _rows_of(text, columns, where, first_line)
    text = text.strip()
    if "\n\n" in text:
        text = "\n".join(line for line in text.split("\n") if line.strip())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy only warns about text it cannot read
        try:
            flat = np.fromstring(text.replace("\n", ","), sep=",")  # type: ignore[call-overload]
        except (ValueError, DeprecationWarning) as exc:
            raise RecordingError(f"{where}: a value that is not a number ({exc})") from exc
    if flat.shape[0] == 0 or flat.shape[0] % columns:
        raise RecordingError(
            f"{where}: expected rows of {columns} numbers; the file holds {flat.shape[0]} "
            "values (a missing or extra value, or text among the numbers)"
        )
    return np.asarray(flat.reshape(-1, columns))


def _rows_of(text: str, columns: int, where: str, first_line: int) -> None:
    """Every non-blank line holds `columns` fields. The values are read as one flat list:
    a row short of a value and a later one with an extra value would still add up, and
    every row between them would be read shifted by one channel, without a word."""
    for n, line in enumerate(text.split("\n"), first_line):
        if line.strip() and line.count(",") != columns - 1:
            raise RecordingError(
                f"{where}:{n}: expected {columns} values per row, one per channel; got "
                f"{line.count(',') + 1}: {line[:80]!r}"
            )


def _read(path: Path) -> str:
    # A named pipe would block open() forever without a writer, and with one be read whole
    # whatever its size: only regular files are snapshots. The read is bounded too, for a
    # file that grows after its size was looked at.
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise RecordingError(f"{path}: not a regular file; one file per snapshot")
    raw = b""
    if info.st_size <= _MAX_FILE_BYTES:
        with path.open("rb") as f:
            raw = f.read(_MAX_FILE_BYTES + 1)
    if info.st_size > _MAX_FILE_BYTES or len(raw) > _MAX_FILE_BYTES:
        raise RecordingError(f"{path}: larger than 64 MiB; one file should be one snapshot")
    try:  # newlines as read_text() gives them: \r\n and \r are line ends
        return raw.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        raise RecordingError(f"{path}: not UTF-8 text") from exc


def _fields(line: str) -> list[str]:
    """A line's fields: split on ';' when it has one (then ',' is the decimal mark, as a
    European spreadsheet writes it), else on ','."""
    if ";" in line:
        return [f.strip().replace(",", ".") for f in line.strip().split(";")]
    return [f.strip() for f in line.strip().split(",")]


def _pronostia_rows(text: str, first: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(the two acceleration columns, the first and last rows' times of day in s).

    numpy's C reader parses only the acceleration columns (3x faster than every value); a
    count of separators proves that every row has the six fields.
    """
    sep = ";" if ";" in first else ","
    if sep == ";" and "," in text:  # decimal commas: numpy's reader wants points
        text = text.replace(",", ".")
    last = text.rstrip().rsplit("\n", 1)[-1]
    try:
        rows = np.loadtxt(io.StringIO(text), delimiter=sep, usecols=(4, 5), ndmin=2)
        ends = np.array([[float(x) for x in _fields(line)[:4]] for line in (first, last)])
    except ValueError as exc:
        raise RecordingError(f"{where}: not rows of {_PRONOSTIA_COLUMNS} numbers ({exc})") from exc
    if rows.shape[0] < MIN_SAMPLES:
        raise RecordingError(f"{where}: {rows.shape[0]} rows; a snapshot needs {MIN_SAMPLES}")
    if text.count(sep) != (_PRONOSTIA_COLUMNS - 1) * rows.shape[0]:
        raise RecordingError(
            f"{where}: expected rows of {_PRONOSTIA_COLUMNS} numbers; {rows.shape[0]} rows hold "
            f"{text.count(sep) + rows.shape[0]} values (a missing or extra value)"
        )
    for row, line in zip(ends, (1, rows.shape[0]), strict=True):
        # A time of day out of range would shift the snapshot by hours without a word.
        if not all(0 <= x < top for x, top in zip(row, _TIME_OF_DAY_TOPS, strict=True)):
            raise RecordingError(
                f"{where}:{line}: {', '.join(f'{x:g}' for x in row)} is no time of day (hour "
                "0-23, minute 0-59, second 0-59, microsecond 0-999999 in the first 4 columns)"
            )
    secs = ends[:, 0] * 3600.0 + ends[:, 1] * 60.0 + ends[:, 2] + ends[:, 3] * 1e-6
    return rows, secs


def _pronostia(files: list[Path], start: datetime, fs_hz: float | None) -> Iterator[Snapshot]:
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    last = -1.0
    for f in files:
        text = _read(f)
        first = text.split("\n", 1)[0]
        fields = _fields(first)
        if len(fields) != _PRONOSTIA_COLUMNS or not all(_NUMBER.match(x) for x in fields):
            raise RecordingError(
                f"{f}:1: not the PRONOSTIA layout (no header; {_PRONOSTIA_COLUMNS} numbers per "
                f"row: hour, minute, second, microsecond, horizontal g, vertical g); got "
                f"{len(fields)} field(s): {first[:80]!r}"
            )
        rows, secs = _pronostia_rows(text, first, str(f))
        span = float(secs[-1] - secs[0])
        if span < 0:  # begun before midnight, ended after: a snapshot lasts far less than a day
            span += _DAY_S
        fs = (rows.shape[0] - 1) / span if span > 0 else fs_hz
        if fs is None:
            raise RecordingError(f"{f}: the rows' times do not advance; give --fs-hz")
        if span > 0:
            _check_rate(fs, f"{f}: the rows' times give")
        of_day = float(secs[0])
        if of_day < last - _DAY_S / 2:  # the clock passed midnight
            day = _after(day, _DAY_S, str(f), "--start")
        last = of_day
        channels = {ch: rows[:, k] for k, ch in enumerate(PRONOSTIA_CHANNELS)}
        yield Snapshot(_after(day, of_day, str(f), "--start"), float(fs), channels, str(f))


def _with_header(
    files: list[Path], start: datetime, interval_s: float, fs_hz: float | None
) -> Iterator[Snapshot]:
    for i, f in enumerate(files):
        meta: dict[str, str] = {}
        lines = _read(f).split("\n")
        n = 0
        while n < len(lines) and lines[n].startswith("#"):
            key, _, value = lines[n][1:].partition("=")
            meta[key.strip()] = value.strip()
            n += 1
        if n >= len(lines) or not lines[n].strip():
            raise RecordingError(f"{f}: no header line of channel names (e.g. 'h,v')")
        names = _fields(lines[n])
        if all(_NUMBER.match(x) for x in names):
            raise RecordingError(
                f"{f}:{n + 1}: no header line (the first row is numbers, {len(names)} of them); "
                "a header-less CSV must be the PRONOSTIA layout (acc_NNNNN.csv, 6 columns: "
                "hour, minute, second, microsecond, horizontal g, vertical g). Otherwise start "
                "the file with the channel names, e.g. 'h,v'"
            )
        if len(set(names)) != len(names) or not all(names):
            raise RecordingError(f"{f}:{n + 1}: channel names must be distinct and non-empty")
        data = _numbers("\n".join(lines[n + 1 :]), len(names), str(f), n + 2)
        try:
            fs = float(meta["fs_hz"]) if "fs_hz" in meta else fs_hz
            stamp = parse_start(meta["timestamp"]) if "timestamp" in meta else None
        except ValueError as exc:
            raise RecordingError(f"{f}: bad '# fs_hz=' or '# timestamp=' line: {exc}") from exc
        at = stamp or _after(start, i * interval_s, str(f), "--start and --interval-s")
        if fs is None:
            raise RecordingError(f"{f}: no '# fs_hz=' line and no --fs-hz")
        if not (math.isfinite(fs) and fs > 0):
            raise RecordingError(
                f"{f}: '# fs_hz={meta['fs_hz']}': expected the sampling rate in Hz, finite and > 0"
            )
        if "fs_hz" in meta:
            _check_rate(fs, f"{f}: '# fs_hz={meta['fs_hz']}' is")
        if data.shape[0] < MIN_SAMPLES:
            raise RecordingError(f"{f}: {data.shape[0]} rows; a snapshot needs {MIN_SAMPLES}")
        yield Snapshot(at, fs, {name: data[:, k] for k, name in enumerate(names)}, str(f))


def snapshots(
    source: Path, *, start: datetime, interval_s: float, fs_hz: float | None
) -> Iterator[Snapshot]:
    """The snapshots of a recording, in recording order (see the module docstring).

    Raises:
        RecordingError: (possibly while iterating) the recording cannot be read.
    """
    if source.is_file() and source.suffix == ".npz":
        return _npz(source, start)
    if not source.is_dir():
        raise RecordingError(f"{source}: expected a .npz file or a folder of CSV snapshots")
    acc = sorted(source.glob("acc_*.csv"))
    if acc:
        return _pronostia(acc, start, fs_hz)
    files = sorted(source.glob("*.csv"))
    if not files:
        raise RecordingError(f"{source}: no acc_*.csv or *.csv files in this folder")
    return _with_header(files, start, interval_s, fs_hz)
