"""`edge-agent replay`: synthetic run-to-failure recordings, the PRONOSTIA CSV layout, flags
checked like `check` checks YAML, the summary line and the plot, and the FEMTO bearings."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent.cli import _parser
from agent.replay import replay, run
from tests.agent._configs import press_config

FS = 25600.0
N = 2560


def _recording(path: Path, seed: int = 7) -> tuple[float, float]:
    """100 healthy snapshots, then sigma grows x e^(r t); returns (last t, failure t)."""
    rng = np.random.default_rng(seed)
    step, healthy, degrading = 60.0, 100, 330
    growth = math.log(10.0) / (10 * 3600.0)  # x10 in 10 h
    t = np.arange(healthy + degrading) * step
    sigma = 0.1 * np.exp(growth * np.maximum(t - t[healthy], 0.0))
    acc = rng.normal(0.0, 1.0, (t.shape[0], N, 2)) * sigma[:, None, None]
    scale = 1e-4
    np.savez(path, acc=np.round(acc / scale).astype(np.int16), scale_g=np.float32(scale),
             t_s=t, fs_hz=np.float32(FS))  # fmt: skip
    # The failure metric is the snapshot peak: measure its mean ratio to sigma.
    peak_over_sigma = float(np.mean(np.abs(acc).max(axis=1) / sigma[:, None]))
    threshold_sigma = 4.0 / peak_over_sigma
    fail_t = t[healthy] + math.log(threshold_sigma / 0.1) / growth
    return float(t[-1]), float(fail_t)


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["replay", *argv])


def _lines(args: argparse.Namespace) -> tuple[int, list[dict]]:
    out = io.StringIO()
    n = replay(args, out)
    return n, [json.loads(x) for x in out.getvalue().splitlines()]


FAILURE = ("--failure-metric", "accel_peak_g", "--failure-threshold", "4")


def test_replay_alerts_before_failure_and_bounds_contain_truth(tmp_path: Path) -> None:
    """Four synthetic run-to-failure recordings (two channels each): an early alert on every
    one, estimates close to the truth, and 95 % bounds that contain it nearly always (a
    calibrated 95 % interval may miss 1 in 20; measured on 20: 18 covered)."""
    covered, total = 0, 0
    for seed in range(4):
        path = tmp_path / f"run{seed}.npz"
        last_t, fail_t = _recording(path, seed)
        n, lines = _lines(_args(str(path), *FAILURE, "--planning-horizon-hours", "12"))
        alerts, estimates, summary = lines[:n], lines[n:-1], lines[-1]
        assert [a["seq"] for a in alerts] == list(range(1, n + 1))
        assert all(a["gateway_id"] == "replay" for a in alerts)
        trend = [a for a in alerts if a["kind"] == "trend" and a["state"] == "raised"]
        assert trend, "no early-detection alert"
        assert [e["sensor"]["channel"] for e in estimates] == ["h", "v"]
        truth_h = (fail_t - last_t) / 3600.0
        for e in estimates:
            ttf = e["time_to_failure"]
            assert ttf is not None, e.get("no_estimate_reason")
            assert ttf["model"] == "bayes-exponential"
            assert abs(ttf["hours"] - truth_h) < 0.15 * truth_h, (seed, ttf, truth_h)
            assert e["progression"]["rate_per_day"] > 0
            covered += ttf["lower_hours"] <= truth_h <= ttf["upper_hours"]
            total += 1
        # The summary tells the story: first alert, lead to the end, estimates over time.
        assert (
            summary["kind"] == "summary" and summary["first_alert"]["at"] == trend[0]["detected_at"]
        )
        lead = summary["first_alert"]["lead_time_hours"]
        assert 0 < lead < last_t / 3600
        assert summary["time_to_failure"]["hours"] == min(
            e["time_to_failure"]["hours"] for e in estimates
        )
        series = summary["estimates"]["h"]
        assert len(series["at"]) == len(series["hours"]) == len(series["model"]) > 100
    assert covered >= 0.8 * total, (covered, total)


def test_with_a_prior_every_cut_of_a_recording_gets_an_estimate_with_its_basis(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.npz"
    _recording(path, 1)
    prior = ("--prior-life-hours", "9,14", "--age-hours", "2")
    models = []
    for limit in ("5", "80", "200", "430"):  # learning the baseline, healthy, onset, late
        _, lines = _lines(_args(str(path), *FAILURE, *prior, "--limit", limit))
        summary = lines[-1]
        ttf = summary["time_to_failure"]
        assert ttf is not None and ttf["lower_hours"] <= ttf["hours"] <= ttf["upper_hours"]
        assert ttf["summary"] and set(ttf["terms"]) <= {"reliability_prior", "degradation_trend"}
        models.append(ttf["model"])
    assert models[:2] == ["reliability-prior", "reliability-prior"]
    assert "bayes-exponential" in models[-1]
    _, lines = _lines(_args(str(path), *FAILURE, *prior, "--limit", "5"))
    est = lines[-2]
    assert est["progression"] is None
    assert est["no_estimate_reason"].startswith("no degradation seen yet (learning the baseline")
    assert "at age 2.0" in est["no_estimate_reason"]  # age at the first snapshot + 4 x 60 s
    # The point is conservative by default (lowest quarter); --point-tail 1 moves only it.
    default, wider = (
        _lines(_args(str(path), *FAILURE, *prior, "--limit", "80", *tail))[1][-1]["time_to_failure"]
        for tail in ((), ("--point-tail", "1")))  # fmt: skip
    assert default["lower_hours"] < default["hours"] < wider["hours"] < default["upper_hours"]
    assert (default["lower_hours"], default["upper_hours"]) == (
        wider["lower_hours"], wider["upper_hours"])  # fmt: skip


def _pronostia(folder: Path, times: list[tuple[int, int, int]], cols: int = 6) -> None:
    rng = np.random.default_rng(0)
    for i, (h, m, s) in enumerate(times, start=1):
        us = np.arange(N) * 1e6 / FS
        rows = [
            f"{h},{m},{s + int(u // 1e6)},{u % 1e6:.1f},{a:.3f},{b:.3f}"
            for u, a, b in zip(us, *rng.normal(0, 0.3, (2, N)), strict=True)
        ]
        if cols != 6:
            rows = [",".join(r.split(",")[:cols]) for r in rows]
        (folder / f"acc_{i:05d}.csv").write_text("\n".join(rows) + "\n")
    (folder / "temp_00001.csv").write_text("9,39,39,0,80.1\n")  # ignored: not a vibration file


def test_the_original_pronostia_csv_layout_is_read_directly(tmp_path: Path) -> None:
    times = [(23, 59, 30), (23, 59, 40), (23, 59, 50), (0, 0, 0), (0, 0, 0), (0, 0, 10)]
    _pronostia(tmp_path, times)
    _, lines = _lines(_args(str(tmp_path), "--start", "2012-03-04T00:00:00Z",
                            "--prior-life-hours", "2.5"))  # fmt: skip
    summary = lines[-1]
    rec = summary["recording"]
    assert (rec["first"], rec["last"]) == ("2012-03-04T23:59:30.000Z", "2012-03-05T00:00:10.000Z")
    assert rec["snapshots"] == 5 and rec["skipped"] == {"time does not advance": 1}
    assert [e["sensor"]["channel"] for e in lines[:-1]] == ["h", "v"]
    assert summary["time_to_failure"]["model"] == "reliability-prior"


def test_a_headerless_csv_of_another_shape_is_an_error_not_channel_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _pronostia(tmp_path, [(9, 0, 0)], cols=5)
    assert run(_args(str(tmp_path))) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "acc_00001.csv:1: not the PRONOSTIA layout" in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "s1.csv").write_text("0.1,0.2\n0.3,0.4\n")
    assert run(_args(str(other), "--fs-hz", "25600")) == 2
    err = capsys.readouterr().err.strip()
    assert "s1.csv:1: no header line (the first row is numbers, 2 of them)" in err


def test_a_pronostia_row_with_a_missing_or_extra_value_is_an_error_with_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the acceleration columns are parsed (numpy's C reader), so a row with a seventh
    field, a row with five, or a snapshot too short to analyse must still be refused."""
    _pronostia(tmp_path, [(9, 0, 0)])
    f = tmp_path / "acc_00001.csv"
    rows = f.read_text().splitlines()
    for bad, message in (
        ([*rows[:5], rows[5] + ",0.1", *rows[6:]], "expected rows of 6 numbers; 2560 rows"),
        ([*rows[:5], rows[5].rsplit(",", 1)[0], *rows[6:]], "not rows of 6 numbers"),
        (rows[:3], "3 rows; a snapshot needs 16"),
    ):
        f.write_text("\n".join(bad) + "\n")
        assert run(_args(str(tmp_path))) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "acc_00001.csv: " + message in err, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--failure-metric", "accel_peak"], "--failure-metric 'accel_peak': unknown metric;"
         " valid names: accel_peak_g, accel_rms_g,"),
        (["--rpm", "-5"], "--rpm -5.0: expected greater than 0"),
        (["--rpm", "nan"], "--rpm nan: expected a finite number"),
        (["--failure-threshold", "inf"], "--failure-threshold inf: expected a finite number"),
        (["--planning-horizon-hours", "1e308"], "--planning-horizon-hours 1e+308: expected less"
         " than or equal to 87600"),
        (["--iso-group", "3"], "--iso-group 3: expected 1 or 2"),
        (["--prior-life-hours", "2.5,x"], "--prior-life-hours '2.5,x': expected completed"),
        (["--prior-life-hours", "1,,2"], "--prior-life-hours '1,,2': expected completed"),
        (["--prior-life-hours", "2.4,"], "--prior-life-hours '2.4,': expected completed"),
        (["--age-hours", "-1", "--prior-life-hours", "3"], "--age-hours -1.0: expected greater"),
        (["--limit", "0"], "--limit 0: expected at least 1 snapshot"),
        (["--point-tail", "0"], "--point-tail 0: expected a share in (0, 1]"),
        (["--start", "yesterday"], "--start 'yesterday': expected an ISO-8601 time"),
        (["--balls", "9"], "--balls, --ball-mm and --pitch-mm go together"),
        (["--balls", "13", "--ball-mm", "25.6", "--pitch-mm", "3.5"], "--balls/--ball-mm/"
         "--pitch-mm: ball_mm (25.6) must be smaller than pitch_mm (3.5)"),
    ],
)  # fmt: skip
def test_flags_are_checked_with_one_line_each(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(_args(str(tmp_path / "none.npz"), *argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"replay: {message}"), err
    if "accel_peak'" in message:
        assert "(did you mean 'accel_peak_g'?)" in err


def test_csv_folder_with_a_header_and_limit(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(4):
        f = tmp_path / f"snap{i:03d}.csv"
        rows = "\n".join(f"{a:.5f},{b:.5f}" for a, b in rng.normal(0, 0.1, (2560, 2)))
        f.write_text(f"# fs_hz=25600\n# timestamp=2026-01-01T00:0{i}:00Z\nx,y\n{rows}\n")
    n, lines = _lines(_args(str(tmp_path), "--limit", "3"))
    assert n == 0
    est = lines[:-1]
    assert [e["sensor"]["channel"] for e in est] == ["x", "y"]
    assert est[0]["at"] == "2026-01-01T00:02:00.000Z"
    assert "learning the baseline" in est[0]["no_estimate_reason"]


def test_plot_draws_the_story(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs the optional matplotlib extra")
    path = tmp_path / "run.npz"
    _recording(path, 2)
    png = tmp_path / "story.png"
    _lines(_args(str(path), *FAILURE, "--prior-life-hours", "9", "--plot", str(png)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


@pytest.mark.slow
@pytest.mark.femto
def test_femto_bearing_no_severity_from_unresolved_velocity_and_an_estimate_at_every_cut(
    femto_dir: Path,
) -> None:
    """Bearing3_1 (515 snapshots of 0.1 s, prior: Bearing3_2's life): no ISO severity alert
    (the 10-1000 Hz band is not resolved), the record says so, every cut has an estimate."""
    base = (str(femto_dir / "Bearing3_1.npz"), "--rpm", "1500", "--failure-metric",
            "accel_peak_g", "--failure-threshold", "20", "--prior-life-hours",
            "4.5444")  # fmt: skip
    n, lines = _lines(_args(*base))
    assert not [a for a in lines[:n] if a["kind"] == "severity"]
    for est in lines[n:-1]:
        assert est["severity"]["zone"] is None and "not resolved" in est["severity"]["standard"]
    summary = lines[-1]
    assert summary["first_alert"]["kind"] == "trend"
    for limit in ("30", "257", "480"):
        _, cut = _lines(_args(*base, "--limit", limit))
        ttf = cut[-1]["time_to_failure"]
        assert ttf is not None and ttf["lower_hours"] < ttf["upper_hours"] and ttf["summary"]


def _npz(path: Path, n: int = 20, **override: object) -> Path:
    """A small FEMTO-shaped .npz (int16 counts, 10 s apart), with keys replaced or dropped."""
    rng = np.random.default_rng(3)
    data: dict[str, object] = {
        "acc": np.round(rng.normal(0, 100, (n, N, 2))).astype(np.int16),
        "scale_g": np.float32(0.002),
        "t_s": np.arange(n) * 10.0,
        "fs_hz": np.float32(FS),
    }
    data.update(override)
    np.savez(path, **{k: v for k, v in data.items() if v is not None})
    return path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"fs_hz": np.float32(0)}, "fs_hz is 0; expected the sampling rate in Hz, finite and > 0"),
        ({"fs_hz": np.float64(np.inf)}, "fs_hz is inf; expected the sampling rate"),
        ({"fs_hz": np.float32(np.nan)}, "fs_hz is nan; expected the sampling rate"),
        ({"scale_g": np.float32(np.nan)}, "scale_g is nan; expected g per count"),
        ({"scale_g": np.array([0.002, 0.002])}, "scale_g must be one number (g per count)"),
        ({"acc": np.zeros((20, 1, 2), np.int16)}, "1 sample(s) per snapshot; a snapshot needs 16"),
        ({"acc": np.full((20, N, 2), "x")}, "acc holds <U1 values; expected integers or floats"),
        ({"t_s": np.where(np.arange(20) == 7, np.nan, np.arange(20) * 10.0)},
         "t_s[7] is nan; every snapshot needs a time"),
        ({"t_s": np.arange(20) * 1e12}, "t_s[1] is 1e+12; every snapshot needs a time"),
        ({"t_s": None, "fs_hz": None}, "not a FEMTO .npz: missing t_s, fs_hz (expected keys"),
    ],
)  # fmt: skip
def test_a_malformed_npz_is_one_line_naming_the_file_not_an_internal_error(
    override: dict[str, object], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sampling rate of 0 or NaN, a scale that is no number, snapshots of 1 sample, a time
    that is NaN or absurd: each used to end in an internal error (exit 70) deep in the
    analysis, or in NaN everywhere."""
    path = _npz(tmp_path / "rec.npz", **override)
    assert run(_args(str(path))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"replay: {path}: {message}"), err


def test_a_file_that_is_no_npz_archive_or_past_year_9999_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("not an archive\n")
    assert run(_args(str(text))) == 2
    err = capsys.readouterr().err
    assert err == f"replay: {text}: not a .npz archive of numeric arrays (ValueError); " \
        "write one with numpy.savez\n"  # fmt: skip
    path = _npz(tmp_path / "rec.npz")
    assert run(_args(str(path), "--start", "9999-12-31T23:59:00Z")) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "rec.npz[6]: 9999-12-31T23:59:00.000Z + 60 s is past the year 9999; check t_s" in err
    )


def test_nan_inf_and_flat_samples_are_skipped_per_channel_counted_and_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dropout (NaN/inf in a float recording, "nan" in a CSV) used to vanish inside the
    analysis: the summary claimed every snapshot analysed. A flat channel (a dead sensor)
    was taken for a quiet machine. Both are now skipped, counted and told on stderr."""
    acc = np.round(np.random.default_rng(4).normal(0, 100, (20, N, 2))) * 0.002
    acc[5, 9, 1], acc[12:, :, 0], acc[8] = np.nan, np.inf, 0.0  # v once, h from 12, both flat
    path = _npz(tmp_path / "rec.npz", acc=acc, scale_g=np.float32(1.0))
    _, lines = _lines(_args(str(path)))
    rec = lines[-1]["recording"]
    assert rec["skipped"] == {
        "samples not finite or beyond 1e+06 g (v)": 1,
        "flat samples (h)": 1,
        "flat samples (v)": 1,
        "samples not finite or beyond 1e+06 g (h)": 8,
    }
    assert rec["snapshots"] == 19  # snapshot 8 had no usable channel
    assert [e["at"] for e in lines[:-1]] == ["2026-01-01T00:01:50.000Z",  # h: last good is 11
                                             "2026-01-01T00:03:10.000Z"]  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"replay: note: skipped 1 x samples not finite or beyond 1e+06 g (v) (first: {path}[5]);"
    )
    folder = tmp_path / "csv"
    folder.mkdir()
    rows = ["0.1,0.2", "-0.1,nan", *(f"{a:.3f},{a / 2:.3f}" for a in np.linspace(-1, 1, 30))]
    (folder / "s1.csv").write_text("# fs_hz=25600\nx,y\n" + "\n".join(rows) + "\n")
    _, lines = _lines(_args(str(folder)))
    assert lines[-1]["recording"]["skipped"] == {"samples not finite or beyond 1e+06 g (y)": 1}


def test_the_femto_clock_step_is_skipped_and_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bearing1_1's t_s jumps back to -52.2 s at snapshots 2120-2121: they are skipped, and
    stderr says where (the same shape here: a step back, a duplicate)."""
    t = np.arange(20) * 10.0
    t[10:12] = -52.2
    path = _npz(tmp_path / "rec.npz", t_s=t)
    _, lines = _lines(_args(str(path)))
    assert lines[-1]["recording"]["skipped"] == {"time does not advance": 2}
    assert capsys.readouterr().err == (
        f"replay: note: skipped 2 x time does not advance (first: {path}[10]) "
        '(counts in the summary\'s "skipped")\n'
    )


def _replay_process(*argv: str, stdout: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "replay", *argv],
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
    )


def test_piping_into_head_exits_quietly(tmp_path: Path) -> None:
    """`edge-agent replay rec.npz | head -1`: the reader leaves before the output is written;
    that used to be reported as "replay: rec.npz: Broken pipe", exit 2, blaming the file."""
    path = _npz(tmp_path / "rec.npz")
    proc = _replay_process(str(path))
    assert proc.stdout is not None
    proc.stdout.close()  # like head -1 after its line: every write now fails with EPIPE
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (0, b"")


def test_ctrl_c_while_the_command_loads_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """A real SIGINT, sent while `replay` imports its analysis modules (the first half
    second of a run), used to print a KeyboardInterrupt traceback.

    The child first takes SIGINT as a terminal's process does: a suite started as a
    background job of a script (`pytest &`) inherits SIGINT ignored, and then the signal
    never interrupted the load (replay ran on and exited 2)."""
    code = (
        "import builtins, os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "real = builtins.__import__\n"
        "def hook(name, *a, **k):\n"
        "    if name == 'agent.analysis.monitor':\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = hook\n"
        "from agent.cli import main\n"
        f"sys.exit(main(['replay', {str(tmp_path / 'rec.npz')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (130, b"")


def test_a_bad_plot_path_is_refused_before_the_replay_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--plot to a folder used to write FOLDER.png next to it and exit 0; --plot out.txt ran
    the whole replay, then ended in an internal error. Both are one line before any output;
    a name without a suffix gets a PNG at that very name (not NAME.png)."""
    pytest.importorskip("matplotlib", reason="--plot needs the optional matplotlib extra")
    path = _npz(tmp_path / "rec.npz")
    folder = tmp_path / "plots"
    folder.mkdir()
    for target, message in (
        (folder, f"--plot {folder}: is a folder; give a file name, e.g. {folder}/story.png"),
        (tmp_path / "out.txt", f"--plot {tmp_path}/out.txt: .txt is no image format; use .png"),
        (tmp_path / "no" / "x.png", f"--plot {tmp_path}/no/x.png: folder {tmp_path}/no does not"),
    ):
        assert run(_args(str(path), "--plot", str(target))) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith(f"replay: {message}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots", "rec.npz"]
    assert run(_args(str(path), "--plot", str(tmp_path / "story"))) == 0
    assert (tmp_path / "story").read_bytes()[:4] == b"\x89PNG"


def _config_with_prior(tmp_path: Path) -> Path:
    cfg = press_config(tmp_path).model_dump(mode="json", by_alias=True)
    cfg["assets"][0]["reliability"] = {"class": "b6204", "lives_hours": [5.0], "age_hours": 2.0}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_age_and_prior_flags_replace_only_their_part_and_an_age_needs_a_prior(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With -c, --age-hours alone used to drop the file's life prior (no estimate at all) and
    --prior-life-hours alone reset the file's age to 0; --age-hours with no prior anywhere
    was ignored without a word."""
    rec, site = str(_npz(tmp_path / "rec.npz")), str(_config_with_prior(tmp_path))

    def basis(*argv: str) -> str:
        _, lines = _lines(_args(rec, "-c", site, "--limit", "1", *argv))
        ttf = lines[-1]["time_to_failure"]
        assert ttf is not None and ttf["model"] == "reliability-prior", lines[-1]
        return str(ttf["summary"])

    assert "at age 3 h" in basis("--age-hours", "3") and "1 life configured" in basis()
    assert "at age 2 h" in basis("--prior-life-hours", "9,14")
    assert "2 lives configured" in basis("--prior-life-hours", "9,14")
    assert run(_args(rec, "--age-hours", "5")) == 2
    err = capsys.readouterr().err
    assert err == "replay: --age-hours 5: an age needs a life prior; give --prior-life-hours " \
        "too (completed lives of comparable machines, e.g. 2.4,7.8)\n"  # fmt: skip
    assert run(_args(rec, "--age-hours", "inf", "--prior-life-hours", "3")) == 2
    assert capsys.readouterr().err == "replay: --age-hours inf: expected a finite number of hours\n"


def test_a_european_spreadsheet_csv_reads_as_the_same_recording(tmp_path: Path) -> None:
    """';' separators with decimal commas (a BOM and CRLF too, as Excel writes them) used to
    be read as twice the rows, integer and fraction parts apart: a silently wrong analysis
    (the header layout), or a refused PRONOSTIA file. Both now equal the plain file."""
    rng = np.random.default_rng(5)
    plain, euro = tmp_path / "plain", tmp_path / "euro"
    for layout in ("header", "pronostia"):
        for d in (plain, euro):
            d.mkdir()
        for i in range(3):
            a = rng.normal(0, 0.3, (N, 2))
            if layout == "header":
                rows = [f"{x:.4f},{y:.4f}" for x, y in a]
                head, name = ["# fs_hz=25600", "x,y"], f"s{i}.csv"
            else:
                us = np.arange(N) * 1e6 / FS
                rows = [f"9,0,{10 * i + int(u // 1e6)},{u % 1e6:.1f},{x:.4f},{y:.4f}"
                        for u, (x, y) in zip(us, a, strict=True)]  # fmt: skip
                head, name = [], f"acc_{i + 1:05d}.csv"
            text = "\n".join([*head, *rows]) + "\n"
            (plain / name).write_text(text)
            euro_text = text.replace(",", ";").replace(".", ",").replace("\n", "\r\n")
            (euro / name).write_bytes(b"\xef\xbb\xbf" + euro_text.encode())
        got = [_lines(_args(str(d), "--prior-life-hours", "3"))[1] for d in (plain, euro)]
        assert got[0] == got[1] and got[0][-1]["recording"]["snapshots"] == 3, layout
        assert got[0][-1]["recording"]["skipped"] == {}
        for d in (plain, euro):
            for f in d.iterdir():
                f.unlink()
            d.rmdir()


def test_a_csv_sampling_rate_of_inf_nan_or_0_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'# fs_hz=inf' was an internal error; nan and 0 were "no '# fs_hz=' line"."""
    rows = "\n".join(f"{a:.3f},{a:.3f}" for a in np.linspace(-1, 1, 32))
    for value in ("inf", "nan", "0"):
        (tmp_path / "s.csv").write_text(f"# fs_hz={value}\nx,y\n{rows}\n")
        assert run(_args(str(tmp_path))) == 2
        assert capsys.readouterr().err == (
            f"replay: {tmp_path}/s.csv: '# fs_hz={value}': expected the sampling rate in Hz, "
            "finite and > 0\n"
        )


def test_a_csv_time_past_9999_or_no_time_of_day_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--interval-s 1e300 was an internal error (OverflowError); a PRONOSTIA hour of 99 moved
    the snapshot four days on without a word."""
    rows = "\n".join(f"{a:.3f},{-a:.3f}" for a in np.linspace(-1, 1, 32))
    for i in range(2):
        (tmp_path / f"s{i}.csv").write_text(f"x,y\n{rows}\n")
    assert run(_args(str(tmp_path), "--fs-hz", "25600", "--interval-s", "1e300")) == 2
    assert capsys.readouterr().err == (
        f"replay: {tmp_path}/s1.csv: 2026-01-01T00:00:00.000Z + 1e+300 s is past the year 9999; "
        "check --start and --interval-s\n"
    )
    folder = tmp_path / "pronostia"
    folder.mkdir()
    _pronostia(folder, [(99, 0, 0)])
    assert run(_args(str(folder))) == 2
    assert capsys.readouterr().err.startswith(
        f"replay: {folder}/acc_00001.csv:1: 99, 0, 0, 0 is no time of day (hour 0-23,"
    )


def test_a_header_csv_row_short_of_a_value_is_an_error_even_if_a_later_row_has_one_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row missing a value and a later row with one too many hold the right number of
    values in all: every row between them would be read with h and v swapped, silently."""
    rows = [f"{i / 100:.2f},{-i / 100:.2f}" for i in range(1, 101)]
    rows[50] = "0.51"  # the vertical value lost
    rows[80] = "0.81,-0.81,0.99"  # a stray third value
    (tmp_path / "snap.csv").write_text("# fs_hz=1000\nh,v\n" + "\n".join(rows) + "\n")
    assert run(_args(str(tmp_path))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"replay: {tmp_path / 'snap.csv'}:53: expected 2 values" in err, err


@pytest.mark.parametrize("name", ["acc_00001.csv", "snap.csv"])
def test_a_fifo_among_the_csv_files_is_refused_not_waited_on(tmp_path: Path, name: str) -> None:
    """A named pipe called acc_00001.csv (a capture still streaming, a `mkfifo` left over)
    used to block the replay forever with no writer, and with one to be read whole into
    memory past the 64 MiB limit (1.8 GB resident for a 300 MB stream)."""
    os.mkfifo(tmp_path / name)
    proc = _replay_process(str(tmp_path))
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 2
    assert err.decode() == f"replay: {tmp_path / name}: not a regular file; one file per snapshot\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["--rpm", "1800", "--rpm", "1500"],
        ["--failure-metric", "accel_peak_g", "--failure-metric=kurtosis"],
        ["--prior-life-hours", "2,3", "--prior-life-hours", "4"],
    ],
)
def test_a_flag_given_twice_is_refused_not_the_last_kept(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`check` refuses a YAML key given twice (YAML keeps the last); the same flag twice on
    the command line (a copied command line, an alias plus its own flag) used to keep the
    last one without a word: --rpm 1800 --rpm 1500 replayed at 1500 rpm, exit 0."""
    with pytest.raises(SystemExit) as exc:
        _args("rec.npz", *argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"argument {argv[0]}: given twice" in err, err


def _rate_case(tmp_path: Path, case: str) -> list[str]:
    rows = "\n".join(f"{a:.3f},{-a:.3f}" for a in np.linspace(-1, 1, 32))
    if case == "npz":
        return [str(_npz(tmp_path / "rec.npz", fs_hz=np.float64(1e308)))]
    if case == "meta":
        (tmp_path / "s.csv").write_text(f"# fs_hz=1e308\nh,v\n{rows}\n")
        return [str(tmp_path)]
    if case == "flag":
        (tmp_path / "s.csv").write_text(f"h,v\n{rows}\n")
        return [str(tmp_path), "--fs-hz", "1e308"]
    # PRONOSTIA rows 0.01 us apart: their microsecond column gives 100 MHz
    lines = [f"9,0,0,{k / 100:.2f},{k % 3 / 10},{-k % 5 / 10}" for k in range(16)]
    (tmp_path / "acc_00001.csv").write_text("\n".join(lines) + "\n")
    return [str(tmp_path)]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("npz", "rec.npz: fs_hz is 1e+308 Hz; expected a sampling rate of 1 to 1e+07 Hz"),
        ("meta", "s.csv: '# fs_hz=1e308' is 1e+308 Hz; expected a sampling rate of 1 to 1e+07"),
        ("flag", "--fs-hz 1e+308: expected a sampling rate of 1 to 1e+07 Hz"),
        ("rows", "acc_00001.csv: the rows' times give 1e+08 Hz; expected a sampling rate of 1"),
    ],
)
def test_an_absurd_sampling_rate_is_one_line_not_numpy_warnings_and_garbage(
    case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fs_hz 1e308 (a corrupt field, a typo) used to be analysed: numpy's overflow
    RuntimeWarnings on stderr, a velocity band 'spanning 2.6e-304 periods', exit 0."""
    assert run(_args(*_rate_case(tmp_path, case))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["--rpm", "-5"],
        ["--failure-metric", "kurtosis", "--failure-threshold", "3"],
        ["--baseline-readings", "10"],
        ["--iso-group", "1"],
    ],
)
def test_a_machine_flag_with_c_is_refused_not_ignored(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With -c the asset comes from the file: --failure-metric kurtosis, --rpm -5 or
    --iso-group 1 next to it used to be dropped without a word (the same output, exit 0)."""
    rec, site = str(_npz(tmp_path / "rec.npz")), str(_config_with_prior(tmp_path))
    assert run(_args(rec, "-c", site, *argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"replay: {argv[0]} applies without -c only; with -c the asset's "), err


def test_a_pronostia_snapshot_straddling_midnight_is_read_with_its_own_rate(
    tmp_path: Path,
) -> None:
    """A snapshot begun at 23:59:59.95 ends at 00:00:00.05: its rows' times go from 86400 s
    of day back to 0. That used to stop the replay there: "the rows' times do not advance;
    give --fs-hz", exit 2, for a recording with nothing wrong."""
    rng = np.random.default_rng(5)
    for i, t0 in enumerate((86380.0, 86390.0, 86399.95, 9.95), start=1):
        secs = (t0 + np.arange(N) / FS) % 86400.0
        hms = [(int(s // 3600), int(s % 3600 // 60), int(s % 60)) for s in secs]
        rows = [
            f"{h},{m},{s},{round(x % 1 * 1e6)},{a:.3f},{b:.3f}"
            for (h, m, s), x, a, b in zip(hms, secs, *rng.normal(0, 0.3, (2, N)), strict=True)
        ]
        (tmp_path / f"acc_{i:05d}.csv").write_text("\n".join(rows) + "\n")
    _, lines = _lines(_args(str(tmp_path), "--start", "2012-03-04"))
    rec = lines[-1]["recording"]
    assert (rec["first"], rec["last"]) == ("2012-03-04T23:59:40.000Z", "2012-03-05T00:00:09.950Z")
    assert rec["snapshots"] == 4 and rec["skipped"] == {}


def test_the_estimate_line_counts_its_hours_from_its_own_time_as_the_summary_shows(
    tmp_path: Path,
) -> None:
    """Snapshots 10 s apart, the estimate made once per 60 s bin: the last snapshot (50 s
    into its bin) printed the figure made 50 s earlier as if made at its own time (the
    summary's series said it was made at :50, the line said :40 with the same hours). Now
    the line's hours and bounds are the series' figure less the time since, which the
    basis names (estimated_at); the summary's estimate is the line's, with its time."""
    path = _npz(tmp_path / "r.npz", n=12)
    prior = ("--prior-life-hours", "0.5", "--age-hours", "0.3")
    _, lines = _lines(_args(str(path), *FAILURE, *prior))
    summary, est = lines[-1], lines[-2]
    series = summary["estimates"][est["sensor"]["channel"]]
    made, at = series["at"][-1], est["at"]
    assert (made, at) == ("2026-01-01T00:01:00.000Z", "2026-01-01T00:01:50.000Z")
    elapsed_h = (datetime.fromisoformat(at) - datetime.fromisoformat(made)).total_seconds() / 3600
    assert elapsed_h > 0
    ttf = est["time_to_failure"]
    for key in ("hours", "lower_hours", "upper_hours"):
        want = max(series[key][-1] - elapsed_h, 0.0)
        assert ttf[key] == pytest.approx(want, abs=2e-5), key
    assert est["time_to_failure_basis"]["estimated_at"] == made
    assert summary["time_to_failure"]["at"] == at
    assert summary["time_to_failure"]["hours"] == ttf["hours"]
