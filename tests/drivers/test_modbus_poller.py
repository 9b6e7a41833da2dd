"""ModbusPoller on its own TCP bus against the real simulator on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC

import pytest

from drivers.errors import (
    DeviceConnectionError,
    DeviceError,
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceTimeout,
)
from drivers.modbus import Backoff, Bus, LinkTimeout, ModbusPoller, TcpLink
from drivers.profiles import load_profile
from drivers.reading import Reading
from simulators.modbus import Fault, ModbusSimServer, SimDevice
from simulators.scenario import Constant, Degrade

pytestmark = pytest.mark.network
LOG = "edge_agent.drivers.modbus"
A = {"velocity_rms_mm_s": 1.111, "kurtosis": 3.001, "accel_rms_g": 0.201, "temperature_c": 41.5}
B = {"velocity_rms_mm_s": 2.222, "kurtosis": 6.002, "accel_rms_g": 0.402, "temperature_c": 52.25}


def poller(port: int, device_id: int, sink: Callable[[Reading], None], **kw) -> ModbusPoller:
    """A poller on its own TCP connection, as the runtime builds one for ``host:``."""
    kw.setdefault("timeout_s", 0.3)
    kw.setdefault("poll_interval_s", 0.2)
    backoff_max_s = kw.pop("backoff_max_s", 30.0)
    profile = kw.pop("profile", "banner-qm30vt2")
    link = TcpLink("127.0.0.1", port, connect_timeout_s=1.0)
    return ModbusPoller(
        f"s{device_id}",
        bus=Bus(f"s{device_id}", "tcp", [link]),
        device_id=device_id,
        profile=load_profile(profile),
        sink=sink,
        backoff=Backoff(min(kw["poll_interval_s"], 1.0), backoff_max_s),
        rng=random.Random(1),
        **kw,
    )


class Collector(list[Reading]):
    """A sink that remembers readings and wakes a waiter on the next one."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()

    def __call__(self, reading: Reading) -> None:
        self.append(reading)
        self.arrived.set()

    async def next(self, timeout_s: float) -> None:
        self.arrived.clear()
        await asyncio.wait_for(self.arrived.wait(), timeout_s)


@contextlib.asynccontextmanager
async def running(*pollers: ModbusPoller) -> AsyncIterator[None]:
    tasks = [
        asyncio.create_task(p.run(start_delay_s=0), name=f"poll[{p.sensor_id}]") for p in pollers
    ]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results


def assert_values(reading: Reading, expected: dict[str, float]) -> None:
    for feature, value in expected.items():
        assert reading.features[feature] == pytest.approx(value, abs=1e-9), (reading, feature)


async def test_reads_scaled_values_for_two_device_ids() -> None:
    started = time.monotonic()
    async with ModbusSimServer({1: Constant(A), 2: Constant(B), 3: Degrade(seed=1)}) as srv:
        r1 = await poller(srv.port, 1, print).poll_once()
        r2 = await poller(srv.port, 2, print).poll_once()
        r3 = await poller(srv.port, 3, print, channels=["z"]).poll_once()
    assert [r.channel for r in r1] == ["z", "x"]
    for r in (*r1, *r2, *r3):
        assert r.transport == "modbus" and r.quality == "good"
        assert r.timestamp.tzinfo is UTC
        # Durations (holds, hold-offs, trend rates) run on the monotonic clock, not the wall.
        assert r.mono_s is not None and started <= r.mono_s <= time.monotonic()
    for r in r1:
        assert r.sensor_id == "s1"
        assert_values(r, A)
    for r in r2:
        assert r.sensor_id == "s2"
        assert_values(r, B)
    (z,) = r3
    assert z.channel == "z"
    assert set(z.features) == {
        "velocity_rms_mm_s",
        "velocity_peak_mm_s",
        "accel_rms_g",
        "accel_peak_g",
        "hf_accel_rms_g",
        "kurtosis",
        "crest_factor",
        "temperature_c",
        "peak_frequency_hz",
    }
    assert 0.9 < z.features["velocity_rms_mm_s"] < 1.2  # degrade starts healthy
    assert z.features["peak_frequency_hz"] == 24.7


async def test_slow_device_answers_are_never_credited_elsewhere() -> None:
    """slow=2.0 with timeout 0.3, polled beside a fast device on the same endpoint."""
    devices = [SimDevice(1, Constant(A)), SimDevice(2, Constant(B), Fault("slow", delay_s=2.0))]
    fast_readings: list[Reading] = []
    slow_readings: list[Reading] = []
    async with ModbusSimServer(devices) as srv:
        fast = poller(srv.port, 1, fast_readings.append)
        slow = poller(srv.port, 2, slow_readings.append, backoff_max_s=0.5)
        async with running(fast, slow):
            await asyncio.sleep(2.6)  # past the first late answer (2.0 s)
    assert slow_readings == []  # every answer was late: none may be taken
    assert slow.status.errors_total >= 3
    assert "no answer" in (slow.status.last_error or "")
    assert len(fast_readings) >= 2 * 11
    for r in fast_readings:
        assert r.sensor_id == "s1"
        assert_values(r, A)


async def test_late_answer_on_the_same_connection_is_not_taken_for_the_next() -> None:
    """Below the poller (which drops the connection on a timeout): the link alone, with a
    late answer arriving while the next request on the same socket is pending."""

    class Clock:  # velocity = seconds since start at the time the request arrived
        def __init__(self, srv: ModbusSimServer) -> None:
            self.srv = srv

        def sample(self, t_s: float) -> dict[str, dict[str, float]]:
            return {"z": {"velocity_rms_mm_s": t_s}, "x": {}}

    srv = ModbusSimServer([SimDevice(2, Constant(A), Fault("slow", delay_s=0.4))])
    async with srv:
        srv.devices[2].scenario = Clock(srv)
        # A direct device's link keeps its connection after a timeout, so the late answer
        # arrives while the next request is pending.
        link = TcpLink("127.0.0.1", srv.port, connect_timeout_s=1.0)
        for _ in range(2):  # answer n arrives while request n+1 is pending: both refused
            if not link.connected:
                await link.connect()
            with pytest.raises(LinkTimeout):
                await link.read(2, 3, 5201, 1, 0.3)
        srv.set_fault(2, Fault())
        if not link.connected:
            await link.connect()
        asked = srv.elapsed()
        (raw,) = await link.read(2, 3, 5201, 1, 1.0)  # answer 2 may be in flight; ours follows
        link.close()
    assert raw / 1000 >= asked - 0.01, "got the value of an earlier request"


async def test_dead_device_does_not_slow_a_healthy_one() -> None:
    devices = [SimDevice(1, Constant(A)), SimDevice(3, Constant(B), Fault("dead"))]
    stamps: list[float] = []

    def sink(r: Reading) -> None:
        if r.channel == "z":
            stamps.append(time.monotonic())

    async with ModbusSimServer(devices) as srv:
        healthy = poller(srv.port, 1, sink, poll_interval_s=0.1, timeout_s=0.08)
        # the dead one with a long timeout: it holds its own task, never anyone else's
        dead = poller(srv.port, 3, print, poll_interval_s=1.0, timeout_s=0.9, backoff_max_s=2)
        async with running(healthy, dead):
            await asyncio.sleep(3.0)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # Bounds with room for a loaded machine: waiting on the dead one's 0.9 s timeouts would
    # show as gaps of 0.9 s and about 4 polls in 3 s, not a late tick of a few tens of ms.
    assert len(stamps) >= 20, len(stamps)  # 3.0 s / 0.1 s = 30 ticks
    assert max(gaps) < 0.6, max(gaps)
    assert healthy.status.errors_total == 0
    assert dead.status.errors_total >= 2 and dead.status.state in ("failing", "backoff")
    print(f"healthy: {len(stamps)} polls in 3.0 s, gap mean {sum(gaps) / len(gaps):.4f} s")


async def test_reconnects_by_itself_after_a_server_restart(caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    readings = Collector()
    srv = ModbusSimServer({1: Constant(A)})
    await srv.start()
    port = srv.port
    p = poller(port, 1, readings, poll_interval_s=0.1, timeout_s=0.08, backoff_max_s=0.4)
    async with running(p):
        await asyncio.sleep(0.35)
        assert readings
        await srv.close()
        await asyncio.sleep(0.8)
        assert p.status.state == "backoff"
        assert p.status.consecutive_failures >= 3
        readings.clear()
        async with ModbusSimServer({1: Constant(B)}, port=port):
            await readings.next(timeout_s=5)  # the back-off is capped at 0.4 s
    assert readings, "no reading after the restart"
    assert_values(readings[-1], B)
    assert p.status.state == "ok" and p.status.consecutive_failures == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOG]
    infos = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # quiet on repeats
    assert f"127.0.0.1:{port}" in warnings[0].getMessage()
    assert "device 1" in warnings[0].getMessage()
    assert len(infos) == 1


async def test_exception_response_is_counted_and_polling_goes_on(caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    readings = Collector()
    devices = [SimDevice(5, Constant(A), Fault("exception", code=4))]
    async with ModbusSimServer(devices) as srv:
        p = poller(srv.port, 5, readings, poll_interval_s=0.1, backoff_max_s=0.2)
        with pytest.raises(DeviceExceptionResponse) as info:
            await p.poll_once()
        assert (info.value.code, info.value.device_id, info.value.sensor_id) == (4, 5, "s5")
        async with running(p):
            await asyncio.sleep(0.8)
            st = p.status
            assert st.errors_total >= 4 and st.exception_responses == st.errors_total
            assert "exception 4" in (st.last_error or "")
            srv.set_fault(5, Fault())
            await readings.next(timeout_s=3)
    assert readings and p.status.state == "ok"
    messages = [r.getMessage() for r in caplog.records if r.name == LOG]
    assert sum("exception 4" in m for m in messages) == 1, messages
    assert sum("recovered" in m for m in messages) == 1


async def test_connection_refused_is_a_device_error() -> None:
    srv = ModbusSimServer({1: Constant(A)})
    await srv.start()
    port = srv.port
    await srv.close()
    p = poller(port, 1, print)
    with pytest.raises(DeviceConnectionError) as info:
        await p.poll_once()
    assert info.value.address == f"127.0.0.1:{port}"
    assert p.status.consecutive_failures == 1 and p.status.state == "failing"


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    b = Backoff(base_s=1.0, max_s=30.0, threshold=3)
    rng = random.Random(0)
    assert b.delay(0, rng) == b.delay(2, rng) == 0.0
    for failures, cap in [(3, 1.0), (4, 2.0), (6, 8.0), (10, 30.0), (10_000, 30.0)]:
        draws = [b.delay(failures, rng) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in draws)
        assert len(set(draws)) > 1  # jittered


def test_all_device_errors_share_one_base() -> None:
    for cls in (DeviceTimeout, DeviceConnectionError, DeviceProtocolError):
        assert issubclass(cls, DeviceError)
    err = DeviceTimeout("x", sensor_id="m1", address="h:502", device_id=4)
    assert (err.sensor_id, err.address, err.device_id) == ("m1", "h:502", 4)
    assert str(err) == "m1 (h:502 device 4): x"


async def test_a_host_that_does_not_resolve_says_so() -> None:
    p = ModbusPoller(
        "s1",
        bus=Bus("s1", "tcp", [TcpLink("no-such-host.invalid", 502, connect_timeout_s=2.0)]),
        device_id=1,
        profile=load_profile("banner-qm30vt2"),
        sink=print,
    )
    with pytest.raises(DeviceConnectionError, match=r"cannot resolve no-such-host\.invalid"):
        await p.poll_once()
    assert p.status.errors_by_kind == {"connection": 1}


async def test_intermittent_failures_are_counted_not_logged_per_blip(caplog) -> None:
    # A noisy slave: exception 4 for one poll now and then. Two lines per blip would bury
    # the log; one report, counts in the status, and a line again once it stays down.
    caplog.set_level(logging.INFO, logger=LOG)
    readings = Collector()
    async with ModbusSimServer([SimDevice(5, Constant(A))]) as srv:
        p = poller(srv.port, 5, readings, poll_interval_s=0.05, backoff_max_s=0.1)
        async with running(p):
            for _ in range(8):  # eight blips of about one poll each
                srv.set_fault(5, Fault("exception", code=4))
                await asyncio.sleep(0.05)
                srv.set_fault(5, Fault())
                await readings.next(timeout_s=3)
                await asyncio.sleep(0.1)
            blips = p.status.errors_total
            srv.set_fault(5, Fault("exception", code=4))  # now it stays down
            for _ in range(100):
                if p.status.state == "backoff":
                    break
                await asyncio.sleep(0.05)
    assert blips >= 6 and p.status.errors_by_kind["exception_4"] >= blips
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(warnings) == 2, warnings  # the first blip, then the lasting failure
    assert "brief episodes since the last report were counted" in warnings[1]
    assert len(recovered) == 1


async def test_intermittent_garbage_is_counted_not_logged_per_poll(caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    readings = Collector()
    async with ModbusSimServer([SimDevice(5, Constant(A))]) as srv:
        p = poller(srv.port, 5, readings, poll_interval_s=0.05)
        async with running(p):
            for _ in range(8):
                srv.set_fault(5, Fault("ffff"))
                await asyncio.sleep(0.05)
                srv.set_fault(5, Fault())
                await asyncio.sleep(0.15)
    assert p.status.bad_values["sentinel"] >= 6
    assert [r.quality for r in readings].count("bad") >= 6
    lines = [r.getMessage() for r in caplog.records if "implausible" in r.getMessage()]
    again = [r for r in caplog.records if "plausible again" in r.getMessage()]
    assert len(lines) == 1 and len(again) == 1, lines


@pytest.mark.parametrize("raw", [0x8000, 0x7FFF])
async def test_0x8000_in_an_unsigned_register_is_garbage_not_a_zone_d_reading(
    caplog, raw: int
) -> None:
    # 0x8000, the "no value" mark of 16-bit registers (the int16 minimum), in the QM30VT2's
    # unsigned mm/s register read as 32.768 mm/s: zone D on every ISO 10816 class, and
    # inside the 0-50 valid range. Kurtosis and crest factor (32.768) were analysed too.
    # 0x7FFF, the int16 maximum and the other common "over range / no value" mark, read
    # as 32.767 mm/s: the same zone D from garbage.
    caplog.set_level(logging.INFO, logger=LOG)
    garbage = {f: raw * 0.001 for f in ("velocity_rms_mm_s", "kurtosis", "crest_factor")}
    readings = Collector()
    async with ModbusSimServer([SimDevice(5, Constant({**A, **garbage}))]) as srv:
        p = poller(srv.port, 5, readings, poll_interval_s=0.05)
        async with running(p):
            while len(readings) < 6:
                await readings.next(timeout_s=3)
    for r in readings:
        assert r.quality == "bad"
        assert not set(garbage) & set(r.features), r.features  # never analysed
        assert {f"{f}:sentinel" for f in garbage} <= set(r.flags)
        assert r.features["accel_rms_g"] == pytest.approx(A["accel_rms_g"])  # the rest kept
    assert p.status.bad_values["sentinel"] >= 3
    lines = [r.getMessage() for r in caplog.records if "implausible" in r.getMessage()]
    assert len(lines) == 1, lines


class AmcChannel1:
    """An AVM 2000R sensor's channel ``ch1`` (and the shared temperature) at fixed values."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values

    def sample(self, t_s: float) -> dict[str, dict[str, float]]:
        ch1 = {k: v for k, v in self.values.items() if k != "temperature_c"}
        return {"ch1": ch1, "all": {"temperature_c": self.values["temperature_c"]}}


@pytest.mark.parametrize("raw", [0x8000, 0x7FFF])
async def test_0x8000_in_the_amc_acceleration_registers_is_garbage_not_3_3_g(
    caplog, raw: int
) -> None:
    # The AVM 2000R's acceleration registers are uint16 in 0.001 m/s2: raw 0x8000, the
    # 16-bit "no value" mark, read as 32.768 m/s2 = 3.34 g, inside the 0-100 g valid range
    # (0x7FFF, the int16 maximum's "over range" mark, as 32.767 m/s2: the same 3.34 g).
    caplog.set_level(logging.INFO, logger=LOG)
    scale = load_profile("amc-avm2000r").registers[1].scale  # g per raw unit
    garbage = {"accel_peak_g": raw * scale, "accel_rms_g": raw * scale}
    good = {"velocity_peak_mm_s": 4.0, "velocity_rms_mm_s": 2.0, "temperature_c": 35.0}
    readings = Collector()
    sim = SimDevice(5, AmcChannel1({**good, **garbage}))
    async with ModbusSimServer([sim], profile="amc-avm2000r") as srv:
        p = poller(srv.port, 5, readings, poll_interval_s=0.05, profile="amc-avm2000r")
        async with running(p):
            while len(readings) < 3:
                await readings.next(timeout_s=3)
    for r in readings:
        assert r.channel == "ch1" and r.quality == "bad", r
        assert not set(garbage) & set(r.features), r.features  # never analysed
        assert {f"{f}:sentinel" for f in garbage} <= set(r.flags), r.flags
        assert r.features["velocity_rms_mm_s"] == pytest.approx(2.0)  # the rest kept
    assert p.status.bad_values["sentinel"] >= 3
    lines = [r.getMessage() for r in caplog.records if "implausible" in r.getMessage()]
    assert len(lines) == 1, lines
