"""`edge-agent replay` start-up and .npz reading: what it imports and how much it holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

FS = 25600.0
N = 2560


def _save(path: Path, n: int, *, compressed: bool = True, fortran: bool = False) -> Path:
    rng = np.random.default_rng(5)
    acc = np.round(rng.normal(0, 100, (n, N, 2))).astype(np.int16)
    save = np.savez_compressed if compressed else np.savez
    save(path, acc=np.asfortranarray(acc) if fortran else acc, scale_g=np.float32(0.002),
         t_s=np.arange(n) * 10.0, fs_hz=np.float32(FS))  # fmt: skip
    return path


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
