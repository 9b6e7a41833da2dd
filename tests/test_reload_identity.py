"""A reload that rewrites how a sensor's device is written, not which device it is, keeps
the sensor's open alerts as they are: no clear and no new raise at the backend (a real
`edge-agent run`, `edge-sim modbus` with a device in ISO zone D, `edge-sim backend`)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from agent.host_names import resolve_names
from tests._reload_agent import by_id, healthz, reload_cmd, running, sensor, until, write
from tests.test_reload import _backend_until, _m_alerts

pytestmark = [pytest.mark.network, pytest.mark.slow]

SENSORS = ["m1", "m2", "m3", "m5"]


async def _quiet_after(d: dict[str, Any], polls: int) -> list[dict[str, Any]]:
    """m5's backend records once it was polled `polls` more times (past a debounce) and the
    store had delivered everything."""
    before = by_id(await healthz(d))["m5"]["polls_total"]
    await until(d, lambda h: by_id(h)["m5"]["polls_total"] >= before + polls)
    await until(d, lambda h: h["store"]["pending"] == 0)
    return await _m_alerts(d, "m5")


def _episodes(recs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """m5's severity records, and any clear (the flat zone D readings may raise a trend
    alert of their own meanwhile: not the reload's doing)."""
    return [
        (r["sensor"]["channel"], r["kind"], r["state"])
        for r in recs
        if r["kind"] == "severity" or r["state"] == "cleared"
    ]


async def test_a_device_rewritten_from_its_name_to_its_address_keeps_its_open_alerts(
    tmp_path: Path,
) -> None:
    """Before: m5 by this machine's host name, rewritten to the address that name resolves
    to (the same device, unit id and registers), had its open severity alerts closed
    ('sensor replaced ... host names are not resolved') and raised again as new episodes
    after the reload: two records at the backend for one unchanged fault. And back."""
    name = socket.gethostname()
    addresses = (await resolve_names([name])).get(name.lower().rstrip("."), frozenset())
    if "loopback" not in addresses:
        pytest.skip(f"this machine's host name {name!r} does not resolve to loopback")

    def with_m5(d: dict[str, Any]) -> list[str]:
        """m5 by this machine's name, unit 5 of the agent's own simulator (zone D), from the
        agent's start; polled every 0.2 s: its alerts, and the polls past their debounce,
        come in tenths of a second."""
        m5 = sensor("m5", "press-7", d["port"], 5, poll_s=0.2)
        d["sensors"]["m5"] = m5.replace("127.0.0.1", name)
        return SENSORS

    async with running(tmp_path, devices=["5:velocity=12"], first=with_m5) as d:
        by_name = d["sensors"]["m5"]
        raised = await _backend_until(
            d, "m5", lambda rs: {r["sensor"]["channel"] for r in rs if r["kind"] == "severity"}
            >= {"x", "z"}
        )  # fmt: skip
        opened = _episodes(await _quiet_after(d, 1))
        assert ("z", "severity", "raised") in opened and raised
        for host in ("127.0.0.1", name):
            d["sensors"]["m5"] = by_name.replace(name, host)
            write(d, SENSORS, url=d["a"])
            done = await reload_cmd(d)
            assert done.returncode == 0, done.stderr
            assert "sensor m5 restarted: how it is read changed; its analysis state is kept" in (
                done.stdout
            ), done.stdout
            assert _episodes(await _quiet_after(d, 4)) == opened
