"""`edge-agent demo` as a newcomer runs it: the story it prints, then its portfolio page in
a real browser, from the store the demo kept."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp
import pytest

from agent.demo import SimProcess, demo_backend_config_path
from tests.chromium import browser, chromium_binary

STORY_TIMEOUT_S = 150.0  # the repair comes ~45 s in on an idle machine


@dataclass(frozen=True)
class DemoRun:
    out: str
    kept: Path


def _has_mosquitto() -> bool:
    return bool(shutil.which("mosquitto") or os.access("/usr/sbin/mosquitto", os.X_OK))


def _run_until_repair() -> tuple[str, int]:
    """Run the demo until the backend has the repair, then Ctrl-C it; (stdout, exit code)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "demo", "--keep"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + STORY_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            line = proc.stdout.readline() if ready else ""
            if ready and not line:
                break  # exited
            lines.append(line)
            if "repair recorded" in line:
                proc.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
                break
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + rest
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    return out, proc.returncode


def _story() -> DemoRun:
    """The demo run until the repair, and the folder it kept."""
    out, _ = _run_until_repair()
    match = re.search(r"demo files kept in (\S+):", out)
    assert match, out[-3000:]
    return DemoRun(out, Path(match.group(1)))


@pytest.fixture(scope="module", autouse=True)
def _story_behind(request: pytest.FixtureRequest) -> Iterator[Future[DemoRun] | None]:
    """The story's run, started with this module when a selected test reads it: it waits
    ~30 s on the simulated bearing, mostly idle, so the module's other demos run meanwhile
    (the tests that read it come last in the file)."""
    if not any(
        "demo_run" in getattr(item, "fixturenames", ()) and item.module is request.module
        for item in request.session.items
    ):
        yield None
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="demo-story")
    future = pool.submit(_story)
    try:
        yield future
    finally:
        pool.shutdown(wait=True)  # the run ends by itself: at the repair or its timeout
        if future.exception() is None:
            shutil.rmtree(future.result().kept, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_run(_story_behind: Future[DemoRun] | None) -> DemoRun:
    assert _story_behind is not None
    return _story_behind.result(timeout=STORY_TIMEOUT_S + 90)


@pytest.mark.slow
def test_demo_without_mosquitto_runs_modbus_only_and_says_so() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EDGE_MOSQUITTO": ""}  # as if not installed
    done = subprocess.run(
        # A 'watching:' line every 2 s, not 10: one comes within a 7 s run.
        [sys.executable, "-m", "agent.cli", "demo", "--duration", "7", "--status-every", "2"],
        capture_output=True, text=True, env=env, timeout=90, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in out.splitlines() if "mosquitto" in line]
    assert len(said) == 1 and "mosquitto is not installed (Debian/Ubuntu: sudo apt install " \
        "mosquitto), so the demo runs its Modbus sensors only" in said[0], out  # fmt: skip
    assert re.search(r"watching: fan-3 [\d.]+ mm/s \(zone A\), press-7 [\d.]+ mm/s "
                     r"\(zone A\) \|", out), out  # fmt: skip
    assert "pump-2" not in out
    # Stopped by --duration, it still closes with the backend's summary.
    assert "summary: 0 case(s) at the backend" in out, out
    assert "fan-3 Cooling fan 3 (tier 2): no case, healthy" in out, out


def _gone(pid: int) -> bool:
    """Whether the process has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _wait_gone(pids: list[int], within_s: float) -> list[int]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if not _gone(p)]


_PARENT = """
import asyncio, sys
from pathlib import Path
from agent.demo_sims import SimProcess

async def main():
    async with SimProcess.cmms(Path(sys.argv[1]), None) as cmms:
        print(cmms.proc.pid, flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


def test_simulators_end_with_their_parent_even_on_sigkill(tmp_path: Path) -> None:
    # Before: a demo killed with SIGKILL left its five simulators and mosquitto serving on
    # as orphans of init, for ever.
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path / "cmms.db")],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    child = 0
    try:
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait(timeout=10)
        assert _wait_gone([child], 10.0) == [], "the simulator outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if child and not _gone(child):
            os.kill(child, signal.SIGKILL)


def _start_demo(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "demo", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True, env=env, start_new_session=True,  # its own terminal-like process group
    )  # fmt: skip


def _read_until(
    proc: subprocess.Popen[str], text: str, within_s: float, stream: IO[str] | None = None
) -> str:
    """stdout (or `stream`) up to and including the first line holding `text`."""
    stream = stream or proc.stdout
    assert stream is not None
    out: list[str] = []
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.5)
        line = stream.readline() if ready else ""
        out.append(line)
        if text in line or (ready and not line):
            break
    return "".join(out)


@pytest.mark.slow
def test_demo_ctrl_c_in_a_terminal_still_gives_the_summary() -> None:
    # Before: Ctrl-C reaches the whole foreground process group, so the backend died with
    # the demo and the story ended "no summary: the backend did not answer".
    proc = _start_demo("--duration", "60")
    try:
        head = _read_until(proc, "Zones (ISO", 60.0)
        assert "Zones (ISO" in head, head
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = head + rest
    assert proc.returncode == 0, err[-2000:]
    assert "did not answer" not in out and "summary: 0 case(s) at the backend" in out, out
    pids = [int(p) for p in re.findall(r"pid (\d+)", head)]
    assert pids and _wait_gone(pids, 10.0) == [], out


@pytest.mark.slow
def test_demo_says_so_and_stops_when_a_simulator_dies() -> None:
    # Before: with its backend killed the demo went on silently to its end, then said
    # "no alert reached the backend (run longer: --duration 90)" and exited 0.
    proc = _start_demo("--duration", "90")
    try:
        head = _read_until(proc, "Zones (ISO", 60.0)
        backend = re.search(r"maintenance backend \(pid (\d+)\)", head)
        assert backend, head
        os.kill(int(backend.group(1)), signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = head + rest
    assert proc.returncode == 1, out + err[-2000:]
    said = f"the backend simulator (pid {backend.group(1)}) exited unexpectedly (exit status -9)"
    assert said in out and "run longer" not in out, out
    assert "done: stopped early because the backend simulator" in out, out
    pids = [int(p) for p in re.findall(r"pid (\d+)", head)]
    assert _wait_gone(pids, 10.0) == [], out


def _backend_ids(base: str, token: str) -> set[str]:
    req = urllib.request.Request(
        f"{base}/v1/alerts?after=0", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=2) as resp:
        return {a["alert_id"] for a in json.load(resp)["alerts"]}


@pytest.mark.slow
def test_demo_tells_the_alerts_delivered_as_it_stops() -> None:
    # Before: stopped within half a second of a delivery (SIGTERM, Ctrl-C, the end of
    # --duration), the story left that alert out and could end "done: no alert reached the
    # backend" right under a summary of the case it opened.
    # A bearing that fails in 30 s instead of 60: the first alert comes ~10 s sooner, and any
    # alert will do here.
    proc = _start_demo("--json", "--duration", "120", "--life-s", "30")
    try:
        head = _read_until(proc, "portfolio page", 60.0, proc.stderr)
        page = re.search(r"(http://127\.0\.0\.1:\d+)/portfolio\?key=(\w+)", head)
        assert page, head
        seen: set[str] = set()
        deadline = time.monotonic() + 120
        while not seen and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            seen = _backend_ids(page.group(1), page.group(2))
        proc.send_signal(signal.SIGTERM)  # the moment the backend has the first alert
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert seen and proc.returncode == 0, err[-3000:]
    told = {json.loads(line)["alert_id"] for line in out.splitlines() if line.strip()}
    assert seen <= told, err[-3000:]
    assert "no alert reached the backend" not in err, err[-3000:]


# The tests that read the story come last: it runs behind the ones above.


@pytest.mark.slow
def test_demo_tells_the_story_a_manager_reads(demo_run: DemoRun) -> None:
    out = demo_run.out
    assert "Zones (ISO 10816-3 vibration severity): A new machine" in out
    assert re.search(
        r"portfolio page \(open it while the demo runs\): http://127\.0\.0\.1:\d+/portfolio\?key=\w+",
        out,
    )
    assert re.search(
        r"press-7 Press 7 main motor: early warning - vibration departs from its baseline "
        r"\(zone [AB], \d\.\d\d mm/s\)",
        out,
    ), out
    assert re.search(r"estimated failure in [\d.]+ s \([\d.]+-[\d.]+ s\)", out)
    assert "planner confirms case c-" in out and "technician replaces the bearing" in out
    assert "press-7 Press 7 main motor: repair recorded" in out
    assert re.search(
        r"repaired +[\d.]+ s after detection \(lead time\), [\d.]+ s before the earliest", out
    )
    assert "downtime avoided 32 h, EUR 256,000" in out
    assert "fan-3 Cooling fan 3 (tier 2): no case, healthy" in out
    if _has_mosquitto():  # the wireless pump beside the Modbus machines, healthy throughout
        assert re.search(
            r"a wireless vibration sensor \(NCD style\) on a healthy cooling water pump "
            r"publishes its readings over MQTT \(edge-sim mqtt pid \d+\) to a mosquitto broker "
            r"the demo started on 127\.0\.0\.1:\d+ \(pid \d+\)", out
        ), out  # fmt: skip
        assert re.search(r"watching: .*pump-2 [01]\.\d mm/s \(zone A\)", out), out
        assert "pump-2 Cooling water pump 2 (tier 2): no case, healthy" in out
        assert "pump-2 Cooling water pump 2: " not in out  # no alert of any kind
    else:
        assert "the demo runs its Modbus sensors only" in out
    # The motor's fault (its bearing, watched on two axes) is one work order in the CMMS:
    # before, one per axis.
    opened = re.findall(r"CMMS work order (WO-\d{6}) opened: press-7 Press 7 main motor: ", out)
    assert len(opened) == 1, out
    assert re.search(r"CMMS work order WO-\d{6} opened: press-7 Press 7 main motor: early "
                     r"warning .*\(priority high, due ", out)  # fmt: skip
    # The early warning's critical updates its work order: no second one for the episode.
    assert re.search(
        r"CMMS work order WO-\d{6} updated: press-7 Press 7 main motor: failure "
        r"expected within the planning horizon \(priority high, due ",
        out,
    ), out
    assert "opened: press-7 Press 7 main motor: failure expected" not in out, out
    assert (demo_run.kept / "outbox.db").is_file() and (demo_run.kept / "backend.db").is_file()
    assert (demo_run.kept / "cmms.db").is_file()
    # No line of the story runs on like a raw record did.
    assert max(len(line) for line in out.splitlines()) < 260


@pytest.mark.slow
async def test_demo_portfolio_page_in_chromium(demo_run: DemoRun) -> None:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    backend = SimProcess.backend(demo_run.kept / "backend.db", None, demo_backend_config_path())
    async with backend:
        base = backend.info["url"].removesuffix("/v1/alerts")
        async with aiohttp.ClientSession() as s, s.get(f"{base}/v1/cases") as resp:
            (case,) = (await resp.json())["cases"]
        assert case["state"] == "repaired" and case["repair_before_failure"] is True
        lead_s = case["lead_time_hours"] * 3600
        async with browser(binary) as page:
            await page.open(f"{base}/portfolio", width=1280, height=900)
            wide = await page.evaluate(DOM_CHECK)
            await page.open(f"{base}/portfolio", width=390, height=844)
            phone = await page.evaluate(DOM_CHECK)
    row = wide["row"]
    assert row["asset"].startswith("press-7") and row["state"] == "repaired"
    assert re.fullmatch(r"\d+ s", row["lead"]) and abs(int(row["lead"][:-2]) - lead_s) <= 0.5
    assert row["before"].startswith("yes")
    assert wide["band"]["width"] > 0 and wide["band"]["height"] > 50, wide
    assert "estimated failure" in wide["band"]["title"]
    assert wide["scripts"] == 0 and wide["overflow"] <= 0
    # On a phone: no sideways scrolling, the narrow charts instead of the wide ones.
    assert phone["overflow"] <= 0, phone
    assert phone["band"]["width"] > 0 and phone["band"]["svg"] == "narrow"
    assert phone["row"]["lead"] == row["lead"]


DOM_CHECK = """(() => {
  const row = document.querySelector('tr.case-row');
  const cell = (c) => row.querySelector('td.' + c + ' > span').textContent.trim();
  const section = document.getElementById(row.dataset.case);
  const band = [...section.querySelectorAll('svg.severity rect.ttf-band')]
    .find((r) => r.getBoundingClientRect().width > 0);
  const box = band ? band.getBoundingClientRect() : {width: 0, height: 0};
  return {
    row: {asset: cell('asset'), state: cell('state'), lead: cell('lead-time'),
          before: cell('before')},
    band: {width: box.width, height: box.height,
           title: band ? band.querySelector('title').textContent : '',
           svg: band ? band.closest('svg').classList[2] : ''},
    scripts: document.scripts.length,
    overflow: document.documentElement.scrollWidth - window.innerWidth,
  };
})()"""
