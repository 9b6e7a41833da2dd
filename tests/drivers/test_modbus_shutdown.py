"""Shutdown is certain: a poller cancelled exactly as its answer arrives still ends.

pymodbus awaited answers with ``asyncio.wait_for``; on Python 3.11 a cancellation landing
in the same loop iteration as the answer was swallowed and the poller polled on after
shutdown. Here the cancel is delivered from inside the link's answer callback, right after
the answer completed the request's future: the same loop iteration, every time.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from drivers.modbus import Backoff, Bus, ModbusPoller, TcpLink, Wheel, deadline_wheel
from drivers.profiles import load_profile
from drivers.reading import Reading
from simulators.modbus import ModbusSimServer, SimDevice
from simulators.scenario import Constant

pytestmark = pytest.mark.network
POLLERS = 40


@pytest.mark.parametrize("shared_timers", [False, True], ids=["own-timers", "timer-wheels"])
async def test_cancel_landing_with_the_answer_ends_every_poller(shared_timers: bool) -> None:
    """Also with the timer wheels the agent uses (ticks and request timeouts shared)."""
    delivered_after_cancel: list[Reading] = []
    cancelled_at: dict[str, bool] = {}
    ticks = Wheel(0.005) if shared_timers else None
    deadlines = deadline_wheel(0.01) if shared_timers else None
    async with ModbusSimServer([SimDevice(i, Constant()) for i in range(1, POLLERS + 1)]) as srv:
        pollers, tasks = [], []
        for i in range(1, POLLERS + 1):
            sid = f"s{i}"
            link = TcpLink("127.0.0.1", srv.port, connect_timeout_s=1.0, deadlines=deadlines)

            def sink(r: Reading, sid: str = sid) -> None:
                if cancelled_at.get(sid):
                    delivered_after_cancel.append(r)

            p = ModbusPoller(
                sid,
                bus=Bus(sid, "tcp", [link]),
                device_id=i,
                profile=load_profile("banner-qm30vt2"),
                timeout_s=0.5,
                poll_interval_s=0.02,
                sink=sink,
                backoff=Backoff(0.02),
                rng=random.Random(i),
                wheel=ticks,
            )
            pollers.append(p)
            tasks.append(asyncio.create_task(p.run(start_delay_s=0.0), name=f"poll[{sid}]"))

        answers_seen = {p.sensor_id: 0 for p in pollers}
        for p, task, link in zip(pollers, tasks, (p.bus.links[0] for p in pollers), strict=True):
            answer = link._answer  # the link's own callback: data in, request's future done

            def cancel_with_answer(tid, device_id, pdu, *, answer=answer, p=p, task=task):
                answer(tid, device_id, pdu)  # the request's future now holds its answer...
                answers_seen[p.sensor_id] += 1
                if answers_seen[p.sensor_id] == 3:  # ...and the cancel lands with it
                    cancelled_at[p.sensor_id] = True
                    task.cancel()

            link._answer = cancel_with_answer  # type: ignore[method-assign]

        done, pending = await asyncio.wait(tasks, timeout=5.0)
        for link in (p.bus.links[0] for p in pollers):
            link.close()
    assert not pending, f"{len(pending)} pollers kept running after their cancel"
    assert all(t.cancelled() for t in done)
    assert delivered_after_cancel == []
    assert all(n == 3 for n in answers_seen.values()), answers_seen


async def test_stop_flag_ends_a_poller_whose_cancel_was_lost() -> None:
    """The stop flag alone (no cancel at all) ends the loop at its next step."""
    readings: list[Reading] = []
    four = asyncio.Event()

    def sink(r: Reading) -> None:
        readings.append(r)
        if len(readings) >= 4:
            four.set()

    async with ModbusSimServer([SimDevice(1, Constant())]) as srv:
        p = ModbusPoller(
            "s1",
            bus=Bus("s1", "tcp", [TcpLink("127.0.0.1", srv.port, connect_timeout_s=1.0)]),
            device_id=1,
            profile=load_profile("banner-qm30vt2"),
            timeout_s=0.2,
            poll_interval_s=0.05,
            sink=sink,
        )
        task = asyncio.create_task(p.run(start_delay_s=0.0))
        await asyncio.wait_for(four.wait(), 5)
        p.stop()
        count = len(readings)
        done, _ = await asyncio.wait([task], timeout=1.0)
        p.bus.close()
    assert done, "the stop flag did not end the poller"
    assert len(readings) == count, "a reading was delivered after stop()"
