"""The agent's status as /healthz and /metrics show it: one snapshot, built from what the
pollers, buses, monitor, store and uplinks already hold (nothing is recomputed)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from agent.health import Snapshot
from agent.records import format_ts
from agent.store import StoreError
from drivers.reading import utc_now

if TYPE_CHECKING:
    from agent.runtime import Agent

STATS_TIMEOUT_S = 2.0  # /healthz answers even when the store writer is stuck
# Updates waiting longer than this (or a failed store write) make the agent "degraded";
# waiting for a shared transaction (agent.pending.STATE_BATCH_S) is normal.
UNSAVED_DEGRADED_S = 2.0


async def agent_snapshot(agent: Agent) -> Snapshot:
    """The agent's status, as /healthz and /metrics show it."""
    now_mono = time.monotonic()
    now = utc_now()
    sensors = []
    for p in agent.pollers:
        st = p.status
        last_ok = st.last_ok_at
        sensors.append(
            {
                "id": p.sensor_id,
                "bus": p.bus.name,
                "state": st.state,
                "last_ok_age_s": (now - last_ok).total_seconds() if last_ok else None,
                "consecutive_failures": st.consecutive_failures,
                "polls_total": st.polls_total,
                "errors_total": st.errors_total,
                "errors_by_kind": st.errors_by_kind,
                "missed_ticks": st.missed_ticks,
                "bad_values": st.bad_values,
                "bad_for_s": st.bad_for_s,
                "last_bad": list(st.last_bad),
                # channel/feature repeating one value, judged frozen (drivers.stuck)
                "stuck": list(p.stuck.stuck_now) if p.stuck is not None else [],
                "stuck_episodes": p.stuck.episodes if p.stuck is not None else 0,
                "last_rtt_s": st.last_rtt_s,
                "last_error": st.last_error,
            }
        )
    sensors += [m.status() for m in agent.mqtt.sensors]
    faults = agent.faults
    for s in sensors:
        # Only implausible values (saturated, sentinel, stuck...) for as long as raises its
        # sensor_fault: the machine is not watched, though the sensor answers.
        s["implausible_fault"] = faults is not None and faults.implausible_too_long(
            s["id"], s.get("bad_for_s") or 0.0
        )
    mqtt_links = [link.status() for link in agent.mqtt.links]
    buses = [asdict(b.status()) for b in agent.buses if b.kind != "tcp"]
    endpoints = [
        {
            "endpoint": p.address,
            "devices": len(p.members),
            "silent": p.outage is not None,
            "outages": p.outages,
            "outage_seconds": round(p.outage_s_total, 3),
        }
        for p in agent.sensors.peers.values()
        # A host's group (address: the host) only once silent: most hosts' devices are
        # judged by their endpoints, and would each be listed twice.
        if (p.grouped and p.level != "host") or p.outages or p.outage is not None
    ]
    channels = [
        {
            "asset": v.asset_id,
            "sensor": v.sensor_id,
            "channel": v.channel,
            "value": v.value,
            "zone": v.zone,
            "active_level": v.active_level,
            # None while the channel learns its baseline (after install, repair, relearn).
            "health_index": v.health_index,
            "flaps": {"severity": v.flaps[0], "trend": v.flaps[1]},
            # True: the last reading was of a stopped machine (no zone; alerts held as they were)
            "stopped": v.stopped,
            # None once the baseline is learned; else its progress, or that it waits for
            # the machine to run (under machine.running_above_mm_s nothing is learned).
            "learning": v.learning,
            # for /metrics: waiting_to_run (stopped before a baseline: nothing is learned),
            # learning, or watching (baseline learned)
            "learning_state": (
                "watching" if v.learning is None else "waiting_to_run" if v.stopped else "learning"
            ),
            # readings of tenfold jumps that fell back: garbage, not analysed
            "unconfirmed": v.unconfirmed,
        }
        for v in (agent.monitor.views() if agent.monitor else [])
    ]
    try:
        async with asyncio.timeout(STATS_TIMEOUT_S):
            store: dict[str, Any] = asdict(await agent.outbox.stats())
    except StoreError as exc:
        store = {"error": str(exc)}
    except TimeoutError:
        store = {"error": f"the store writer did not answer within {STATS_TIMEOUT_S} s"}
    wd = agent.watchdog
    reloads = asdict(agent.reloader.counters) if agent.reloader is not None else {}
    backlogs = store.get("uplinks", {})
    uplinks = [{**asdict(u.status), "backlog": backlogs.get(u.name)} for u in agent.uplinks]
    degraded = (
        any(s["state"] not in ("ok", "starting") for s in sensors)
        # A sensor that answers but is not watched: frozen at one value, or garbage only.
        or any(s.get("stuck") or s["implausible_fault"] for s in sensors)
        or any(not link["connected"] or link["refused_subscriptions"] for link in mqtt_links)
        or any(u.get("consecutive_failures", 0) > 0 for u in uplinks)
        or any(u.get("summaries_consecutive_failures", 0) > 0 for u in uplinks)
        or agent.pending.failing
        or agent.pending.held_for_s > UNSAVED_DEGRADED_S
        or "error" in store
        or wd.withheld is not None
    )
    return {
        "gateway": agent.config.gateway.id,
        "agent": agent.identity,
        "status": "degraded" if degraded else "ok",
        # When the ages below were measured: /healthz answers requests within a second of
        # one another from one snapshot (agent.health), so a monitor can tell how old it is.
        "at": format_ts(now),
        "uptime_s": round(now_mono - agent.started, 3),
        "sensors": sensors,
        "buses": buses,
        "endpoints": endpoints,
        "mqtt": mqtt_links,
        "channels": channels,
        "uplinks": uplinks,
        "store": store,
        "reload": reloads,
        "pipeline": {
            **asdict(agent.counters),
            "unsaved_updates": len(agent.pending),
            "queue_depth": agent.queue_depth,
            "queue_size": agent.queue_size,
            "loop_lag_max_s": round(agent.take_lag(), 4),
        },
        "process": {
            "open_fds": wd.fds[0],
            "fd_limit": wd.fds[1],
            "loop_lag_seconds": round(wd.loop_lag_s, 3),
            "store_writer_busy_seconds": round(agent.outbox.writer_busy_s, 3),
            "hung": wd.withheld,
        },
    }
