"""The agent's ordered stop: stop reading, analyse what was read, persist it, then stop
the rest (undelivered alerts wait on disk for the next start).

Every wait is bounded, so the whole stop ends well inside systemd's TimeoutStopSec=30: a
poller or link that does not end in time is abandoned, and said so. A reload and the stop
never overlap (agent.reload): nothing starts once the stop began, and a reload already
applying its changes is waited for, so what it started is stopped here too.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.runtime import Agent

POLLER_STOP_S = 2.0  # bound on waiting for pollers at shutdown (then they are abandoned)
SHUTDOWN_DRAIN_S = 10.0  # well inside systemd's TimeoutStopSec=30
RELOAD_SETTLE_S = 8.0  # a reload applying when stop begins (bounded stops: 2 + 2 + 5 s)


@dataclass(frozen=True, slots=True)
class PipelineTasks:
    """The agent's own tasks in its TaskGroup, as the stop ends them.

    Attributes:
        producers: the tasks that make updates, and the store writer: ended together,
            then what they made is written a last time.
        others: the rest (feeds, watchdog, loop lag), cancelled with the uplinks; the
            uplinks are the agent's `deliveries` as the stop finds them (a reload may
            have replaced some).
    """

    producers: tuple[asyncio.Task[None], ...]
    others: tuple[asyncio.Task[None], ...]


async def shut_down(agent: Agent, tasks: PipelineTasks) -> None:
    """Stop the running agent in order; returns when only cancelled tasks remain."""
    agent.watchdog.notifier.notify("STOPPING=1")
    agent.readings.close()
    # Nothing starts from here, whatever a reload in flight asks; one that is applying
    # ends first, so what it stops is waited for below.
    agent.sensors.closed = agent.mqtt.closed = True
    if agent.reloader is not None:
        await agent.reloader.settle(timeout_s=RELOAD_SETTLE_S)
    await agent.sensors.close(timeout_s=POLLER_STOP_S)
    await agent.mqtt.close(timeout_s=POLLER_STOP_S)
    await agent.readings.drain(timeout_s=SHUTDOWN_DRAIN_S)
    await agent.writer.close(tasks.producers)
    for t in [*tasks.others, *(t for _, t in agent.deliveries.values())]:
        t.cancel()
