"""Shared buses: five devices on one RS-485 line (socat pty pair) and behind one gateway.

One dead and one slow device share the line with three healthy ones. The healthy ones
must keep their rate, and no answer may ever be credited to another device: every device
serves its own constant values, so each reading names its true source.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest

from drivers.modbus import Backoff, Bus, ModbusPoller, RtuLink, TcpLink
from drivers.profiles import load_profile
from drivers.reading import Reading
from simulators.modbus import Fault, GatewayLine, ModbusSimServer, SimDevice
from simulators.modbus_rtu import RtuSimServer
from simulators.scenario import Constant

pytestmark = [pytest.mark.network, pytest.mark.slow]
HEALTHY, DEAD, SLOW = (1, 2, 3), 4, 5


def velocity(device_id: int) -> float:
    return round(1.0 + 0.1 * device_id, 3)


def devices(slow_s: float) -> list[SimDevice]:
    out = [SimDevice(i, Constant({"velocity_rms_mm_s": velocity(i)})) for i in HEALTHY]
    out.append(SimDevice(DEAD, Constant({"velocity_rms_mm_s": velocity(DEAD)}), Fault("dead")))
    out.append(
        SimDevice(
            SLOW, Constant({"velocity_rms_mm_s": velocity(SLOW)}), Fault("slow", delay_s=slow_s)
        )
    )
    return out


async def run_bus(
    bus: Bus,
    *,
    interval_s: float,
    timeout_s: float,
    seconds: float,
    ids: tuple[int, ...] = (*HEALTHY, DEAD, SLOW),
    status_before_stop: bool = False,
    backoff_max_s: float = 2.0,
    start_step_s: float = 0.0,
) -> dict:
    readings: dict[str, list[Reading]] = defaultdict(list)
    pollers = [
        ModbusPoller(
            f"d{i}",
            bus=bus,
            device_id=i,
            profile=load_profile("banner-qm30vt2"),
            channels=["z"],
            timeout_s=timeout_s,
            poll_interval_s=interval_s,
            sink=lambda r: readings[r.sensor_id].append(r),
            backoff=Backoff(interval_s, max_s=backoff_max_s),
            rng=random.Random(i),
        )
        for i in ids
    ]
    tasks = [
        asyncio.create_task(p.run(start_delay_s=k * start_step_s)) for k, p in enumerate(pollers)
    ]
    await asyncio.sleep(seconds)
    status = bus.status() if status_before_stop else None
    for p in pollers:
        p.stop()
    for t in tasks:
        t.cancel()
    await asyncio.wait(tasks, timeout=2.0)
    assert all(t.done() for t in tasks), "a poller outlived its stop"
    bus.close()
    return {
        "readings": readings,
        "pollers": {p.sensor_id: p for p in pollers},
        "bus": bus,
        "status": status,
    }


def assert_line_shared_fairly(result: dict, *, interval_s: float, seconds: float) -> None:
    readings, pollers = result["readings"], result["pollers"]
    expected = seconds / interval_s
    for i in HEALTHY:
        got = readings[f"d{i}"]
        assert len(got) >= 0.95 * expected - 1, (i, len(got), expected)
        for r in got:  # never another device's answer
            assert r.features["velocity_rms_mm_s"] == pytest.approx(velocity(i), abs=1e-9)
            assert r.quality == "good"
    assert readings[f"d{DEAD}"] == []
    assert readings[f"d{SLOW}"] == []
    for i in (DEAD, SLOW):
        st = pollers[f"d{i}"].status
        assert st.state == "backoff", st
        # The breaker: far fewer attempts than ticks once it is open.
        assert st.polls_total < 0.6 * expected, st


async def test_rtu_line_with_a_dead_and_a_slow_device(serial_pair: tuple[str, str]) -> None:
    agent_tty, device_tty = serial_pair
    interval, timeout, seconds = 0.5, 0.15, 5.0
    async with RtuSimServer(devices(slow_s=0.3), device_tty, baudrate=9600) as sim:
        link = RtuLink(agent_tty, baudrate=9600, late_flush_s=0.05)
        result = await run_bus(
            Bus("line-1", "rtu", [link]), interval_s=interval, timeout_s=timeout, seconds=seconds
        )
    assert_line_shared_fairly(result, interval_s=interval, seconds=seconds)
    assert sim.requests[DEAD] >= 1 and sim.answers[DEAD] == 0
    # The slow device's late answers were recognised as late (never taken), or flushed.
    assert link.late_answers + link.flushed_bytes > 0
    assert link.noisy_reads == 0  # a slow device is not noise: the line falls quiet
    status = result["bus"].status()
    assert status.kind == "rtu" and 0 < status.utilisation < 1


async def test_rtu_garbled_short_and_wrong_id_answers_are_refused(
    serial_pair: tuple[str, str],
) -> None:
    agent_tty, device_tty = serial_pair
    sims = [
        SimDevice(1, Constant({"velocity_rms_mm_s": 1.1})),
        SimDevice(2, Constant(), Fault("garbled")),
        SimDevice(3, Constant(), Fault("short")),
        SimDevice(4, Constant(), Fault("wrong_id")),
    ]
    async with RtuSimServer(sims, device_tty, baudrate=115200):
        link = RtuLink(agent_tty, baudrate=115200)
        bus = Bus("line-1", "rtu", [link])
        pollers = {
            i: ModbusPoller(
                f"d{i}",
                bus=bus,
                device_id=i,
                profile=load_profile("banner-qm30vt2"),
                timeout_s=0.1,
                sink=print,
            )
            for i in range(1, 5)
        }
        for p in pollers.values():
            for _ in range(2):
                try:
                    await p.poll_once()
                except Exception as exc:
                    assert type(exc).__name__.startswith("Device"), exc
        bus.close()
    assert pollers[1].status.errors_total == 0
    assert pollers[2].status.errors_by_kind == {"crc": 2}
    assert pollers[3].status.errors_by_kind == {"short": 2}
    # Another device's valid frame is dropped as late; ours never comes: a timeout.
    assert pollers[4].status.errors_by_kind == {"timeout": 2}
    assert link.late_answers == 2


async def test_gateway_endpoint_is_one_line() -> None:
    """A TCP-to-RTU gateway: one request at a time; a silent device holds the line for the
    gateway's timeout, then gets exception 11, which the agent waits out (settle)."""
    interval, timeout, seconds = 0.5, 0.2, 5.0
    gw = GatewayLine(baudrate=19200, timeout_s=0.3)
    async with ModbusSimServer(devices(slow_s=0.5), gateway=gw) as srv:
        links = [TcpLink("127.0.0.1", srv.port, connect_timeout_s=1.0, settle_s=1.0)]
        result = await run_bus(
            Bus("dxm", "gateway", links),
            interval_s=interval,
            timeout_s=timeout,
            seconds=seconds,
        )
    assert_line_shared_fairly(result, interval_s=interval, seconds=seconds)
    # The gateway's exception 11 for the silent devices arrived after our timeout: dropped
    # as late, never read as the next device's answer.
    assert links[0].late_answers >= 2


async def test_gateway_overload_shows_in_utilisation() -> None:
    """More polls than the line can carry: the queue waits grow and utilisation says so."""
    gw = GatewayLine(baudrate=1200, timeout_s=0.3)  # ~0.5 s per exchange at 1200 baud
    sims = [SimDevice(i, Constant()) for i in (1, 2, 3)]
    async with ModbusSimServer(sims, gateway=gw) as srv:
        bus = Bus("slow-line", "gateway", [TcpLink("127.0.0.1", srv.port, connect_timeout_s=1)])
        result = await run_bus(
            bus, interval_s=1.0, timeout_s=0.9, seconds=3.0, ids=(1, 2, 3), status_before_stop=True
        )
    assert result["status"].utilisation > 0.8, result["status"]
    assert sum(p.status.missed_ticks for p in result["pollers"].values()) > 0


@pytest.mark.parametrize("address", [0, 0x0300])
async def test_rtu_adapter_that_echoes_requests_still_reads(
    serial_pair: tuple[str, str], address: int
) -> None:
    """Many RS-485 adapters read back what they send: our request precedes each answer.
    The echo is dropped and counted; the answer is still taken (it used to fail its CRC).
    A request for registers 0x0300-0x03FF reads back as a whole, valid answer frame (its
    third byte, 3, a byte count that its CRC closes): still an echo, not a late answer."""
    import os
    import struct
    import tty

    from drivers.modbus._frames import rtu_frame

    agent_tty, device_tty = serial_pair
    fd = os.open(device_tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    loop = asyncio.get_running_loop()
    pending = bytearray()

    def answer_with_echo() -> None:
        pending.extend(os.read(fd, 256))
        while len(pending) >= 8:
            request = bytes(pending[:8])
            del pending[:8]
            count = int.from_bytes(request[4:6], "big")
            regs = struct.pack(f">{count}H", *range(7, 7 + count))
            os.write(fd, request)  # the echo, then the device's answer once the request
            # is off the wire (an answer cannot begin earlier: such bytes are dropped)
            answer = rtu_frame(request[0], bytes((3, 2 * count)) + regs)
            loop.call_later(0.005, os.write, fd, answer)

    loop.add_reader(fd, answer_with_echo)
    try:
        link = RtuLink(agent_tty, baudrate=115200)
        bus = Bus("line-1", "rtu", [link])
        for count in (1, 2, 4):  # answers shorter and longer than the 8-byte echo
            assert await bus.read(1, 3, address, count, 0.2) == list(range(7, 7 + count))
        assert link.late_answers == 0 and bus.status().late_answers == 0
        assert link.echoes == 3
        assert bus.status().echoes == 3  # shown per line in /metrics (edge_bus_echoes)
        bus.close()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def test_a_queued_read_cancelled_as_the_line_is_released_ends_cancelled() -> None:
    # Pollers stopped while queued for a shared line: the release passed over the cancelled
    # request, and its cancellation then tried to leave the queue again ("ValueError:
    # <Future cancelled> is not in deque", reported as an unexpected poller error).
    link = TcpLink("127.0.0.1", 9, connect_timeout_s=1)  # never connected: only queued for
    bus = Bus("gw", "gateway", [link])
    taken = bus._free.pop(0)  # another read holds the line
    queued = asyncio.create_task(bus._acquire())
    await asyncio.sleep(0)  # queued behind it
    queued.cancel()  # the poller is stopped...
    bus._release(taken)  # ...as the line is released, before the queued task runs again
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert bus._free == [taken]  # the line is free again, nobody waits
    assert not bus._waiters


async def test_a_silent_unit_behind_a_gateway_costs_its_neighbours_few_ticks() -> None:
    """A unit that never answers holds the gateway's line for the gateway's whole timeout,
    longer than its neighbours' interval: every attempt makes them miss ticks. Once its
    breaker is open it is probed rarely (its failed polls take at most ~5 % of the line),
    not at the breaker's quick first steps, and its fault is still reported."""
    interval, timeout, seconds, silent = 0.2, 0.1, 5.0, 9
    gw = GatewayLine(baudrate=19200, timeout_s=0.5)  # the line is held 0.5 s per attempt
    ids = tuple(range(1, 10))
    sims = [SimDevice(i, Constant({"velocity_rms_mm_s": velocity(i)})) for i in ids]
    sims[-1].fault = Fault("dead")
    async with ModbusSimServer(sims, gateway=gw) as srv:
        link = TcpLink("127.0.0.1", srv.port, connect_timeout_s=1.0, settle_s=1.0)
        result = await run_bus(
            Bus("dxm", "gateway", [link]), interval_s=interval, timeout_s=timeout,
            seconds=seconds, ids=ids, backoff_max_s=10.0, start_step_s=0.02,
        )  # fmt: skip
    readings, pollers = result["readings"], list(result["pollers"].values())
    dead = pollers[-1].status
    assert dead.state == "backoff" and dead.consecutive_failures >= 3, dead  # still reported
    assert readings[f"d{silent}"] == []
    # Three failures at the cadence open the breaker (and raise its sensor_fault); then the
    # next probe waits >= 0.5 s / 5 % capped at 10 s, drawn from [5, 10] s: none in 5 s.
    # The old breaker probed again after 0.1-0.2 s, 0.2-0.4 s, 0.4-0.8 s...: 7-8 attempts.
    assert srv.requests[silent] <= 4, srv.requests
    # Each attempt costs every neighbour a tick or two (0.5 s hold, 0.2 s interval): about
    # 3 x 8 x 2 = 48 with three attempts; the old breaker cost them about 100.
    missed = sum(p.status.missed_ticks for p in pollers[:-1])
    assert missed <= 92, (missed, [p.status.missed_ticks for p in pollers])
    for i in ids[:-1]:
        assert all(r.features["velocity_rms_mm_s"] == velocity(i) for r in readings[f"d{i}"])
