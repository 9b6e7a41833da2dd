"""HTTP uplink against the real backend simulator on loopback, with a real SQLite outbox."""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.config import HttpUplink as HttpUplinkConfig
from agent.config import load_config
from agent.records import AssetRef
from agent.store import Outbox
from agent.summaries import SummaryDraft
from agent.uplink import Delivery, HttpTransport, delivery
from simulators.backend import BackendServer, Fault
from tests.agent.store._drafts import draft
from tests.agent.uplink._running import Running, until
from tests.agent.uplink._running import true as _true

TOKEN = "s3cret-token"
UP = "up"


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(
        tmp_path / "outbox.db", gateway_id="gw-01", max_bytes=1 << 30, first_seq=1, uplinks=(UP,)
    ) as ob:
        yield ob


def HttpUplink(
    c: HttpUplinkConfig, outbox: Outbox, *, base_backoff_s: float = 0.5, **kw: Any
) -> Delivery:
    """A delivery loop over an HTTP transport, as build_uplinks makes it."""
    return delivery(UP, HttpTransport(c, name=UP), outbox, c, base_backoff_s=base_backoff_s, **kw)


def cfg(url: str, **kw: Any) -> HttpUplinkConfig:
    base: dict[str, Any] = {
        "url": url,
        "token": TOKEN,
        "batch_size": 10,
        "timeout_s": 2.0,
        "max_backoff_s": 0.3,
    }
    base.update(kw)
    return HttpUplinkConfig(**base)


async def test_delivers_and_marks_delivered(tmp_path: Path, outbox: Outbox) -> None:
    records = await outbox.append([draft(i=i) for i in range(25)])
    async with (
        BackendServer(db=tmp_path / "backend.db", token=TOKEN) as backend,
        Running(HttpUplink(cfg(backend.url), outbox, idle_recheck_s=0.5)) as up,
    ):
        await until(lambda: _pending_is(outbox, 0))
        # A live alert appended while idle is woken up for at once (the outbox's wake event).
        t0 = time.monotonic()
        [live] = await outbox.append([draft(tier=1, i=99)])
        await until(lambda: _pending_is(outbox, 0))
        wake_s = time.monotonic() - t0
        stored = await backend.alerts()
        stats = await backend.stats()
    assert [a["alert"]["alert_id"] for a in stored] == [r["alert_id"] for r in [*records, live]]
    assert stats["accepted"] == 26 and stats["duplicates"] == 0 and stats["posts"] == 4
    assert up.status.delivered_total == 26 and up.status.consecutive_failures == 0
    assert up.status.last_success_at is not None
    assert wake_s < 0.45, f"live alert waited {wake_s:.2f}s: not woken by the outbox"
    assert (await outbox.stats()).delivered == 26


async def test_503_burst_with_retry_after_delivers_exactly_once(
    tmp_path: Path, outbox: Outbox
) -> None:
    records = await outbox.append([draft(i=i) for i in range(5)])
    async with BackendServer(db=tmp_path / "backend.db", token=TOKEN) as backend:
        # First answer lost after the backend stored the batch, then a plain 503 burst.
        backend.inject(Fault(status=503, retry_after="1", after_store=True))
        backend.inject(Fault(status=503, retry_after="1"), count=1)
        t0 = time.monotonic()
        async with Running(HttpUplink(cfg(backend.url, max_backoff_s=5.0), outbox)) as up:
            await until(lambda: _pending_is(outbox, 0))
        elapsed = time.monotonic() - t0
        stats = await backend.stats()
        stored = await backend.alerts()
    assert elapsed >= 1.9, f"Retry-After: 1 not honoured twice ({elapsed:.2f}s)"
    assert sorted(a["alert"]["alert_id"] for a in stored) == sorted(
        r["alert_id"] for r in records
    )  # each exactly once
    assert stats["duplicates"] == 5 and stats["accepted"] == 5 and stats["faults_served"] == 2
    assert up.status.failures_total == 2 and up.status.delivered_total == 5


async def test_backend_down_then_back_on_same_port_loses_nothing(
    tmp_path: Path, outbox: Outbox
) -> None:
    async with BackendServer(db=tmp_path / "backend.db", token=TOKEN) as backend:
        port, url = backend.port, backend.url
    records = await outbox.append([draft(tier=1 + i % 3, i=i) for i in range(30)])
    uplink = HttpUplink(cfg(url, timeout_s=0.5), outbox)
    async with Running(uplink) as up:
        await until(lambda: _true(up.status.consecutive_failures >= 3))
        assert (await outbox.stats()).pending == 30  # nothing marked without a 2xx
        assert up.status.last_error and up.status.delivered_total == 0
        async with BackendServer(port=port, db=tmp_path / "backend.db", token=TOKEN) as again:
            await until(lambda: _pending_is(outbox, 0))
            stored = await again.alerts()
            stats = await again.stats()
    assert sorted(a["alert"]["seq"] for a in stored) == [r["seq"] for r in records]
    assert stats["duplicates"] == 0
    # The backlog drained tier 1 first, then oldest first.
    tiers = [a["alert"]["asset"]["tier"] for a in stored]
    assert tiers == sorted(tiers)
    assert up.status.consecutive_failures == 0 and up.status.next_retry_in_s is None


async def test_400_dead_letters_only_the_bad_alert_with_reason(
    tmp_path: Path, outbox: Outbox
) -> None:
    # Three machines' alerts (one's clear may not overtake its raise: not as a canary).
    records = await outbox.append([draft(i=i, asset=f"asset-{i}") for i in range(3)])
    # A wrong record in the outbox (as a bug upstream would write it).
    with sqlite3.connect(outbox.path) as conn:
        body = conn.execute("SELECT body FROM alerts WHERE seq = 2").fetchone()[0]
        conn.execute(
            "UPDATE alerts SET body = ? WHERE seq = 2",
            (body.replace('"detected_at":"2026', '"detected_at":"yesterday '),),
        )
    async with (
        BackendServer(db=tmp_path / "backend.db", token=TOKEN) as backend,
        Running(HttpUplink(cfg(backend.url), outbox)) as up,
    ):
        await until(lambda: _pending_is(outbox, 0))
        stored = await backend.alerts()
    [dead] = await outbox.dead_letters()
    assert dead["id"] == records[1]["alert_id"] and dead["uplink"] == UP
    assert dead["reason"].startswith("HTTP 400: ") and "detected_at" in dead["reason"]
    assert [a["alert"]["seq"] for a in stored] == [1, 3]  # the good ones still went
    assert up.status.dead_lettered_total == 1 and up.status.delivered_total == 2
    assert (await outbox.stats()).dead_lettered == 1


async def test_wrong_token_is_retried_not_dead_lettered(tmp_path: Path, outbox: Outbox) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("old-token\n")
    await outbox.append([draft(i=i) for i in range(3)])
    async with BackendServer(db=tmp_path / "backend.db", token=TOKEN) as backend:
        c = cfg(backend.url, token=None, token_file=token_file)
        async with Running(HttpUplink(c, outbox)) as up:
            await until(lambda: _true(up.status.failures_total >= 2))
            assert (await outbox.stats()).dead_lettered == 0
            assert "401" in (up.status.last_error or "")
            token_file.write_text(TOKEN + "\n")  # rotated: re-read after a 401
            await until(lambda: _pending_is(outbox, 0))
        assert (await backend.stats())["accepted"] == 3


async def test_timeout_is_retried(tmp_path: Path, outbox: Outbox) -> None:
    await outbox.append([draft()])
    async with BackendServer(db=tmp_path / "backend.db", token=TOKEN) as backend:
        backend.inject(Fault(status=200, delay_s=1.5))
        async with Running(HttpUplink(cfg(backend.url, timeout_s=0.3), outbox)) as up:
            await until(lambda: _pending_is(outbox, 0))
        assert up.status.failures_total == 1 and "Timeout" in (up.status.last_error or "")
        assert (await backend.stats())["accepted"] == 1


async def _pending_is(outbox: Outbox, n: int) -> bool:
    return (await outbox.stats()).pending == n


class _Longest(random.Random):
    """Always the longest backoff, so the test sees the wait a new alert must cut short."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_a_returning_backend_is_noticed_by_the_probe_not_the_backoff(
    tmp_path: Path, outbox: Outbox
) -> None:
    async with BackendServer(db=tmp_path / "backend.db", token=TOKEN) as backend:
        port, url = backend.port, backend.url
    await outbox.append([draft(i=0)])
    uplink = HttpUplink(
        cfg(url, max_backoff_s=60, timeout_s=0.5, probe_interval_s=0.5),
        outbox,
        base_backoff_s=30,
        rng=_Longest(),
    )
    async with Running(uplink) as up:
        await until(lambda: _true(up.status.consecutive_failures >= 1))
        await asyncio.sleep(3.0)  # down: cheap probes only, no POST storm
        assert up.status.attempts_total == 1 and up.status.state == "probing"
        assert 3 <= up.status.probes_total <= 7, up.status.probes_total
        assert up.status.next_retry_in_s is not None and up.status.next_retry_in_s > 20
        async with BackendServer(port=port, db=tmp_path / "backend.db", token=TOKEN) as again:
            t0 = time.monotonic()
            await until(lambda: _pending_is(outbox, 0), timeout_s=5)
            waited = time.monotonic() - t0
            assert len(await again.alerts()) == 1
    assert waited < 2.0, f"{waited:.2f} s after the backend's return (the backoff was 30 s)"
    assert up.status.resumed_by_probe_total == 1


async def test_new_alert_cuts_a_long_backoff_short(tmp_path: Path, outbox: Outbox) -> None:
    await outbox.append([draft(i=0)])
    async with BackendServer(db=tmp_path / "backend.db", token=TOKEN) as backend:
        backend.inject(Fault(status=404, body="no such route"), count=1)  # a proxy misroute
        uplink = HttpUplink(cfg(backend.url, max_backoff_s=60), outbox, base_backoff_s=30,
                            rng=_Longest())  # fmt: skip
        async with Running(uplink) as up:
            await until(lambda: _true(up.status.consecutive_failures >= 1))
            await asyncio.sleep(1.5)
            # It answered (404): no probe can tell when that is fixed, so it backs off 30 s.
            assert (await outbox.stats()).pending == 1
            assert up.status.state == "backoff" and up.status.probes_total == 0
            t0 = time.monotonic()
            await outbox.append([draft(tier=1, i=1)])  # a live alert
            await until(lambda: _pending_is(outbox, 0), timeout_s=5)
            waited = time.monotonic() - t0
            assert len(await backend.alerts()) == 2
    assert waited < 3.0, waited


async def test_items_arriving_during_an_outage_do_not_turn_the_backoff_into_a_storm(
    tmp_path: Path, outbox: Outbox
) -> None:
    """Summaries (a few hundred sensors: one every few seconds) and alerts keep coming while
    the backend refuses: the first new item cuts the 30 s backoff short once, the rest wait
    it out instead of a POST each second."""
    await outbox.append([draft(i=0)])
    async with BackendServer(db=tmp_path / "backend.db", token=TOKEN) as backend:
        # A rotated token the agent has not got yet: refused (401), retried with backoff.
        c = cfg(backend.url, token="expired", max_backoff_s=60)
        uplink = HttpUplink(c, outbox, base_backoff_s=30, rng=_Longest())
        async with Running(uplink) as up:
            await until(lambda: _true(up.status.consecutive_failures >= 1))
            for i in range(20):  # 4 s of new items, one every 0.2 s
                await outbox.append_summaries([_summary(i)])
                await asyncio.sleep(0.2)
            await until(lambda: _posts_at_least(backend, 2))
            posts = (await backend.stats())["posts"]
    # The first attempt, and one early retry for the new items; 5 before (one a second).
    assert posts == 2, posts
    assert up.status.state == "backoff"


async def _posts_at_least(backend: BackendServer, n: int) -> bool:
    return (await backend.stats())["posts"] >= n


def _summary(i: int) -> SummaryDraft:
    start = datetime(2026, 11, 21, 8, 0, tzinfo=UTC) + timedelta(minutes=5 * i)
    window = {"velocity_rms_mm_s": {"min": 1.0, "mean": 1.1, "max": 1.2, "last": 1.1}}
    return SummaryDraft(AssetRef("press-7", "Press 7", 1), "m1-de", "modbus", start,
                        start + timedelta(minutes=5), {"z": window})  # fmt: skip


async def test_token_file_with_a_line_break_is_refused_and_delivery_lives_on(
    tmp_path: Path, outbox: Outbox
) -> None:
    bad = tmp_path / "token"
    bad.write_bytes(b"abc\ndef\n")  # would be a forbidden header value
    async with BackendServer(db=tmp_path / "backend.db", token=TOKEN) as backend:
        await outbox.append([draft(i=0)])
        uplink = HttpUplink(cfg(backend.url, token=None, token_file=bad), outbox)
        async with Running(uplink) as up:
            await until(lambda: _true(up.status.consecutive_failures >= 2))
            assert up.status.delivered_total == 0  # refused token: nothing sent as valid
            bad.write_text(TOKEN + "\n")  # the operator fixes the file; a 401 re-reads it
            await until(lambda: _pending_is(outbox, 0))


async def test_wrong_url_404_is_retried_not_dead_lettered(tmp_path: Path, outbox: Outbox) -> None:
    await outbox.append([draft(i=i) for i in range(3)])
    async with BackendServer(db=tmp_path / "backend.db", token=TOKEN) as backend:
        wrong = backend.url.replace("/v1/alerts", "/v1/alertz")  # a proxy misroute, a typo
        async with Running(HttpUplink(cfg(wrong), outbox)) as up:
            await until(lambda: _true(up.status.consecutive_failures >= 2))
        assert (await outbox.stats()).dead_lettered == 0
        assert (await outbox.stats()).pending == 3  # all still there for the right URL
        async with Running(HttpUplink(cfg(backend.url), outbox)):
            await until(lambda: _pending_is(outbox, 0))


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_is_a_failure_and_marks_nothing_delivered(
    tmp_path: Path, outbox: Outbox, status: int
) -> None:
    await outbox.append([draft(i=i) for i in range(3)])
    async with (
        BackendServer(db=tmp_path / "a.db", token=TOKEN) as backend,
        BackendServer(db=tmp_path / "elsewhere.db", token=TOKEN) as elsewhere,
    ):
        backend.inject(Fault(status=status, location=elsewhere.url), count=1000)
        async with Running(HttpUplink(cfg(backend.url), outbox)) as up:
            await until(lambda: _true(up.status.consecutive_failures >= 2))
        assert (await outbox.stats()).pending == 3  # nothing marked delivered
        assert (await outbox.stats()).dead_lettered == 0
        assert f"HTTP {status} redirect to '{elsewhere.url}'" in (up.status.last_error or "")
        assert (await elsewhere.stats())["posts"] == 0  # the alerts went nowhere else
        assert (await backend.stats())["accepted"] == 0
        backend.backend.faults.queue.clear()  # the operator fixes the URL / the proxy
        async with Running(HttpUplink(cfg(backend.url), outbox)):
            await until(lambda: _pending_is(outbox, 0))
        assert (await backend.stats())["accepted"] == 3


async def test_a_web_page_answering_200_is_not_a_delivery(tmp_path: Path, outbox: Outbox) -> None:
    """A firewall between the gateway and the backend (F5 ASM by default) answers a blocked
    POST with 200 and an HTML page: the alerts never reached the backend."""
    await outbox.append([draft(i=i) for i in range(3)])
    page = "<html><body>The requested URL was rejected. Support ID: 1234</body></html>"
    async with BackendServer(db=tmp_path / "a.db", token=TOKEN) as backend:
        backend.inject(Fault(status=200, body=page, content_type="text/html"), count=1000)
        async with Running(HttpUplink(cfg(backend.url), outbox)) as up:
            await until(lambda: _true(up.status.consecutive_failures >= 2))
        assert (await outbox.stats()).pending == 3  # nothing marked delivered
        assert (await outbox.stats()).dead_lettered == 0
        assert "HTTP 200 with a web page (text/html)" in (up.status.last_error or "")
        assert (await backend.stats())["accepted"] == 0
        backend.backend.faults.queue.clear()  # IT lets the gateway through
        async with Running(HttpUplink(cfg(backend.url), outbox)):
            await until(lambda: _pending_is(outbox, 0))
        assert (await backend.stats())["accepted"] == 3


async def test_relative_token_file_is_reread_from_the_config_folder_not_the_cwd(
    tmp_path: Path,
    outbox: Outbox,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "token").write_text("old-token\n")
    (folder / "token").chmod(0o644)  # readable by others: warned about, still used
    await outbox.append([draft(i=i) for i in range(2)])
    async with BackendServer(db=tmp_path / "backend.db", token=TOKEN) as backend:
        (folder / "agent.yaml").write_text(
            "gateway: {id: gw-01}\n"
            "assets: [{id: a, machine: {standard: iso10816-1, class: I, rpm: 3000}}]\n"
            "sensors: [{id: s, asset: a, modbus: {host: 127.0.0.1}}]\n"
            f"uplinks: [{{http: {{url: '{backend.url}', token_file: token}}}}]\n"
            "store: {path: /tmp/unused.db}\n"
        )
        config = load_config(folder / "agent.yaml")
        monkeypatch.chdir(tmp_path)  # the service's working directory is elsewhere
        async with Running(HttpUplink(config.uplinks[0].http, outbox)) as up:
            await until(lambda: _true(up.status.failures_total >= 2))  # 401: old token
            (folder / "token").write_text(TOKEN + "\n")  # rotated in place
            await until(lambda: _pending_is(outbox, 0))
    assert "cannot use token_file" not in caplog.text
    assert caplog.text.count("is readable by other users (mode 0644)") == 1


async def test_a_store_restored_from_a_backup_never_reissues_a_delivered_id(
    tmp_path: Path,
) -> None:
    """An operator restores last night's store file (a damaged card, a botched upgrade):
    alerts issued since then are at the backend already, under ids the restored file would
    issue again; the backend would drop the new alerts as duplicates of those."""
    path = tmp_path / "outbox.db"
    backup = tmp_path / "backup.db"

    def store() -> Outbox:
        return Outbox(path, gateway_id="gw-01", max_bytes=1 << 30, uplinks=(UP,))

    async with store() as ob:
        before = await ob.append([draft(i=i) for i in range(3)])
    await asyncio.to_thread(shutil.copyfile, path, backup)  # the agent is stopped
    async with BackendServer(db=tmp_path / "backend.db", token=TOKEN) as backend:
        async with store() as ob:
            since = await ob.append([draft(i=10 + i) for i in range(2)])
            async with Running(HttpUplink(cfg(backend.url), ob)):
                await until(lambda: _pending_is(ob, 0))
        await asyncio.to_thread(shutil.copyfile, backup, path)  # restored, agent stopped
        async with store() as ob:
            [new] = await ob.append([draft(tier=1, i=99)])
            async with Running(HttpUplink(cfg(backend.url), ob)):
                await until(lambda: _pending_is(ob, 0))
        stored = {a["alert"]["alert_id"]: a["alert"] for a in await backend.alerts()}
    assert new["alert_id"] not in {r["alert_id"] for r in before + since}
    assert stored[new["alert_id"]]["detected_at"] == new["detected_at"]  # not dropped
    assert len(stored) == 6
