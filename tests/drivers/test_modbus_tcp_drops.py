"""A Modbus TCP device that silently drops some requests (never answers them) on a
connection it keeps: the link remembers the unanswered transaction ids only boundedly."""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest

from drivers.errors import DeviceError
from drivers.modbus import Bus, ModbusPoller, TcpLink
from drivers.modbus._link import LinkTimeout
from drivers.modbus._tcp import MAX_STALE_KEPT
from drivers.profiles import load_profile


async def _every_other_request_dropped(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    n = 0
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            head = await r.readexactly(7)
            body = await r.readexactly(struct.unpack(">H", head[4:6])[0] - 1)
            n += 1
            if n % 2 == 0:
                continue  # dropped: no answer, ever
            count = struct.unpack(">H", body[3:5])[0]
            pdu = bytes([3, 2 * count]) + b"\x00\x01" * count
            w.write(head[:4] + struct.pack(">HB", len(pdu) + 1, head[6]) + pdu)


async def test_unanswered_requests_on_a_kept_connection_are_remembered_boundedly() -> None:
    # Timeouts never come three in a row, so the connection is kept: every unanswered
    # transaction id was kept too (2000 after 4000 requests, up to all 65536: ~4 MB per
    # flaky device, growing for as long as the connection lives).
    srv = await asyncio.start_server(_every_other_request_dropped, "127.0.0.1", 0)
    link = TcpLink("127.0.0.1", srv.sockets[0].getsockname()[1], connect_timeout_s=1.0)
    kept = []
    try:
        for _ in range(4 * MAX_STALE_KEPT + 20):
            if not link.connected:  # three timeouts in a row on a loaded machine
                await link.connect()
            with contextlib.suppress(LinkTimeout):
                await link.read(1, 3, 0, 2, 0.03)
            kept.append(len(link._stale))
        assert max(kept) == MAX_STALE_KEPT, kept
    finally:
        link.close()
        srv.close()
        await srv.wait_closed()


async def _answers_with_another_transaction_id(
    r: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            head = await r.readexactly(7)
            body = await r.readexactly(struct.unpack(">H", head[4:6])[0] - 1)
            count = struct.unpack(">H", body[3:5])[0]
            pdu = bytes([3, 2 * count]) + b"\x00\x01" * count
            w.write(struct.pack(">HHHB", 0, 0, len(pdu) + 1, head[6]) + pdu)  # always id 0


async def test_a_device_that_does_not_echo_the_transaction_id_is_named_as_such() -> None:
    # Firmware that answers every request with transaction id 0 was reported as "no answer
    # within 0.2 s": the integrator checks cables and addresses of a device that answers.
    srv = await asyncio.start_server(_answers_with_another_transaction_id, "127.0.0.1", 0)
    link = TcpLink("127.0.0.1", srv.sockets[0].getsockname()[1], connect_timeout_s=1.0)
    bus = Bus("m1", "tcp", [link])
    p = ModbusPoller(
        "m1", bus=bus, device_id=1, profile=load_profile("banner-qm30vt2"), timeout_s=0.2,
        sink=lambda r: None,
    )  # fmt: skip
    try:
        for _ in range(3):
            with pytest.raises(DeviceError):
                await p.poll_once()
    finally:
        bus.close()
        srv.close()
        await srv.wait_closed()
    assert p.status.errors_by_kind == {"transaction": 3}
    assert "transaction id" in (p.last_error or ""), p.last_error
