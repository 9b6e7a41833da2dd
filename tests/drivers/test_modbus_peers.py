"""Devices behind one endpoint judged together: alone, or silent with the whole endpoint."""

from __future__ import annotations

import logging
import time

import pytest

from drivers.modbus import NETWORK, Peers


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
    """Two devices behind one port of a host are judged as the host (its silence is the
    host's outage); one alone on its host is judged with the gateway's TCP network."""
    network = Peers(NETWORK)
    host = Peers("10.0.0.7", host="10.0.0.7", level="host")
    pair, single = Peers("10.0.0.7:502", host="10.0.0.7"), Peers("10.0.0.8:502", host="10.0.0.8")
    pair.host_group, pair.network, single.network = host, network, network
    for ep, sid in ((pair, "a"), (pair, "b"), (single, "c")):
        for g in ep.groups:
            g.join(sid, 0.0)
    assert pair.judge is host and single.judge is network
    for failures in (1, 2, 3):
        for sid in ("a", "b"):
            outage = host.failed(sid, failures, time.monotonic(), "refused", lambda: None)
    assert outage is host.outage and outage.sensors == {"a", "b"}
    network.answered("c")  # the rest of the network answers: the host is still silent
    assert host.outage is outage


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
