"""`edge-agent replay --plot` on the gateway's own install (`pip install -e .`, no plot extra):
the message must say how to get matplotlib without pointing at another project."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _plot_extra() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["optional-dependencies"]["plot"])


def test_plot_without_matplotlib_names_this_distributions_extra(tmp_path: Path) -> None:
    """It said "pip install 'edge-agent[plot]'": edge-agent on the package index is an
    unrelated project (the README says never to install it), so an integrator who copied
    the hint installed someone else's code and still had no plot."""
    rec = tmp_path / "rec.npz"
    acc = np.zeros((3, 2560, 2), dtype=np.int16)
    np.savez(rec, acc=acc, scale_g=np.float64(0.001), t_s=np.arange(3) * 10.0, fs_hz=25600.0)
    # The non-dev install has no matplotlib: an import of it fails as it does there.
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "from agent.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    png = tmp_path / "story.png"
    proc = subprocess.run(
        [sys.executable, "-c", code, "replay", "--plot", str(png), str(rec)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    (requirement,) = _plot_extra()
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        "replay: --plot needs matplotlib (the optional plot extra): install it with "
        f"{sys.executable} -m pip install '{requirement}' (or from the checkout: "
        "pip install -e '.[plot]'), or leave --plot out\n"
    )
    assert not png.exists()


def test_replay_help_names_no_other_project() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "replay", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0
    assert "edge-agent[" not in proc.stdout
    assert "pip install -e '.[plot]'" in " ".join(proc.stdout.split())
