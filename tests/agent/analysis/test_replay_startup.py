"""`edge-agent replay` start-up and .npz reading: what it imports and how much it holds."""

from __future__ import annotations

import io
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np

from agent.cli import _parser
from agent.replay import replay, run

FS = 25600.0
N = 2560


def _save(path: Path, n: int, *, compressed: bool = True, fortran: bool = False) -> Path:
    rng = np.random.default_rng(5)
    acc = np.round(rng.normal(0, 100, (n, N, 2))).astype(np.int16)
    save = np.savez_compressed if compressed else np.savez
    save(path, acc=np.asfortranarray(acc) if fortran else acc, scale_g=np.float32(0.002),
         t_s=np.arange(n) * 10.0, fs_hz=np.float32(FS))  # fmt: skip
    return path


def _output(path: Path) -> str:
    out = io.StringIO()
    replay(_parser().parse_args(["replay", str(path)]), out)
    return out.getvalue()


def test_replay_starts_without_yaml_the_config_checks_or_asyncio(tmp_path: Path) -> None:
    """A replay from flags used to import the YAML loader, the config checks (cross
    references, messages) and asyncio: about 60 ms of a 1.2 s replay, for nothing."""
    path = _save(tmp_path / "rec.npz", 3)
    code = (
        "import sys\n"
        "from agent.cli import main\n"
        f"assert main(['replay', {str(path)!r}]) == 0\n"
        "unneeded = ('yaml', 'asyncio', 'agent.config._loader', 'agent.config._check',\n"
        "            'agent.config._crossref', 'agent.config._messages')\n"
        "print([m for m in unneeded if m in sys.modules], file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, b"[]\n")
    # the lazily imported names are still there for the commands that use them
    from agent.config import check_file, load_config, main_check

    assert callable(load_config) and callable(check_file) and callable(main_check)


def test_npz_is_read_a_chunk_at_a_time_with_the_same_output(tmp_path: Path) -> None:
    """The whole acc array (2 bytes x 2 x 2560 per snapshot: 28 MB for Bearing1_1) used to
    be decompressed before the first snapshot; now a chunk at a time, the next one in a
    worker thread. Compressed, uncompressed and Fortran-ordered archives (numpy reads the
    last whole) give the same output."""
    n = 800  # acc: 8.2 MB
    path = _save(tmp_path / "rec.npz", n)
    tracemalloc.start()
    try:
        text = _output(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5e6, peak  # was 7.7 MB at 600 snapshots (the whole acc); now 3.2 MB
    assert '"snapshots":800' in text.splitlines()[-1]
    assert _output(_save(tmp_path / "plain.npz", n, compressed=False)) == text
    assert _output(_save(tmp_path / "fortran.npz", n, fortran=True)) == text


def test_a_corrupt_or_cut_npz_is_one_line_naming_the_file(tmp_path: Path, capsys: object) -> None:
    """Data damaged inside the archive is found when read (the zip checksum): exit 2 and one
    line, never an internal error."""
    good = _save(tmp_path / "rec.npz", 100).read_bytes()
    bad = bytearray(good)
    mid = len(bad) // 2
    bad[mid : mid + 4096] = b"\xff" * 4096
    cut = tmp_path / "cut.npz"
    cut.write_bytes(bytes(bad))
    args = _parser().parse_args(["replay", str(cut)])
    assert run(args) == 2
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert err == (
        f"replay: {cut}: not a .npz archive of numeric arrays (BadZipFile); "
        "write one with numpy.savez\n"
    )
