"""Devices behind one endpoint judged together: alone, or silent with the whole endpoint."""

from __future__ import annotations

import logging
import time

import pytest

from drivers.errors import DeviceTimeout
from drivers.modbus import NETWORK, Peers
from drivers.modbus._bus import Bus
from drivers.modbus._status import PollLedger
from drivers.modbus._tcp import TcpLink
from drivers.reading import utc_now


def _peers(n: int, interval_s: float = 0.0) -> Peers:
    p = Peers("10.0.0.5:502", threshold=3)
    for i in range(n):
        p.members[f"s{i}"] = interval_s
    return p


def test_an_answer_sent_before_a_failure_does_not_make_it_alone() -> None:
    # At a cut, a request sent just before it fails after answers to requests sent just
    # before it: those answers say nothing about whether the device fails alone.
    p = _peers(5)
    alone: list[str] = []
    since = time.monotonic()
    p.answered("s1")
    assert p.failed("s0", 1, since, "timeout", lambda: alone.append("s0")) is None
    assert alone == [] and p.undecided("s0")
    p.answered("s2")  # an answer after its failure: it fails alone
    assert alone == ["s0"] and not p.undecided("s0")


def test_all_failing_is_one_outage_ended_by_the_first_answer() -> None:
    p = _peers(5)
    alone: list[str] = []
    now = time.monotonic()
    outage = None
    for failures in (1, 2, 3):
        for i in range(5):
            got = p.failed(f"s{i}", failures, now, "refused", lambda: alone.append("x"))
            outage = outage or got
    assert (
        outage is not None and p.outage is outage and outage.sensors == {f"s{i}" for i in range(5)}
    )
    assert alone == []
    p.answered("s3")
    assert p.outage is None and p.outages == 1 and alone == []


def test_a_device_beside_slower_polled_ones_is_no_outage_before_they_had_their_turn() -> None:
    p = _peers(4, interval_s=60.0)  # its peers answer once a minute
    p.members["fast"] = 1.5
    p.answered("s0")
    for failures in (1, 2, 3, 4):
        assert p.failed("fast", failures, time.monotonic(), "timeout", lambda: None) is None
    assert p.outage is None and p.undecided("fast")


def test_too_few_devices_are_each_judged_alone() -> None:
    p = _peers(2)
    alone: list[str] = []
    assert p.failed("s0", 1, time.monotonic(), "timeout", lambda: alone.append("s0")) is None
    assert alone == ["s0"]


def test_too_few_on_an_endpoint_are_judged_with_their_host_then_the_network() -> None:
    """Two devices behind one TCP port are judged by the port (their silence is its
    outage, their host answering elsewhere or not); a device alone on its port, by its
    host (with the host's other devices); one alone on its host, with the gateway's TCP
    network."""
    network = Peers(NETWORK)
    host = Peers("10.0.0.7", host="10.0.0.7", level="host")
    pair, lone = Peers("10.0.0.7:502", host="10.0.0.7"), Peers("10.0.0.7:503", host="10.0.0.7")
    single = Peers("10.0.0.8:502", host="10.0.0.8")
    for ep in (pair, lone):
        ep.host_group, ep.network = host, network
    single.network = network
    for ep, sid in ((pair, "a"), (pair, "b"), (lone, "l"), (single, "c")):
        for g in ep.groups:
            g.join(sid, 0.0)
    assert pair.judge is pair and lone.judge is host and single.judge is network
    for failures in (1, 2, 3):
        for sid in ("a", "b"):
            outage = pair.failed(sid, failures, time.monotonic(), "refused", lambda: None)
    assert outage is pair.outage and outage.sensors == {"a", "b"}
    host.answered("l")  # its host answers on another port: the port is still silent
    network.answered("c")  # the rest of the network answers
    assert pair.outage is outage


def test_an_endpoint_silent_again_and_again_is_logged_once_per_quiet_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its last answering device answers only now and then: the endpoint falls silent
    and answers again every few seconds. Before, two lines per silence (720 warnings an
    hour); now the first silence is logged, the next ones within LOG_QUIET_S counted."""
    caplog.set_level(logging.INFO, logger="edge_agent.drivers.modbus")
    p = _peers(3)
    for _ in range(5):
        now = time.monotonic()
        for failures in (1, 2, 3):
            for i in range(3):
                p.failed(f"s{i}", failures, now, "timeout", lambda: None)
        assert p.outage is not None
        p.answered("s2")
    assert p.outages == 5
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # one silence, one answer


def _ledgers(n: int) -> tuple[Peers, list[PollLedger]]:
    """n devices, each on its own connection to one endpoint (as a TCP sensor's poller)."""
    peers = Peers("127.0.0.1:502", threshold=3)
    ledgers = []
    for i in range(n):
        bus = Bus(f"s{i}", "tcp", [TcpLink("127.0.0.1", 502, connect_timeout_s=0.5)])
        bus.peers = peers
        peers.join(f"s{i}", 1.5)  # polled every second, 0.5 s timeout
        ledgers.append(PollLedger(f"s{i}", bus, i + 1, threshold=3))
    return peers, ledgers


def _timeout(ledger: PollLedger) -> DeviceTimeout:
    return DeviceTimeout(
        "connect timed out", sensor_id=ledger.sensor_id, address="127.0.0.1:502", device_id=1
    )


def test_a_device_failing_on_after_its_endpoints_outage_counts_its_own_failures_anew() -> None:
    """A host comes back after an outage: its first answer ends the endpoint's outage and
    the other devices reconnect in a burst, some of them timing out once. In the plant
    benchmark (666 devices of a restarted host) each such device's failures in the outage
    were counted as its own: its breaker open at once (state backoff), and 395 sensor
    faults were raised right after the host's own fault cleared (cleared again within a
    minute). Its failures from the outage's end on are its own: a breaker threshold of
    them opens its breaker, as for any device."""
    peers, (first, late, dead) = _ledgers(3)
    peers.last_answer = time.monotonic() - 10.0  # the host went silent 10 s ago
    for _ in range(3):
        for ledger in (first, late, dead):
            ledger.failed(_timeout(ledger), time.monotonic())
    assert peers.outage is not None and late.state == "backoff" and late.with_endpoint
    first.succeeded(0.01, utc_now())  # the host is back: the outage ends
    assert peers.outage is None
    late.failed(_timeout(late), time.monotonic())  # its reconnect timed out once
    assert late.state == "failing" and late.consecutive_failures == 1
    late.succeeded(0.01, utc_now())
    assert late.state == "ok"
    for _ in range(3):  # still dead after the outage: its own breaker, its own fault
        dead.failed(_timeout(dead), time.monotonic())
    first.succeeded(0.01, utc_now())  # the others answer after its failures
    assert dead.state == "backoff" and not dead.with_endpoint
