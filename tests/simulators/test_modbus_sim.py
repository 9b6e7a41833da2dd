"""The Modbus simulator: one request in, one answer out, with that request's ids.

Raw sockets on loopback: these tests check the bytes, not a client library's view of them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import sys
import time
from pathlib import Path

import pytest

from simulators._modbus_protocol import frame, read_request_pdu
from simulators.modbus import Fault, ModbusSimServer, SimDevice, parse_device, register_image
from simulators.scenario import Constant, Degrade, Healthy, make_scenario

pytestmark = pytest.mark.network
REPO = Path(__file__).resolve().parents[2]
FAST = Constant({"velocity_rms_mm_s": 1.111, "kurtosis": 3.0, "temperature_c": 41.0})
SLOW = Constant({"velocity_rms_mm_s": 2.222, "kurtosis": 6.0, "temperature_c": 52.0})
VELOCITY_Z = 5201


def request(tid: int, device_id: int, address: int = 5200, count: int = 22, fc: int = 3) -> bytes:
    return frame(tid, device_id, read_request_pdu(fc, address, count))


async def read_answer(reader: asyncio.StreamReader, wait_s: float = 2.0) -> tuple[int, int, bytes]:
    async with asyncio.timeout(wait_s):
        header = await reader.readexactly(7)
        tid, pid, length, unit = struct.unpack(">HHHB", header)
        assert pid == 0
        return tid, unit, await reader.readexactly(length - 1)


def registers(pdu: bytes) -> list[int]:
    assert pdu[0] == 3, f"not a read answer: {pdu!r}"
    n = pdu[1]
    return list(struct.unpack(f">{n // 2}H", pdu[2 : 2 + n]))


async def test_two_requests_in_one_segment_get_two_answers() -> None:
    async with ModbusSimServer({1: FAST, 2: SLOW}) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(request(7, 1) + request(8, 2))  # one write: one TCP segment on loopback
        await writer.drain()
        a = await read_answer(reader)
        b = await read_answer(reader)
        writer.close()
    assert (a[0], a[1]) == (7, 1)
    assert (b[0], b[1]) == (8, 2)
    assert registers(a[2])[VELOCITY_Z - 5200] == 1111
    assert registers(b[2])[VELOCITY_Z - 5200] == 2222
    assert len(registers(a[2])) == len(registers(b[2])) == 22


async def test_a_slow_device_keeps_its_own_ids_and_values() -> None:
    devices = [SimDevice(1, FAST), SimDevice(2, SLOW, Fault("slow", delay_s=0.3))]
    async with ModbusSimServer(devices) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        started = time.monotonic()
        writer.write(request(100, 2) + request(101, 1) + request(102, 1))
        await writer.drain()
        answers = [await read_answer(reader) for _ in range(3)]
        elapsed = time.monotonic() - started
        writer.close()
    # in request order, each with its own transaction id, device id and values
    assert [(t, u) for t, u, _ in answers] == [(100, 2), (101, 1), (102, 1)]
    assert [registers(p)[VELOCITY_Z - 5200] for _, _, p in answers] == [2222, 1111, 1111]
    assert 0.25 < elapsed < 1.5


async def test_dead_device_gets_no_answer_and_does_not_block_the_connection() -> None:
    devices = [SimDevice(1, FAST), SimDevice(3, FAST, Fault("dead"))]
    async with ModbusSimServer(devices) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(request(1, 3) + request(2, 1))
        await writer.drain()
        tid, unit, _ = await read_answer(reader)
        assert (tid, unit) == (2, 1)
        with pytest.raises(TimeoutError):
            await read_answer(reader, wait_s=0.3)
        writer.close()
        assert srv.requests[3] == 1 and srv.answers[3] == 0


@pytest.mark.parametrize(
    ("pdu", "expected"),
    [
        (read_request_pdu(3, 5190, 5), bytes((0x83, 2))),  # below the map
        (read_request_pdu(3, 5210, 20), bytes((0x83, 2))),  # runs past the end
        (read_request_pdu(3, 5200, 0), bytes((0x83, 3))),  # count 0
        (read_request_pdu(3, 5200, 126), bytes((0x83, 3))),  # over 125
        (read_request_pdu(4, 5200, 2), bytes((0x84, 1))),  # input registers: not served
        (struct.pack(">BHH", 6, 5200, 1), bytes((0x86, 1))),  # write single register
    ],
)
async def test_illegal_requests_get_modbus_exceptions(pdu: bytes, expected: bytes) -> None:
    async with ModbusSimServer({1: FAST}) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(frame(9, 1, pdu))
        await writer.drain()
        assert await read_answer(reader) == (9, 1, expected)
        writer.close()


async def test_unknown_device_and_exception_fault() -> None:
    devices = [SimDevice(1, FAST, Fault("exception", code=4))]
    async with ModbusSimServer(devices) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(request(1, 1) + request(2, 9))
        await writer.drain()
        assert await read_answer(reader) == (1, 1, bytes((0x83, 4)))
        assert await read_answer(reader) == (2, 9, bytes((0x83, 11)))  # gateway: no target
        writer.close()


async def test_garbage_closes_the_connection_only() -> None:
    async with ModbusSimServer({1: FAST}) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"\x00\x01\x00\x07\x00\x06\x01\x03\x14\x50\x00\x01")  # protocol id 7
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 2.0) == b""
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(request(5, 1))
        assert (await read_answer(reader))[:2] == (5, 1)
        writer.close()


def test_register_image_writes_scaled_values() -> None:
    from drivers.profiles import load_profile

    image = register_image(load_profile("banner-qm30vt2"), FAST.sample(0.0))
    assert len(image) == 22
    assert image[5201] == 1111 and image[5205] == 1111
    assert image[5203] == 4100
    assert image[5200] == 0  # ignored (imperial) rows read 0


def test_parse_device_specs() -> None:
    d = parse_device("4:slow=2.0", seed=1)
    assert d.device_id == 4 and d.fault == Fault("slow", delay_s=2.0)
    assert isinstance(d.scenario, Healthy)
    d = parse_device("1:degrade,exception=6", life_s=30)
    assert isinstance(d.scenario, Degrade) and d.scenario.life_s == 30
    assert d.fault == Fault("exception", code=6)
    assert parse_device("3:dead").fault.kind == "dead"
    d = parse_device("1:degrade,onset=0", life_s=9)  # degrades from its first second
    assert isinstance(d.scenario, Degrade) and d.scenario.healthy_fraction == 0.0
    assert d.scenario.sample(1.0)["z"]["velocity_rms_mm_s"] > 1.2
    bad_specs = ("x:healthy", "1:sick", "300:healthy", "1", "1:slow=abc", "1:healthy,onset=0",
                 "1:degrade,onset=1", "1:degrade,onset=x")  # fmt: skip
    for bad in bad_specs:
        with pytest.raises(ValueError, match="device"):
            parse_device(bad)


def test_degrade_crosses_the_zones_on_time() -> None:
    def crossing(scenario: Degrade, level: float) -> float:
        t = 0.0
        while scenario.sample(t)["z"]["velocity_rms_mm_s"] < level:
            t += 0.1
            assert t < 200
        return t

    for seed in range(5):
        s = Degrade(seed=seed, life_s=60.0)
        assert all(s.sample(t)["z"]["velocity_rms_mm_s"] < 1.1 for t in range(15))  # healthy
        assert 35.0 <= crossing(s, 2.8) <= 40.0, seed
        assert 45.0 <= crossing(s, 4.5) <= 50.0, seed
        end = [s.sample(t)["z"]["velocity_rms_mm_s"] for t in (60, 70, 100)]
        assert all(7.5 < v < 8.5 for v in end)
        assert s.sample(0)["z"]["kurtosis"] < 3.3 < 8 < s.sample(60)["z"]["kurtosis"]
        assert s.sample(0)["z"]["hf_accel_rms_g"] < 0.06 < 0.5 < s.sample(60)["z"]["hf_accel_rms_g"]


def test_scenarios_are_deterministic_and_healthy_is_zone_a_b() -> None:
    a, b = make_scenario("healthy", seed=3), make_scenario("healthy", seed=3)
    assert a.sample(12.34) == b.sample(12.34)
    assert a.sample(12.34) != make_scenario("healthy", seed=4).sample(12.34)
    values = [a.sample(t / 10)["z"] for t in range(200)]
    assert all(0.9 < v["velocity_rms_mm_s"] < 1.1 for v in values)  # below A/B 1.4
    assert all(2.7 < v["kurtosis"] < 3.3 for v in values)
    assert abs(a.sample(1.0)["all"]["temperature_c"] - 45.0) < 1.0


async def test_process_prints_ready_and_exits_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.modbus",
        "--port",
        "0",
        "--device",
        "1:degrade",
        "--device",
        "2:healthy",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert line.startswith("READY ")
        ready = json.loads(line.removeprefix("READY "))
        assert ready["host"] == "127.0.0.1"
        reader, writer = await asyncio.open_connection(ready["host"], ready["port"])
        writer.write(request(1, 2))
        assert (await read_answer(reader))[:2] == (1, 2)
        writer.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        assert await proc.stdout.read() == b""  # exactly one line on stdout
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_repair_replaces_the_degrading_bearing_only() -> None:
    srv = ModbusSimServer(
        [parse_device("1:degrade", life_s=10.0), parse_device("2:healthy", life_s=10.0)]
    )
    worn = srv.devices[1].scenario.sample(9.0)["z"]["velocity_rms_mm_s"]
    assert srv.repair() == [1]
    fixed = srv.devices[1].scenario.sample(9.0)["z"]["velocity_rms_mm_s"]
    assert worn > 4.5 and fixed < 1.4  # zone D before, zone A after (ISO group 2 rigid)
    assert srv.repair() == []  # nothing left to repair
