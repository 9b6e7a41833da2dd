"""Headless Chromium for page tests: start it, load a URL, evaluate JavaScript in the page.

Debian's `chromium` is started per test with a fresh profile and no network services of
its own; it is driven over the DevTools protocol (a websocket on loopback) with aiohttp.
Tests skip, with the reason, when no chromium binary is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 20.0


def chromium_binary() -> str | None:
    """The chromium executable on PATH, if any."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One browser tab driven over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events seen meanwhile are kept)."""
        ident = next(self._ids)
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        async with asyncio.timeout(CALL_TIMEOUT_S):
            async for msg in self._ws:
                data = json.loads(msg.data)
                if data.get("id") == ident:
                    if "error" in data:
                        raise RuntimeError(f"{method}: {data['error']}")
                    return data.get("result", {})
                self._events.append(data)
        raise RuntimeError(f"{method}: the browser closed the connection")

    async def wait_event(self, method: str) -> dict[str, Any]:
        """The first event `method` (already seen or still to come)."""
        for ev in self._events:
            if ev.get("method") == method:
                return ev
        async with asyncio.timeout(CALL_TIMEOUT_S):
            async for msg in self._ws:
                data = json.loads(msg.data)
                self._events.append(data)
                if data.get("method") == method:
                    return data
        raise RuntimeError(f"no {method} event")

    async def open(self, url: str, width: int = 1280, height: int = 900) -> None:
        """Load `url` at this viewport size (a phone: mobile=True below 500 px)."""
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=width < 500,
        )
        await self.call("Page.enable")
        self._events.clear()
        await self.call("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired")

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def browser(binary: str) -> AsyncIterator[Page]:
    """A headless Chromium with a fresh profile, and one page of it."""
    # Chromium's helper processes (zygote, renderers, crashpad) can outlive the main one
    # and still write into the profile: the browser gets its own process group, which is
    # ended as a whole, and a late file in the profile cannot fail the test's cleanup.
    with tempfile.TemporaryDirectory(
        prefix="edge-chromium-", ignore_cleanup_errors=True
    ) as profile:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            async with asyncio.timeout(START_TIMEOUT_S):
                while not port_file.exists() or not port_file.read_text().strip():
                    if proc.returncode is not None:
                        raise RuntimeError(f"chromium exited with {proc.returncode}")
                    await asyncio.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    targets = await resp.json()
                ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                async with session.ws_connect(ws_url, max_msg_size=64 * 2**20) as ws:
                    yield Page(ws)
        finally:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                pass
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
