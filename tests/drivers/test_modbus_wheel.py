"""Shared timer wheels: what thousands of pollers wake and time out with in the agent.

A wheel resolves a future at its due time rounded up to the grain, so nothing is ever
early; a future done before its slot fires (an answer came, a poller was cancelled) is
left alone; a device that never answers still times out through it.
"""

from __future__ import annotations

import asyncio

import pytest

from drivers.modbus import LinkTimeout, TcpLink, Wheel, deadline_wheel
from simulators.modbus import Fault, ModbusSimServer, SimDevice
from simulators.scenario import Constant


async def test_sleepers_wake_at_or_after_their_due_time_never_before() -> None:
    loop = asyncio.get_running_loop()
    wheel = Wheel(0.01)
    start = loop.time()
    due = [start + 0.002 * i for i in range(1, 40)]  # 39 sleepers over 8 slots
    woke: list[tuple[float, float]] = []

    async def sleeper(when: float) -> None:
        await wheel.sleep_until(when)
        woke.append((when, loop.time()))

    await asyncio.gather(*(sleeper(w) for w in due))
    assert len(woke) == len(due)
    assert all(at >= when for when, at in woke), "a sleeper woke before its due time"
    assert len(wheel) == 0  # every slot fired and was dropped


async def test_a_future_done_before_its_slot_is_left_alone() -> None:
    loop = asyncio.get_running_loop()
    fired: list[asyncio.Future[object]] = []
    wheel = Wheel(0.01, fired.append)
    answered, cancelled, late = (loop.create_future() for _ in range(3))
    for fut in (answered, cancelled, late):
        wheel.add(fut, loop.time() + 0.02)
    answered.set_result("answer")
    cancelled.cancel()
    await asyncio.sleep(0.1)
    assert fired == [late]
    assert answered.result() == "answer"


async def test_a_wheel_used_from_a_new_event_loop_still_fires() -> None:
    wheel = Wheel(0.01)
    loop = asyncio.get_running_loop()
    due = loop.time() + 0.2
    wheel.add(loop.create_future(), due)  # a slot whose timer lives in this loop

    async def nap() -> None:  # the same slot from another loop (the agent built, run again)
        await asyncio.wait_for(wheel.sleep_until(due), 2)

    await asyncio.to_thread(asyncio.run, nap())


@pytest.mark.network
async def test_a_dead_device_times_out_through_the_shared_deadlines() -> None:
    deadlines = deadline_wheel(0.01)
    devices = [SimDevice(1, Constant()), SimDevice(2, Constant(), Fault("dead"))]
    async with ModbusSimServer(devices) as srv:
        healthy = TcpLink("127.0.0.1", srv.port, connect_timeout_s=1.0, deadlines=deadlines)
        dead = TcpLink("127.0.0.1", srv.port, connect_timeout_s=1.0, deadlines=deadlines)
        await healthy.connect()
        await dead.connect()
        try:
            answers = await asyncio.gather(
                healthy.read(1, 3, 5201, 2, 0.3),
                dead.read(2, 3, 5201, 2, 0.3),
                return_exceptions=True,
            )
        finally:
            healthy.close()
            dead.close()
    assert isinstance(answers[0], list) and len(answers[0]) == 2
    assert isinstance(answers[1], LinkTimeout)
    assert "0.3" in str(answers[1])
