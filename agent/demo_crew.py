"""The demo's view of the backend and its maintenance crew.

`BackendView` reads what the backend received and the cases it built, over HTTP as any
client would. `Crew` plays the people: a planner who confirms a case once it carries a
failure estimate (or reaches zone C), and a technician who replaces the bearing in the
planned window, midway between an estimate and its earliest failure (the lower bound).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import aiohttp

from agent.control import Peer
from agent.maintenance import MaintenanceRequest
from agent.records import parse_ts
from agent.runtime import Agent
from agent.store import StoreError

REQUEST_TIMEOUT_S = 3.0
NO_ESTIMATE_REPAIR_S = 3.0  # repair delay after a confirmation without any estimate
REPAIR_NOTE = "drive-end bearing replaced in a planned stop"


class BackendView:
    """A small client of the backend simulator: `async with BackendView(base, token) as b`."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        self._session = aiohttp.ClientSession(timeout=timeout, headers=self._headers)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self._session is not None
        async with self._session.request(method, self.base + path, **kwargs) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def records_after(self, receipt: int) -> tuple[list[dict[str, Any]], int]:
        """Records the backend stored after `receipt`, and the last receipt."""
        body = await self._json("GET", "/v1/alerts", params={"after": str(receipt)})
        return body["alerts"], body["last_receipt"]

    async def cases(self, **filters: str) -> dict[str, Any]:
        """GET /v1/cases with these filters."""
        return await self._json("GET", "/v1/cases", params=filters)  # type: ignore[no-any-return]

    async def confirm(self, case_id: str, by: str, note: str) -> dict[str, Any]:
        """POST /v1/cases/{id}/confirm."""
        body = {"by": by, "note": note}
        return await self._json("POST", f"/v1/cases/{case_id}/confirm", json=body)  # type: ignore[no-any-return]


class Crew:
    """The planner and the technician of the demo.

    Args:
        backend: the backend client.
        agent: the running agent (the technician records the repair through it).
        replace_bearing: makes the simulated machine healthy again.
        say: prints one story line.
    """

    def __init__(
        self,
        backend: BackendView,
        agent: Agent,
        replace_bearing: Callable[[], None],
        say: Callable[[str], None],
    ) -> None:
        self._backend, self._agent = backend, agent
        self._replace, self._say = replace_bearing, say
        self._due: dict[str, datetime] = {}
        self._confirmed: set[str] = set()
        self._repaired: set[str] = set()

    async def on_record(self, rec: dict[str, Any]) -> None:
        """React to one record the backend received."""
        asset = rec["asset"]["id"]
        if rec["kind"] not in ("severity", "trend") or rec["state"] == "cleared":
            return
        if asset in self._repaired:
            return
        ttf = rec.get("time_to_failure")
        if ttf:
            at = parse_ts(rec["detected_at"])
            due = at + timedelta(hours=ttf["lower_hours"] / 2)
            earlier = asset in self._due and due < self._due[asset] - timedelta(seconds=1)
            self._due[asset] = min(due, self._due.get(asset, due))
            if earlier:
                self._say(f"planner moves the repair of {asset} up to {_hms(due)} UTC")
        if asset not in self._confirmed and (ttf or rec["kind"] == "severity"):
            await self._confirm(asset)

    async def _confirm(self, asset: str) -> None:
        listing = await self._backend.cases(asset=asset, state="open")
        if not listing["cases"]:
            return
        case = listing["cases"][0]
        note = "trend and vibration reviewed on site: bearing wear confirmed"
        await self._backend.confirm(case["id"], "planner (demo)", note)
        self._confirmed.add(asset)
        due = self._due.setdefault(asset, _now() + timedelta(seconds=NO_ESTIMATE_REPAIR_S))
        est = case["latest_estimate"] or {}
        limit = (
            f", midway to the earliest estimated failure ({est['earliest_failure_at'][11:19]} UTC)"
            if est
            else ""
        )
        self._say(
            f"planner confirms case {case['id']} of {asset} (POST /v1/cases/{case['id']}/confirm) "
            f"and plans the repair for {_hms(due)} UTC{limit}"
        )

    async def run(self) -> None:
        """Repair each confirmed asset when its planned time comes."""
        while True:
            await asyncio.sleep(0.2)
            for asset in sorted(self._confirmed - self._repaired):
                if _now() >= self._due[asset]:
                    await self._repair(asset)

    async def _repair(self, asset: str) -> None:
        self._repaired.add(asset)
        self._replace()
        self._say(f"technician replaces the bearing of {asset} and records the repair")
        try:
            await self._agent.maintenance(
                MaintenanceRequest(asset, REPAIR_NOTE), Peer.this_process().describe("demo")
            )
        except StoreError as exc:
            self._say(f"the repair of {asset} is not recorded yet: {exc}")


def _now() -> datetime:
    return datetime.now(UTC)


def _hms(ts: datetime) -> str:
    return ts.strftime("%H:%M:%S")
