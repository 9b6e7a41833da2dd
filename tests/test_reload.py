"""Reload without restart, on real processes: `edge-agent run` (SIGHUP and `edge-agent
reload`), `edge-sim modbus`, `edge-sim backend`, the agent's real store.

Alerts flow all along as maintenance records made through the control socket (as in the
kill -9 test): an answer comes after the record is on disk, so every id in an answer is an
alert the agent accepted, and each must reach a backend exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.control import ControlError, call
from agent.demo import SimProcess
from agent.health import SNAPSHOT_MAX_AGE_S
from agent.maintenance import OP as MAINTENANCE
from tests._reload_agent import (
    OUTSIDER,
    POLL_S,
    REVEAL_PYENV,
    TOKEN,
    TOKEN_B,
    by_id,
    config_text,
    established_to,
    gateway_bus,
    healthz,
    log_lines,
    metrics,
    reload_cmd,
    running,
    sensor,
    until,
    uplink,
    write,
)
from tests.conftest import REPO, agent_process, free_port

pytestmark = [pytest.mark.network, pytest.mark.slow]


async def test_sensors_added_removed_and_untouched_across_reloads(tmp_path: Path) -> None:
    async with running(tmp_path) as d:
        # m1 learns its baseline (10 readings at 0.5 s) before anything changes.
        await until(d, lambda h: all(
            c["health_index"] is not None for c in h["channels"] if c["sensor"] == "m1"
        ) and any(c["sensor"] == "m1" for c in h["channels"]))  # fmt: skip
        assert established_to(d["other_port"]) >= 1  # m3 is polled

        # An invalid file (a typo in m2's key): refused, reported at its line and column.
        good = d["config"].read_text()
        d["config"].write_text(good.replace("poll_interval_s: 0.5", "poll_intervall_s: 0.5", 1))
        before = by_id(await healthz(d))
        d["proc"].send_signal(signal.SIGHUP)
        await until(d, lambda h: h["reload"]["reload_failures_total"] == 1)
        after = by_id(await until(d, lambda h: all(
            s["polls_total"] > before[s["id"]]["polls_total"] for s in h["sensors"]
        )))  # fmt: skip
        assert set(after) == {"m1", "m2", "m3"}
        assert all(after[s]["polls_total"] > before[s]["polls_total"] for s in after)
        refused = [r for r in log_lines(d) if "refused" in r["msg"]]
        assert f"{d['config']}:15:5: sensors[0]" in refused[0]["msg"], refused
        assert refused[0]["requested_by"] == "SIGHUP"

        # Add m4, remove m3; m1 and m2 untouched. Watch m1 all along.
        d["config"].write_text(good)
        samples: list[dict[str, Any]] = []
        stop = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                samples.append(await healthz(d))
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(1.0)
        write(d, ["m1", "m2", "m4"], url=d["a"])
        asked = time.monotonic()
        done = await reload_cmd(d)
        answered = time.monotonic()
        assert done.returncode == 0, done.stderr
        assert "sensor m4 added" in done.stdout and "sensor m3 removed" in done.stdout
        assert "m1" not in done.stdout and "m2" not in done.stdout, done.stdout
        first = await until(d, lambda h: by_id(h).get("m4", {}).get("last_ok_age_s") is not None)
        started_s = time.monotonic() - asked
        await asyncio.sleep(3 * POLL_S)
        stop.set()
        await watcher
        final = by_id(await healthz(d))

    print(
        json.dumps({"reload_s": round(answered - asked, 3), "m4_first_poll_s": round(started_s, 3)})
    )
    # Added: polled within a poll interval once the reload applied (the command's own
    # start-up, its check of the file and this test's sampling aside), and shown by /healthz
    # within the age of its shared snapshot (the first after the reload is fresh, the next
    # ones may be that much older: agent.health's flood guard).
    assert started_s <= (answered - asked) + POLL_S + SNAPSHOT_MAX_AGE_S + 0.5, started_s
    assert "m4" in by_id(first)
    # Removed: gone from health, and no connection to its device is left or made again.
    assert "m3" not in final
    assert established_to(d["other_port"]) == 0
    # Untouched: m1 polled on without a gap and without a restart (its counters never
    # went back), and its baseline stayed learned in every sample.
    m1 = [by_id(h)["m1"] for h in samples]
    polls = [s["polls_total"] for s in m1]
    assert polls == sorted(polls) and polls[-1] > polls[0] + 3, polls
    assert max(s["last_ok_age_s"] for s in m1) < 2 * POLL_S + 0.5, m1
    assert all(
        c["health_index"] is not None for h in samples for c in h["channels"] if c["sensor"] == "m1"
    )
    applied = [r for r in log_lines(d) if r["msg"].startswith("configuration reloaded")]
    assert "uid 0 (root)" in applied[0]["requested_by"], applied


async def _flow(d: dict[str, Any], accepted: dict[str, Any], stop: asyncio.Event) -> None:
    """Repairs on fan-9 as fast as the agent takes them; keep what it acknowledged."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            answer = await asyncio.to_thread(
                call, d["dir"] / "control.sock", MAINTENANCE, {"asset": "fan-9", "note": f"r{n}"}
            )
        except ControlError:
            answer = {}
        for rec in answer.get("result", {}).get("records", []) if answer.get("ok") else []:
            accepted[rec["alert_id"]] = rec
        await asyncio.sleep(0.02)


async def _backend(url: str, token: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    base = url.rsplit("/v1/", 1)[0]
    out: dict[str, dict[str, Any]] = {}
    after = 0
    async with aiohttp.ClientSession(headers=headers) as s:
        for _ in range(200):  # bounded paging
            async with s.get(url, params={"after": str(after)}) as r:
                page = await r.json()
            if not page["alerts"]:
                break
            out.update({a["alert_id"]: a for a in page["alerts"]})
            after = page["last_receipt"]
        async with s.get(f"{base}/v1/stats") as r:
            stats = await r.json()
    return out, stats


async def test_reloads_while_alerts_flow_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    accepted: dict[str, Any] = {}
    async with running(tmp_path) as d:
        stop = asyncio.Event()
        flows = [asyncio.create_task(_flow(d, accepted, stop)) for _ in range(2)]
        try:
            await asyncio.sleep(0.5)
            # 1. SIGHUP with a change of thresholds only (analysis; every poller runs on).
            write(d, ["m1", "m2", "m3"], url=d["a"], extra=", debounce: 4")
            d["proc"].send_signal(signal.SIGHUP)
            await until(d, lambda h: h["reload"]["reloads_total"] == 1)
            await asyncio.sleep(0.5)  # alerts flow under it
            # 2. The command: the uplink moves to backend B (same name, same cursor), which
            # refuses the old token (401): alerts wait in the store, none is dropped.
            write(d, ["m1", "m2", "m3"], url=d["b"], extra=", debounce: 4")
            done = await reload_cmd(d, "--json")
            assert done.returncode == 0, done.stderr
            assert any("uplink portfolio rebuilt" in c for c in json.loads(done.stdout)["changes"])
            moved_at = len(accepted)
            await asyncio.sleep(0.5)  # alerts flow under it
            # 2b. The token file is rotated (the file is not edited): the reload takes it.
            (tmp_path / "token").write_text(TOKEN_B)
            rotated = await reload_cmd(d)
            assert rotated.returncode == 0, rotated.stderr
            assert "uplink portfolio rebuilt" in rotated.stdout, rotated.stdout
            await asyncio.sleep(0.5)  # alerts flow under it
            # 3. SIGHUP again, with sensors changing under the flow.
            write(d, ["m1", "m2", "m4"], url=d["b"], extra=", debounce: 4")
            d["proc"].send_signal(signal.SIGHUP)
            await until(d, lambda h: h["reload"]["reloads_total"] == 4)
            await asyncio.sleep(0.5)  # alerts flow under it
        finally:
            stop.set()
            await asyncio.gather(*flows)
        await until(d, lambda h: h["store"].get("pending") == 0, limit_s=30)
        counts = await metrics(d)
        at_a, stats_a = await _backend(d["a"], TOKEN)
        at_b, stats_b = await _backend(d["b"], TOKEN_B)
    with sqlite3.connect(tmp_path / "outbox.db") as conn:
        stored = {r[0] for r in conn.execute("SELECT alert_id FROM alerts")}
        undelivered = conn.execute("SELECT count(*) FROM alerts WHERE delivered_at IS NULL")
        assert undelivered.fetchone()[0] == 0
    print(json.dumps({"accepted": len(accepted), "at_a": len(at_a), "at_b": len(at_b),
                      "duplicates": [stats_a["duplicates"], stats_b["duplicates"]]}))  # fmt: skip
    assert len(accepted) >= 50, len(accepted)
    assert set(accepted) <= stored
    # Nothing lost: every stored alert reached a backend; nothing duplicated: none reached
    # both (the delivery position survived the rebuild), none twice at one.
    assert set(at_a) | set(at_b) == stored
    assert not set(at_a) & set(at_b)
    assert stats_a["duplicates"] == 0 and stats_b["duplicates"] == 0
    # The URL change took effect: what was made after it went to B.
    later = sorted(accepted)[moved_at + 20 :]
    assert later and all(i in at_b for i in later)
    assert all(at_a.get(i, at_b.get(i)) == rec for i, rec in accepted.items())
    assert counts == {"edge_reloads_total": 4.0, "edge_reload_failures_total": 0.0}, counts


async def test_a_removed_or_renamed_uplink_says_what_it_leaves_in_the_store(
    tmp_path: Path,
) -> None:
    """`edge-agent reload` says what becomes of a removed uplink's undelivered alerts (kept
    under its name) and of a renamed one (a new uplink to the store); configured again
    under its name, the removed one gets them."""
    async with running(tmp_path) as d:
        sensors = ["m1", "m2", "m3"]
        (tmp_path / "token_b").write_text(TOKEN_B)
        (tmp_path / "token_b").chmod(0o600)
        dead = f"http://127.0.0.1:{free_port()}/v1/alerts"
        portfolio = uplink("portfolio", d["a"])
        write(d, sensors, url=d["a"], uplinks=portfolio + uplink("backup", dead, "token_b"))
        assert (await reload_cmd(d)).returncode == 0
        ids = []
        for n in range(3):
            answer = await asyncio.to_thread(
                call, d["dir"] / "control.sock", MAINTENANCE, {"asset": "fan-9", "note": f"r{n}"}
            )
            ids += [r["alert_id"] for r in answer["result"]["records"]]
        await until(d, lambda h: h["store"]["uplinks"]["backup"]["pending"] == len(ids) == 3
                    and h["store"]["uplinks"]["portfolio"]["pending"] == 0)  # fmt: skip

        write(d, sensors, url=d["a"])  # backup removed while its backend is down
        removed = await reload_cmd(d, "--json")
        assert removed.returncode == 0, removed.stderr
        [line] = json.loads(removed.stdout)["changes"]
        assert line.startswith(
            "uplink backup removed: the 3 item(s) it had not received stay in the store "
            "under the name backup, sent when an uplink named backup is configured again"
        ), line
        await until(d, lambda h: h["store"]["pending"] == 0)  # it holds nothing back
        logged = [r["msg"] for r in log_lines(d) if "configuration reloaded" in r["msg"]]
        assert "uplink backup removed: the 3 item(s)" in logged[-1]

        write(d, sensors, url=d["a"], uplinks=uplink("main", d["a"]))  # same settings
        renamed = await reload_cmd(d)
        assert renamed.returncode == 0, renamed.stderr
        assert "uplink portfolio renamed main: delivery state is kept by name" in renamed.stdout
        assert "the 0 item(s) it had not received" in renamed.stdout, renamed.stdout

        main_and_backup = uplink("main", d["a"]) + uplink("backup", d["b"], "token_b")
        write(d, sensors, url=d["a"], uplinks=main_and_backup)  # backup again, on B
        assert (await reload_cmd(d)).returncode == 0
        await until(d, lambda h: h["store"]["uplinks"]["backup"]["pending"] == 0)
        at_a, stats_a = await _backend(d["a"], TOKEN)
        at_b, stats_b = await _backend(d["b"], TOKEN_B)
    assert set(ids) <= set(at_a) and set(ids) <= set(at_b)
    assert stats_a["duplicates"] == 0 and stats_b["duplicates"] == 0


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every uid may enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="edge-reload-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_outsider(config: Path) -> subprocess.CompletedProcess[str]:
    """`edge-agent reload` run by a local user who is not in the socket's group."""
    user = ["setpriv", f"--reuid={OUTSIDER}", f"--regid={OUTSIDER}", "--clear-groups"]
    return subprocess.run(
        ["unshare", "--mount", "--fork", "bash", "-c", REVEAL_PYENV + 'exec "$@"', "bash",
         *user, sys.executable, "-m", "agent.cli", "reload", "-c", str(config)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/"},
    )  # fmt: skip


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare"),
    reason="needs root, setpriv and unshare to act as another local user",
)
async def test_reload_command_refuses_invalid_files_serialises_and_checks_permission(
    open_dir: Path,
) -> None:
    async with running(open_dir) as d:
        good = d["config"].read_text()
        # Invalid: the command prints each issue at file:line:col and exits 2.
        d["config"].write_text(good.replace("device_id: 2", "device_id: two", 1))
        bad = await reload_cmd(d)
        assert bad.returncode == 2, bad
        assert f"{d['config']}:18:" in bad.stderr and "device_id" in bad.stderr, bad.stderr
        assert "nothing changed" in bad.stderr
        # A new gateway id cannot be taken by a running agent: refused, with what to do.
        d["config"].write_text(good.replace("id: gw-rl", "id: gw-new", 1))
        renamed = await reload_cmd(d)
        assert renamed.returncode == 1, renamed
        assert "gateway.id gw-rl -> gw-new" in renamed.stderr
        assert "systemctl restart edge-agent" in renamed.stderr
        # A local user without access to the control socket changes nothing.
        write(d, ["m1", "m2", "m3", "m4"], url=d["a"])
        outsider = await asyncio.to_thread(_as_outsider, d["config"])
        assert outsider.returncode == 1, outsider
        assert "permission denied" in outsider.stderr, outsider.stderr
        assert "m4" not in by_id(await healthz(d))
        # Three requests at once: one adds m4, the others find nothing to change.
        runs = await asyncio.gather(*(reload_cmd(d, "--json") for _ in range(3)))
        h = await until(d, lambda h: "m4" in by_id(h))
        counts = await metrics(d)
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    changes = [json.loads(r.stdout)["changes"] for r in runs]
    assert sorted(len(c) for c in changes) == [0, 0, 1], changes
    assert [s["id"] for s in h["sensors"]].count("m4") == 1
    assert counts == {"edge_reloads_total": 3.0, "edge_reload_failures_total": 2.0}, counts


async def test_a_changed_bus_is_rebuilt_with_its_sensors(tmp_path: Path) -> None:
    async with running(tmp_path) as d:
        # m3 (its own connection to simulator 2) gives way to g1, g2 behind a gateway there.
        write(d, ["m1", "m2", "g1", "g2"], url=d["a"], buses=gateway_bus(d, 1.0))
        added = await reload_cmd(d)
        assert added.returncode == 0, added.stderr
        assert "bus gw added" in added.stdout and "sensor m3 removed" in added.stdout
        h = await until(d, lambda h: all(by_id(h).get(g, {}).get("polls_total", 0) > 6
                                         for g in ("g1", "g2")))  # fmt: skip
        m1_before = by_id(h)["m1"]["polls_total"]
        write(d, ["m1", "m2", "g1", "g2"], url=d["a"], buses=gateway_bus(d, 0.5))
        rebuilt = await reload_cmd(d)
        after = await until(d, lambda h: all(by_id(h)[g]["last_ok_age_s"] is not None
                                             for g in ("g1", "g2")))  # fmt: skip
        await asyncio.sleep(3 * POLL_S)
        connections = established_to(d["other_port"])
        final = by_id(await healthz(d))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "bus gw rebuilt" in rebuilt.stdout
    assert "sensor g1 restarted" in rebuilt.stdout and "sensor g2 restarted" in rebuilt.stdout
    assert "m1" not in rebuilt.stdout
    # New pollers on a new bus (their counters start again), the old bus's connection closed:
    # one connection to the gateway (max_connections 1), not two.
    assert all(by_id(after)[g]["polls_total"] < by_id(h)[g]["polls_total"] for g in ("g1", "g2"))
    assert connections == 1
    assert final["m1"]["polls_total"] > m1_before + 3  # untouched, polled on
    assert [b["name"] for b in after["buses"]] == ["gw"]


async def test_a_configuration_deployed_by_swapping_its_symlink_is_reloaded(tmp_path: Path) -> None:
    """A deployment tool writes the new release and swaps the link the agent was started
    with (agent.yaml -> v1.yaml, then -> v2.yaml): `edge-agent reload -c agent.yaml` applies
    v2, as SIGHUP does, instead of "this agent runs with v1.yaml, not agent.yaml"."""
    async with running(tmp_path, link=True) as d:
        v2 = tmp_path / "v2.yaml"
        v2.write_text(config_text(d, [d["sensors"][s] for s in ("m1", "m2", "m4")], url=d["a"]))
        swap = tmp_path / "agent.yaml.swap"
        swap.symlink_to(v2)
        swap.replace(d["config"])
        done = await reload_cmd(d)
        assert done.returncode == 0, done.stderr
        assert "sensor m4 added" in done.stdout, done.stdout
        await until(d, lambda h: "m4" in by_id(h) and "m3" not in by_id(h))


async def _m_alerts(d: dict[str, Any], sensor: str) -> list[dict[str, Any]]:
    """The backend's records of one sensor on press-7, in seq order."""
    at_a, _ = await _backend(d["a"], TOKEN)
    recs = [r for r in at_a.values() if r["sensor"]["id"] == sensor]
    return sorted((r for r in recs if r["asset"]["id"] == "press-7"), key=lambda r: r["seq"])


async def _backend_until(d: dict[str, Any], sensor: str, pred: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        recs = await _m_alerts(d, sensor)
        if pred(recs):
            return recs
        await asyncio.sleep(0.2)
    raise AssertionError(f"backend records of {sensor}: {await _m_alerts(d, sensor)}")


async def _press_cases(d: dict[str, Any]) -> list[str]:
    base = d["a"].rsplit("/v1/", 1)[0]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession(headers=headers) as s,
        s.get(f"{base}/v1/cases", params={"asset": "press-7"}) as r,
    ):
        return [c["state"] for c in (await r.json())["cases"]]


def _closed(recs: list[dict[str, Any]], why: str) -> bool:
    """Every alert the sensor raised has a later "cleared" record that says why."""
    open_ = {(r["sensor"]["channel"], r["kind"]) for r in recs if r["state"] != "cleared"}
    shut = {
        (r["sensor"]["channel"], r["kind"])
        for r in recs
        if r["state"] == "cleared" and r["evidence"].get("reason") == why
    }
    return bool(open_) and open_ <= shut


async def test_a_removed_sensor_closes_its_open_alerts_by_reload_and_at_restart(
    tmp_path: Path,
) -> None:
    """m5 and m6 measure zone D on press-7. A reload that removes m5 closes its alerts, and
    the backend's case for press-7 resolves; m6 removed from the file while the agent is
    stopped is closed when it starts again (its state was all that remained)."""
    async with (
        SimProcess.modbus(["1:velocity=12", "2:velocity=12"], 600.0) as loud,
        running(tmp_path) as d,
    ):
        for sid, unit in (("m5", 1), ("m6", 2)):
            d["sensors"][sid] = sensor(sid, "press-7", loud.info["port"], unit)
        write(d, ["m1", "m2", "m3", "m5"], url=d["a"])
        assert (await reload_cmd(d)).returncode == 0
        await _backend_until(d, "m5", lambda rs: any(r["kind"] == "severity" for r in rs))
        assert await _press_cases(d) == ["open"]
        write(d, ["m1", "m2", "m3"], url=d["a"])
        assert (await reload_cmd(d)).returncode == 0
        why = "sensor removed from the configuration by a reload"
        await _backend_until(d, "m5", lambda rs: _closed(rs, why))
        assert await _press_cases(d) == ["cleared"]

        write(d, ["m1", "m2", "m3", "m6"], url=d["a"])
        assert (await reload_cmd(d)).returncode == 0
        await _backend_until(d, "m6", lambda rs: any(r["kind"] == "severity" for r in rs))
        d["proc"].send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(d["proc"].wait(), 30) == 0
        write(d, ["m1", "m2", "m3"], url=d["a"])  # edited while the agent is stopped
        with d["log"].open("ab") as log:
            again = await agent_process(d["config"], stderr=log, stdout=asyncio.subprocess.DEVNULL)
            try:
                why = "sensor removed from the configuration at start (the configuration "
                why += "no longer has it there)"
                await _backend_until(d, "m6", lambda rs: _closed(rs, why))
                assert await _press_cases(d) == ["cleared", "cleared"]
            finally:
                again.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(again.wait(), 30) == 0
