"""The portfolio page over real HTTP: access with the key, escaping, and a real browser."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from simulators.backend import BackendServer
from simulators.backend_config import BackendConfig
from simulators.cases import build_portfolio
from simulators.portfolio import ordered, totals
from simulators.portfolio_page import MAX_DETAILED, render_page
from tests.chromium import browser, chromium_binary
from tests.simulators._records import Script

TOKEN = "page-token"
HOSTILE = '</title><script>window.pwned=1</script><img src=x onerror="window.pwned=2">"\'&'


class _Tags(HTMLParser):
    """Every start tag and its attributes, as a browser's parser would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _hostile_records() -> list[dict[str, Any]]:
    s = Script(datetime(2026, 11, 21, 8, tzinfo=UTC), asset=HOSTILE)
    recs = [s.early_warning(0.0), s.zone(1.0, "C", 3.0, ttf=(5.0, 3.0, 8.0)), s.repair(2.0)]
    for r in recs:
        r["asset"]["name"] = HOSTILE
        r["sensor"]["id"] = HOSTILE
    recs[-1]["evidence"]["note"] = HOSTILE
    return recs


@contextlib.asynccontextmanager
async def _hostile_backend(tmp_path: Path) -> AsyncIterator[BackendServer]:
    async with BackendServer(db=tmp_path / "b.db") as server, aiohttp.ClientSession() as s:
        async with s.post(server.url, json={"alerts": _hostile_records()}) as resp:
            assert resp.status == 200
        yield server


async def test_record_text_is_escaped_everywhere_on_the_page(tmp_path: Path) -> None:
    async with (
        _hostile_backend(tmp_path) as server,
        aiohttp.ClientSession() as s,
        s.get(f"{server.base_url}/portfolio") as resp,
    ):
        assert resp.status == 200
        csp = resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert "default-src 'none'" in csp  # no script could run even if one slipped through
    parser = _Tags()
    parser.feed(page)
    assert parser.tags and not [t for t, _ in parser.tags if t in ("script", "img", "iframe")]
    assert not [(t, a) for t, a in parser.tags for k in a if k.startswith("on")]
    assert page.count("&lt;script&gt;window.pwned=1&lt;/script&gt;") >= 3  # name, id, note
    assert page.count("<title>") == page.count("</title>")


async def test_page_key_sets_a_cookie_and_writes_still_need_the_token(tmp_path: Path) -> None:
    async with (
        BackendServer(db=tmp_path / "b.db", token=TOKEN) as b,
        # A browser keeps cookies of an IP-address host; aiohttp does so only when unsafe.
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s,
    ):
        page = f"{b.base_url}/portfolio"
        async with s.get(page) as resp:
            assert resp.status == 401 and "?key=" in await resp.text()
        async with s.get(page, params={"key": "wrong"}, allow_redirects=False) as resp:
            assert resp.status == 401
        async with s.get(page, params={"key": TOKEN, "state": "open"}, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/portfolio?state=open"
            cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        async with s.get(page) as resp:  # the session kept the cookie
            assert resp.status == 200 and "No case yet" in await resp.text()
        async with s.get(f"{b.base_url}/v1/cases") as resp:
            assert resp.status == 200
        async with s.post(f"{b.base_url}/v1/cases/c-000000000000/confirm", json={}) as resp:
            assert resp.status == 401  # the cookie alone never confirms (no cross-site writes)
        async with s.get(page, params={"state": "closed"}) as resp:
            assert resp.status == 400


async def test_a_store_from_an_older_backend_gets_cases(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    rec = Script(datetime(2026, 11, 21, 8, tzinfo=UTC)).zone(0.0, "C", 3.0)
    with sqlite3.connect(db) as conn:  # the alerts table as the previous backend made it
        conn.execute(
            "CREATE TABLE alerts (receipt INTEGER PRIMARY KEY AUTOINCREMENT, alert_id TEXT NOT "
            "NULL UNIQUE, gateway_id TEXT NOT NULL, seq INTEGER NOT NULL, received_at TEXT NOT "
            "NULL, body TEXT NOT NULL)"
        )
        conn.execute(
            "INSERT INTO alerts (alert_id, gateway_id, seq, received_at, body) VALUES (?,?,?,?,?)",
            (rec["alert_id"], rec["gateway_id"], rec["seq"], rec["detected_at"], json.dumps(rec)),
        )
    async with BackendServer(db=db) as b, aiohttp.ClientSession() as s:
        async with s.get(f"{b.base_url}/v1/cases") as resp:
            cases = (await resp.json())["cases"]
        assert [c["detection"]["alert_id"] for c in cases] == [rec["alert_id"]]
        assert (await b.stats())["stored"] == 1


async def test_chromium_runs_no_record_text_as_code(tmp_path: Path) -> None:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    async with _hostile_backend(tmp_path) as server, browser(binary) as page:
        await page.open(f"{server.base_url}/portfolio")
        seen = await page.evaluate(
            "({scripts: document.scripts.length, pwned: window.pwned ?? null,"
            " images: document.images.length,"
            " name: document.querySelector('tr.case-row td.asset small').textContent})"
        )
    assert seen == {"scripts": 0, "pwned": None, "images": 0, "name": HOSTILE}


def test_a_long_portfolio_draws_the_first_cases_in_full_and_links_the_rest() -> None:
    records = []
    for i in range(MAX_DETAILED + 3):
        s = Script(datetime(2026, 11, 21, 8, tzinfo=UTC), asset=f"fan {i}&co")
        s.seq = 100 * i
        records += [s.zone(0.0, "C", 3.0, ttf=(5.0, 3.0, 8.0)), s.repair(1.0)]
    cases = ordered(build_portfolio(records, [], BackendConfig()).cases)
    selection = {
        "cases": cases,
        "totals": totals(cases, "EUR"),
        "monitoring_gaps": [],
        "unmatched_maintenance": [],
        "generated_at": "2026-11-21T09:00:00.000Z",
    }
    page = render_page(selection, "EUR")
    assert page.count('<section class="case"') == MAX_DETAILED
    assert page.count('class="case-row"') == MAX_DETAILED + 3
    # The others link to their asset's own page, the id URL-encoded.
    assert len(re.findall(r'href="/portfolio\?asset=fan\+\d+%26co#c-[0-9a-f]{12}"', page)) == 3
