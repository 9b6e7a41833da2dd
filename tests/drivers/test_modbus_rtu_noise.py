"""A noisy RS-485 line (a broken transceiver, a babbling device): bytes every 2 ms.

Each failed read used to hold the line ~2 s flushing a line that never falls quiet, so one
bad device stalled every device on the line. Now a flush gives up after the longest frame
plus ``late_flush_s``: the read fails fast, the line is reported noisy (status, /metrics,
one log line per episode with the port), and once the noise stops the devices read again.
No reading taken during the noise may carry anything but its own device's values.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
import time
import tty
from collections.abc import Iterator
from dataclasses import asdict

import pytest

from agent.health_metrics import render_metrics
from drivers.modbus import Bus, RtuLink
from drivers.modbus._frames import FrameError, rtu_frame
from drivers.modbus._link import LinkTimeout
from tests.drivers.rtu_script import ScriptedLine, read_answer

pytestmark = [pytest.mark.network]

TURNAROUND_S = 0.005
NOISE_EVERY_S = 0.002


def value_of(device_id: int) -> int:
    return 100 * device_id + 7


class NoisyLine(ScriptedLine):
    """The device end of a line: devices 1..N answer reads with ``value_of(id)``, and
    ``noise(seconds)`` writes bytes every 2 ms for that long (bounded), some of them
    shaped like answer starts (id, function 3, byte count) so only CRC tells them apart."""

    def __init__(self, path: str, ids: tuple[int, ...]) -> None:
        super().__init__(path)
        self.ids = ids
        self.noise_bytes = 0
        self._rng = random.Random(7)

    def on_request(self, request: bytes) -> None:
        if request[0] in self.ids:
            self.later(TURNAROUND_S, read_answer(request, value_of(request[0])))

    async def noise(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and self.fd >= 0:
            chunk = bytes(self._rng.randrange(256) for _ in range(self._rng.randrange(1, 9)))
            if self._rng.random() < 0.3:  # looks like an answer's start; its CRC is wrong
                chunk = bytes((self._rng.choice(self.ids), 3, 2)) + chunk
            self.write(chunk)
            self.noise_bytes += len(chunk)
            await asyncio.sleep(NOISE_EVERY_S)


async def read_loop(
    bus: Bus, device_id: int, until: float, timeout_s: float, log: list[tuple[float, object]]
) -> None:
    """Read until monotonic ``until``; log (duration, values or error) for every read."""
    while time.monotonic() < until:
        t0 = time.monotonic()
        try:
            got: object = await bus.read(device_id, 3, 0, 2, timeout_s)
        except (FrameError, LinkTimeout) as exc:
            got = exc
        log.append((time.monotonic() - t0, got))
        await asyncio.sleep(0.01)


@pytest.fixture
def line(serial_pair: tuple[str, str]) -> Iterator[tuple[str, str]]:
    yield serial_pair


NOISE_S = 2.5  # longer than the old 2 s flush, so the old stall shows
TIMEOUT_S = 0.2
IDS = (1, 2, 3)


async def test_a_noisy_line_fails_reads_fast_and_recovers_when_quiet(
    line: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    agent_tty, device_tty = line
    device = NoisyLine(device_tty, IDS)
    link = RtuLink(agent_tty, baudrate=115200, late_flush_s=0.05)
    bus = Bus("line-1", "rtu", [link])
    logs: dict[int, list[tuple[float, object]]] = {i: [] for i in IDS}
    waits: list[float] = []
    seen_noisy: list[bool] = []

    async def watch(until: float) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(0.25)
            st = bus.status()
            waits.append(st.wait_s_max)
            seen_noisy.append(st.noisy)

    try:
        await link.connect()
        with caplog.at_level(logging.INFO, logger="edge_agent.drivers.modbus"):
            until = time.monotonic() + NOISE_S
            noise = asyncio.create_task(device.noise(NOISE_S))
            await asyncio.gather(
                *(read_loop(bus, i, until, TIMEOUT_S, logs[i]) for i in IDS), watch(until)
            )
            await noise
            during = bus.status()
            # The noise has stopped: every device reads its own values again.
            deadline = time.monotonic() + 10
            for i in IDS:
                while True:
                    assert time.monotonic() < deadline, "no good read after the noise stopped"
                    try:
                        assert await bus.read(i, 3, 0, 2, TIMEOUT_S) == [value_of(i)] * 2
                        break
                    except (FrameError, LinkTimeout):
                        await asyncio.sleep(0.05)
        after = bus.status()
    finally:
        bus.close()
        device.close()
    assert device.noise_bytes > 500
    reads = [entry for entries in logs.values() for entry in entries]
    # Before: each failed read held the line ~2 s (durations 2.0-6.0 s, waits 4.0 s).
    # The bound: quiet 0.05 + timeout 0.2 + flush 0.07 s per read, 3 devices in turn.
    assert max(d for d, _ in reads) < 1.5, sorted(d for d, _ in reads)[-5:]
    assert max([*waits, during.wait_s_max]) < 1.0, waits
    assert len(reads) >= 3 * 4, len(reads)  # each device was tried again and again
    # Noise fails reads; it never passes for an answer.
    for i, entries in logs.items():
        for _, got in entries:
            assert not isinstance(got, list) or got == [value_of(i)] * 2, (i, got)
    noise_errors = [g for _, g in reads if isinstance(g, FrameError) and g.reason == "noise"]
    assert noise_errors, [g for _, g in reads]
    assert any(seen_noisy) and during.noisy_reads >= len(noise_errors)
    assert not after.noisy
    warnings = [r for r in caplog.records if "is noisy" in r.getMessage()]
    assert len(warnings) == 1, caplog.text  # once per episode, not once per read
    assert agent_tty in warnings[0].getMessage() and warnings[0].levelno == logging.WARNING
    assert any("quiet again" in r.getMessage() for r in caplog.records), caplog.text
    metrics = render_metrics({"buses": [asdict(during)]}).decode()
    assert f'edge_bus_noisy_reads_total{{bus="line-1"}} {float(during.noisy_reads)}' in metrics
    assert 'edge_bus_noisy{bus="line-1"}' in metrics


async def test_a_late_answer_is_still_flushed_on_a_quiet_line(line: tuple[str, str]) -> None:
    """A slow device's answer after our timeout is flushed (the line then falls quiet):
    no noise is reported and the next read gets its own answer."""
    agent_tty, device_tty = line
    device = NoisyLine(device_tty, IDS)
    link = RtuLink(agent_tty, baudrate=115200, late_flush_s=0.05)
    bus = Bus("line-1", "rtu", [link])
    try:
        with pytest.raises(LinkTimeout):
            await bus.read(1, 3, 0, 2, 0.0)  # the answer (5 ms later) comes after the timeout
        assert await bus.read(2, 3, 0, 2, 1.0) == [value_of(2)] * 2
    finally:
        bus.close()
        device.close()
    assert link.flushed_bytes + link.late_answers > 0
    assert link.noisy_reads == 0 and not bus.status().noisy


async def test_a_long_answer_straddling_the_timeout_is_not_noise(line: tuple[str, str]) -> None:
    """A slow device (9600 baud, a gap of 0.2 characters between characters, well within
    the 1.5 the spec allows) whose 255-byte answer starts just before our timeout: the read
    fails as a short answer and the line is not reported noisy (the flush used to give up
    after 256 bare character times and call the rest of the answer noise)."""
    agent_tty, device_tty = line
    fd = os.open(device_tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    link = RtuLink(agent_tty, baudrate=9600, late_flush_s=0.05)
    count, timeout_s = 125, 0.3
    paced_s = 1.2 * link.char_s  # per character, its gap included
    asked = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_request() -> None:
        os.read(fd, 256)
        asked.set()

    async def device() -> None:
        await asyncio.wait_for(asked.wait(), 10)
        await asyncio.sleep(timeout_s - 0.03)
        values = b"".join(struct.pack(">H", 7) for _ in range(count))
        frame = rtu_frame(1, bytes([3, 2 * count]) + values)
        start = time.monotonic()
        for i in range(0, len(frame), 8):  # the line's pace, 8 characters at a time
            os.write(fd, frame[i : i + 8])
            await asyncio.sleep(max(0.0, start + (i + 8) * paced_s - time.monotonic()))

    loop.add_reader(fd, on_request)
    try:
        await link.connect()
        task = asyncio.create_task(device())
        with pytest.raises(FrameError) as failed:
            await link.read(1, 3, 0, count, timeout_s)
        await task
    finally:
        loop.remove_reader(fd)
        link.close()
        os.close(fd)
    assert failed.value.reason == "short"
    assert link.noisy_reads == 0 and not link.noisy
