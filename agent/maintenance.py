"""`edge-agent maintenance`: record a repair so the portfolio can close detect -> repair.

With the agent running, the event goes through its loopback endpoint (the running monitor
resets the asset's baselines and trends at once). With the agent stopped, the event is
written straight into the store and the next start loads the reset state. The store lock
tells the two cases apart, so the store never has two writers.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any, TextIO

from agent.analysis.monitor import Monitor
from agent.config import Config
from agent.store import Outbox, StoreError, StoreInUseError, store_lock
from drivers.reading import utc_now

EXIT_FAILED = 1
EXIT_USAGE = 2


async def _offline(config: Config, asset: str, note: str) -> list[dict[str, Any]]:
    outbox = Outbox(
        config.store.path, gateway_id=config.gateway.id, max_bytes=config.store.max_bytes
    )
    async with outbox:
        monitor = Monitor(config, state=await outbox.load_state())
        update = monitor.maintenance(asset, utc_now(), note)
        return await outbox.append(update.drafts, update.state)


def _online(config: Config, asset: str, note: str) -> list[dict[str, Any]]:
    if config.health.port == 0:
        raise RuntimeError(
            "the agent is running but its health endpoint has a random port (health.port: 0); "
            "set a fixed health.port, or stop the agent and run this again"
        )
    url = f"http://{config.health.host}:{config.health.port}/v1/maintenance"
    req = urllib.request.Request(
        url,
        data=json.dumps({"asset": asset, "note": note}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return list(json.load(resp)["records"])
    except urllib.error.HTTPError as exc:
        try:
            reason = json.load(exc).get("error", exc)
        except ValueError:  # not our JSON error body
            reason = f"HTTP {exc.code}"
        raise RuntimeError(f"the agent refused: {reason}") from exc
    except OSError as exc:
        raise RuntimeError(
            f"the agent holds the store but does not answer at {url}: {exc}"
        ) from exc


def record_maintenance(config: Config, asset: str, note: str, out: TextIO, err: TextIO) -> int:
    """Record the event; print its record(s) as JSON Lines. Returns the exit code."""
    known = [a.id for a in config.assets]
    if asset not in known:
        print(f"unknown asset {asset!r}; configured assets: {', '.join(known)}", file=err)
        return EXIT_USAGE
    try:
        try:
            with store_lock(config.store.path):
                records = asyncio.run(_offline(config, asset, note))
        except StoreInUseError:
            records = _online(config, asset, note)
    except (RuntimeError, StoreError) as exc:
        print(f"maintenance not recorded: {exc}", file=err)
        return EXIT_FAILED
    for rec in records:
        print(json.dumps(rec, sort_keys=True), file=out)
    return 0
