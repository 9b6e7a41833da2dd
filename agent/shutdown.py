"""The agent's ordered stop: stop reading, analyse what was read, persist it, then stop
the rest (undelivered alerts wait on disk for the next start).

Every wait is bounded, so the whole stop ends inside systemd's TimeoutStopSec=30: a
poller or link that does not end in time is abandoned, and said so; so is a store that
does not commit in time (a slow or hung disk): the agent exits saying how many alerts may
be lost, rather than being killed by systemd without a word. A reload and the stop
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
# From the stop's start, the store's last writes are waited for this long, then its thread
# this much longer to close the file: 24 + 3 s, inside systemd's TimeoutStopSec=30.
STOP_BUDGET_S = 24.0
STORE_CLOSE_S = 3.0
# `edge-agent run`'s exit status when the stop gave up on the store (EX_IOERR): the last
# alerts or state may be lost. Not 0, so systemd marks the unit failed (Restart=on-failure
# starts it again unless it was stopped on purpose) and an operator sees the stop was not clean.
EXIT_STOP_LOST_DATA = 74


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
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOP_BUDGET_S
    # What closes after the last flush (the control socket's requests under way, the
    # health endpoint's note, the store's thread) shares these last seconds: each is
    # bounded by them, so a hung store cannot add their own waits past the budget.
    agent.outbox.close_deadline = deadline + STORE_CLOSE_S
    if agent.control is not None:
        agent.control.close_deadline = deadline + STORE_CLOSE_S
    agent.readings.close()
    # Nothing starts from here, whatever a reload in flight asks; one that is applying
    # ends first, so what it stops is waited for below.
    agent.sensors.closed = agent.mqtt.closed = True
    if agent.reloader is not None:
        await agent.reloader.settle(timeout_s=RELOAD_SETTLE_S)
    await agent.sensors.close(timeout_s=POLLER_STOP_S)
    await agent.mqtt.close(timeout_s=POLLER_STOP_S)
    await agent.readings.drain(timeout_s=SHUTDOWN_DRAIN_S)
    await agent.writer.close(tasks.producers, timeout_s=max(1.0, deadline - loop.time()))
    for t in [*tasks.others, *(t for _, t in agent.deliveries.values())]:
        t.cancel()
