"""A whole endpoint (or host) falling silent is one fault episode and a few log lines, not
one alert pair and two lines per sensor; a brief silence raises nothing but is counted; a single
dead device among answering ones still raises its own sensor_fault.

Real parts: two in-process Modbus simulators on loopback (one stopped and restarted on its
port, as a restarted gateway or a flapping switch port), the real Agent, a real store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.health import render_metrics
from agent.runtime import Agent
from simulators.modbus import Fault, GatewayLine, ModbusSimServer, SimDevice
from simulators.scenario import Constant

pytestmark = [pytest.mark.network, pytest.mark.slow]

BUSY = 12  # devices behind the endpoint that falls silent
SILENT_FAULT_S = 2.5  # sensor_faults.endpoint_silent_s


@dataclass(frozen=True)
class _Dev:
    """One sensor: device id `unit` behind host:port, polled every `every` s."""

    id: str
    port: int
    unit: int = 1
    host: str = "127.0.0.1"
    every: float = 0.2


def _write_config(
    tmp_path: Path,
    devices: Iterable[_Dev],
    *,
    gateway: str = "gw-storm",
    silent_s: float = 1.0,
    backoff_max_s: float = 0.5,
) -> Path:
    """The agent's file: one asset m, these sensors, sensor_faults.endpoint_silent_s
    `silent_s`, a store, a health port and a control socket."""
    sensors = [
        f"  - {{id: {d.id}, asset: m, modbus: {{host: {d.host}, port: {d.port},"
        f" device_id: {d.unit}, timeout_s: 0.1, backoff_max_s: {backoff_max_s}}},"
        f" poll_interval_s: {d.every}}}"
        for d in devices
    ]
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "\n".join(
            [
                f"gateway: {{id: {gateway}}}",
                "assets:",
                "  - {id: m, tier: 1, machine: {standard: iso10816-3, group: 2,"
                " foundation: rigid, rpm: 1480}}",
                "sensors:",
                *sensors,
                f"sensor_faults: {{endpoint_silent_s: {silent_s}}}",
                f'store: {{path: "{tmp_path / "o.db"}"}}',
                "health: {port: 0}",
                f'control: {{socket: "{tmp_path / "c.sock"}"}}',
            ]
        )
    )
    return cfg


def _busy(port: int) -> list[_Dev]:
    """b1..b<BUSY> behind one endpoint."""
    return [_Dev(f"b{i}", port, i) for i in range(1, BUSY + 1)]


def _own_ips(servers: list[ModbusSimServer]) -> list[_Dev]:
    """d<i>: device 1 of servers[i] (one device per endpoint, as TCP sensors with their own
    IP)."""
    return [_Dev(f"d{i}", s.port, host=s.host) for i, s in enumerate(servers)]


def _devs(port: int, ids: Iterable[int] = (1, 2, 3), host: str = "127.0.0.1") -> list[_Dev]:
    """d<i>: device i behind host:port."""
    return [_Dev(f"d{i}", port, i, host) for i in ids]


async def _serve_hosts(units: list[int]) -> list[ModbusSimServer]:
    """A simulator on each of 127.0.0.1, .2, ... with units[i] device ids (1, 2, ...)."""
    servers = []
    for i, n in enumerate(units):
        devices = [SimDevice(d, Constant({})) for d in range(1, n + 1)]
        servers.append(ModbusSimServer(devices, host=f"127.0.0.{i + 1}"))
        await servers[-1].__aenter__()
    return servers


async def _restart(servers: list[ModbusSimServer], i: int) -> None:
    s = servers[i]
    servers[i] = ModbusSimServer(list(s.devices.values()), host=s.host, port=s.port)
    await servers[i].__aenter__()


async def _cut(servers: list[ModbusSimServer], which: Iterable[int]) -> None:
    """Stop these servers at once (a switch drops them together): one after the other,
    each waiting for its connections to close, a device cut first failed alone while the
    others still answered, and raised its own fault, on a loaded machine."""
    await asyncio.gather(*(servers[i].__aexit__(None, None, None) for i in which))


async def _back(servers: list[ModbusSimServer], which: Iterable[int]) -> None:
    """Restart these servers at once (the switch back): one after the other, the first
    back answered while the rest were still silent."""
    await asyncio.gather(*(_restart(servers, i) for i in which))


def _on_hosts(servers: list[ModbusSimServer]) -> list[_Dev]:
    """h<host>u<unit>: every device of every server."""
    return [
        _Dev(f"h{h + 1}u{u}", s.port, u, s.host) for h, s in enumerate(servers) for u in s.devices
    ]


@contextlib.asynccontextmanager
async def _running(cfg: Path, records: list[dict[str, Any]]) -> AsyncIterator[Agent]:
    """The agent of `cfg` running (its records into `records`), stopped on the way out."""
    agent = Agent(load_config(cfg), config_path=cfg, on_records=records.extend)
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)


async def _all_ok(agent: Agent, n: int) -> None:
    """Until the agent's n pollers have each answered."""
    pollers = agent.sensors.pollers
    await _until(lambda: len(pollers) == n and all(p.state == "ok" for p in pollers.values()), 10)


async def _until(cond: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def _faults(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["sensor"]["id"], r["state"]) for r in records if r["kind"] == "sensor_fault"]


async def test_a_host_silent_is_one_fault_and_a_blip_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    busy_devices = [SimDevice(i, Constant({})) for i in range(1, BUSY + 1)]
    # o3 is dead among answering o1, o2: its own fault, as ever.
    other_devices = [SimDevice(1, Constant({})), SimDevice(2, Constant({}))]
    other_devices.append(SimDevice(3, Constant({}), Fault("dead")))
    records: list[dict[str, Any]] = []
    caplog.set_level(logging.INFO, logger="edge_agent.drivers.modbus")
    srv = ModbusSimServer(busy_devices)
    other = ModbusSimServer(other_devices)
    await srv.__aenter__()
    await other.__aenter__()
    port, other_port = srv.port, other.port
    others = [_Dev(f"o{i}", other_port, i) for i in (1, 2, 3)]
    cfg = _write_config(tmp_path, [*_busy(port), *others], silent_s=SILENT_FAULT_S)
    try:
        async with _running(cfg, records) as agent:
            await _until(lambda: ("o3", "raised") in _faults(records), 10)
            snap = await agent.snapshot()
            assert all(s["state"] == "ok" for s in snap["sensors"] if s["id"] != "o3")
            caplog.clear()
            records.clear()

            # A blip: every device of one endpoint fails (breakers open: 6 polls at 0.2 s),
            # for less than endpoint_silent_s. Nothing is raised; the log says it once.
            await srv.__aexit__(None, None, None)
            await asyncio.sleep(1.5)
            srv = ModbusSimServer(busy_devices, port=port)
            await srv.__aenter__()
            await asyncio.sleep(2.0)  # every breaker (0.5 s at most) closed again
            blip_lines = [r.getMessage() for r in caplog.records]
            assert _faults(records) == [], _faults(records)
            assert len(blip_lines) <= 3, blip_lines  # before: 2 per device (24)
            assert any("silent" in line for line in blip_lines), blip_lines
            metrics = render_metrics(await agent.snapshot()).decode()
            assert f'edge_endpoint_outages_total{{endpoint="127.0.0.1:{port}"}} 1.0' in metrics

            # The host's outage (both its endpoints): one fault for the host, raised after
            # endpoint_silent_s and cleared when it answers; none per device or endpoint.
            await _cut([srv, other], (0, 1))
            await _until(lambda: len(_faults(records)) >= 1, 3 * SILENT_FAULT_S)
            srv = ModbusSimServer(busy_devices, port=port)
            other = ModbusSimServer(other_devices, port=other_port)
            await srv.__aenter__()
            await other.__aenter__()
            await _until(lambda: len(_faults(records)) >= 2, 5)
            await asyncio.sleep(1.5)  # no per-device fault follows
    finally:
        await srv.__aexit__(None, None, None)
        await other.__aexit__(None, None, None)
    assert _faults(records) == [("host:127.0.0.1", "raised"), ("host:127.0.0.1", "cleared")]
    raised = next(r for r in records if r["kind"] == "sensor_fault")
    assert raised["asset"]["id"] == "gw-storm"
    assert raised["evidence"]["devices_silent"] == BUSY + 2  # o3 failed alone before
    assert raised["evidence"]["endpoints_silent"] == sorted(
        [f"127.0.0.1:{port}", f"127.0.0.1:{other_port}"]
    )


async def test_devices_dead_beside_a_slowly_polled_one_raise_their_faults(
    tmp_path: Path,
) -> None:
    """Two devices polled every 0.2 s die beside one polled every 60 s (which answers):
    no outage can be declared before the slow one is asked again, and nothing told whether
    they failed alone. Before, their faults were held for up to that 60 s (10 minutes with
    a 600 s device): no fault, no log line. Now they raise after endpoint_silent_s."""
    devices = [SimDevice(i, Constant({})) for i in (1, 2, 3)]
    records: list[dict[str, Any]] = []
    async with ModbusSimServer(devices) as srv:
        fast = [_Dev(f"fast{i}", srv.port, i) for i in (1, 2)]
        cfg = _write_config(tmp_path, [*fast, _Dev("slow", srv.port, 3, every=60)])
        async with _running(cfg, records) as agent:
            await _all_ok(agent, 3)
            srv.set_fault(1, Fault("dead"))
            srv.set_fault(2, Fault("dead"))
            raised = {("fast1", "raised"), ("fast2", "raised")}
            await _until(lambda: raised <= set(_faults(records)), 8)
    first = next(r for r in records if r["kind"] == "sensor_fault")
    assert first["evidence"]["endpoint_unconfirmed_for_s"] >= 1.0
    assert ("host:127.0.0.1", "raised") not in _faults(records)


async def test_a_host_fault_is_cleared_when_a_reload_moves_its_devices_away(
    tmp_path: Path,
) -> None:
    """The gateway at 127.0.0.1 is dead (its host fault raised) and is replaced: a reload
    moves its 3 devices to 127.0.0.2, where they answer. Before, nothing observed the old
    host any more and host:127.0.0.1 stayed raised until a restart; now it is cleared,
    saying why."""
    devices = [SimDevice(i, Constant({})) for i in (1, 2, 3)]
    records: list[dict[str, Any]] = []
    old = ModbusSimServer(devices)
    await old.__aenter__()
    cfg = _write_config(tmp_path, _devs(old.port), gateway="gw-moved")
    async with (
        _running(cfg, records) as agent,
        ModbusSimServer(devices, host="127.0.0.2") as new,
    ):
        await _all_ok(agent, 3)  # each answered before the cut
        await old.__aexit__(None, None, None)
        await _until(lambda: ("host:127.0.0.1", "raised") in _faults(records), 8)
        _write_config(tmp_path, _devs(new.port, host="127.0.0.2"), gateway="gw-moved")
        assert (await agent.reloader.reload("test"))["changes"]
        await _until(lambda: ("host:127.0.0.1", "cleared") in _faults(records), 5)
    cleared = [r for r in records if r["state"] == "cleared"]
    assert "removed or moved by a reload" in cleared[0]["no_estimate_reason"]


async def test_a_reload_restarting_a_device_keeps_its_endpoint_grouped(tmp_path: Path) -> None:
    """A reload changes d1's poll interval (its poller restarts). The new poller joined its
    endpoint before the old one stopped, and the old one's leave removed it: 2 devices
    left, too few to group, so the endpoint's next outage raised d1, d2 and d3's own
    faults again. Now the endpoint keeps its 3 devices: one fault for the host."""
    devices = [SimDevice(i, Constant({})) for i in (1, 2, 3)]
    records: list[dict[str, Any]] = []
    srv = ModbusSimServer(devices)
    await srv.__aenter__()
    cfg = _write_config(tmp_path, _devs(srv.port), gateway="gw-reload")
    try:
        async with _running(cfg, records) as agent:
            await asyncio.sleep(0.5)
            slower = _devs(srv.port)
            slower[0] = _Dev("d1", srv.port, 1, every=0.3)
            _write_config(tmp_path, slower, gateway="gw-reload")
            assert (await agent.reloader.reload("test"))["changes"]
            await _all_ok(agent, 3)
            await srv.__aexit__(None, None, None)
            await _until(lambda: ("host:127.0.0.1", "raised") in _faults(records), 8)
            await asyncio.sleep(0.5)
    finally:
        await srv.__aexit__(None, None, None)
    assert _faults(records) == [("host:127.0.0.1", "raised")]


async def test_a_restart_during_a_host_outage_keeps_its_fault_raised(tmp_path: Path) -> None:
    """The host's only endpoint is silent (host fault raised) when the agent restarts.
    Before, the start closed the fault ('closed at start') and raised it again as a new
    episode after endpoint_silent_s (a new CMMS work order per restart); now it stays
    raised, as a device's own fault does, and clears when the endpoint answers."""
    devices = [SimDevice(i, Constant({})) for i in (1, 2, 3)]
    records: list[dict[str, Any]] = []
    srv = ModbusSimServer(devices)
    await srv.__aenter__()
    port = srv.port
    cfg = _write_config(tmp_path, _devs(port), gateway="gw-restart")
    async with _running(cfg, records) as agent:
        await _all_ok(agent, 3)
        await srv.__aexit__(None, None, None)
        await _until(lambda: ("host:127.0.0.1", "raised") in _faults(records), 8)
    records.clear()
    try:
        async with _running(cfg, records):
            await asyncio.sleep(3.0)  # still silent: past endpoint_silent_s again
            assert _faults(records) == []
            srv = ModbusSimServer(devices, port=port)
            await srv.__aenter__()
            await _until(lambda: ("host:127.0.0.1", "cleared") in _faults(records), 8)
            await asyncio.sleep(0.5)
    finally:
        await srv.__aexit__(None, None, None)
    assert _faults(records) == [("host:127.0.0.1", "cleared")]


async def test_a_device_still_dead_after_a_reload_shrank_its_silent_endpoint_raises(
    tmp_path: Path,
) -> None:
    """All 3 devices silent (host fault raised); a reload removes d3, leaving 2 (too few
    to group); the gateway comes back with d2 still dead. Before, d2 kept the mark of the
    ended outage (its failures no longer judged with the endpoint's): its fault was held
    for good while the host fault cleared. Now d2 raises its own fault."""
    devices = [SimDevice(i, Constant({})) for i in (1, 2, 3)]
    records: list[dict[str, Any]] = []
    srv = ModbusSimServer(devices)
    await srv.__aenter__()
    port = srv.port
    cfg = _write_config(tmp_path, _devs(port), gateway="gw-shrunk")
    try:
        async with _running(cfg, records) as agent:
            await _all_ok(agent, 3)
            await srv.__aexit__(None, None, None)
            await _until(lambda: ("host:127.0.0.1", "raised") in _faults(records), 8)
            _write_config(tmp_path, _devs(port, (1, 2)), gateway="gw-shrunk")
            assert (await agent.reloader.reload("test"))["changes"]
            devices[1].fault = Fault("dead")
            srv = ModbusSimServer(devices, port=port)
            await srv.__aenter__()
            await _until(lambda: ("d2", "raised") in _faults(records), 6)
    finally:
        await srv.__aexit__(None, None, None)
    assert ("d1", "raised") not in _faults(records)


async def test_after_an_outage_one_answer_wakes_the_others_backoff(tmp_path: Path) -> None:
    """Breakers grown to backoff_max_s during an outage: once one device answers again,
    the others poll again within about a poll interval, not each after its own back-off."""
    devices = [SimDevice(i, Constant({})) for i in range(1, BUSY + 1)]
    srv = ModbusSimServer(devices)
    await srv.__aenter__()
    port = srv.port
    cfg = _write_config(tmp_path, _busy(port), silent_s=60, backoff_max_s=3)
    try:
        async with _running(cfg, []) as agent:
            pollers = agent.sensors.pollers
            await _all_ok(agent, BUSY)
            await srv.__aexit__(None, None, None)
            await asyncio.sleep(3.0)  # 0.2 s base doubled: back-offs of 1.6 to 3 s now
            srv = ModbusSimServer(devices, port=port)
            await srv.__aenter__()
            await _until(lambda: any(p.state == "ok" for p in pollers.values()), 8)
            first = time.monotonic()
            await _until(lambda: all(p.state == "ok" for p in pollers.values()), 8)
            spread = time.monotonic() - first
    finally:
        await srv.__aexit__(None, None, None)
    # Before: the last resumed up to a whole back-off (1.6 to 3 s) after the first.
    assert spread < 1.0, spread


async def test_a_network_outage_of_own_ip_devices_is_one_fault_and_a_blip_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Devices each on their own endpoint, all silent at once (a switch or VLAN down): one
    fault for the gateway's TCP network, none per device; a blip raises nothing; a device
    dead among answering ones, or still silent once the others answer, raises its own."""
    n = 10
    servers = await _serve_hosts([1] * (n + 1))  # the last one's device dead
    servers[n].set_fault(1, Fault("dead"))
    ports = [s.port for s in servers]
    cfg = _write_config(tmp_path, _own_ips(servers), silent_s=SILENT_FAULT_S)
    records: list[dict[str, Any]] = []
    caplog.set_level(logging.INFO, logger="edge_agent.drivers.modbus")
    dead = f"d{n}"
    try:
        async with _running(cfg, records) as agent:
            await _until(lambda: (dead, "raised") in _faults(records), 10)
            records.clear()
            caplog.clear()

            # A blip of every endpoint: nothing raised, a couple of lines.
            await _cut(servers, range(n))
            await asyncio.sleep(1.5)
            await _back(servers, range(n))
            await asyncio.sleep(2.0)
            blip_lines = [r.getMessage() for r in caplog.records]
            assert _faults(records) == [], _faults(records)  # before: 10 raised + 10 cleared
            assert len(blip_lines) <= 3, blip_lines
            metrics = render_metrics(await agent.snapshot()).decode()
            assert 'edge_endpoint_outages_total{endpoint="modbus-tcp"} 1.0' in metrics

            # An outage: one fault for the network, cleared when it is back; d0 does not
            # come back and is then judged alone.
            await _cut(servers, range(n))
            await _until(lambda: len(_faults(records)) >= 1, 3 * SILENT_FAULT_S)
            await _back(servers, range(1, n))
            await _until(lambda: len(_faults(records)) >= 3, 6)
            await asyncio.sleep(1.0)
    finally:
        for s in servers:
            await s.__aexit__(None, None, None)
    faults = _faults(records)  # d0's own fault may come in the tick the network clears
    assert faults[0] == ("network:modbus-tcp", "raised"), faults
    assert sorted(faults[1:]) == [("d0", "raised"), ("network:modbus-tcp", "cleared")], faults
    raised = next(r for r in records if r["kind"] == "sensor_fault")
    assert raised["asset"]["id"] == "gw-storm"
    assert raised["evidence"]["devices_silent"] == n  # the dead one failed alone before
    # What to go and look at: the silent hosts and endpoints, not just "modbus-tcp".
    hosts = sorted(f"127.0.0.{i + 1}" for i in range(n))
    assert raised["evidence"]["hosts_silent"] == hosts
    assert raised["evidence"]["hosts_silent_count"] == n
    assert raised["evidence"]["endpoints_silent"] == sorted(
        f"127.0.0.{i + 1}:{ports[i]}" for i in range(n)
    )
    assert f"{n} sensors on {n} hosts" in raised["no_estimate_reason"]


async def test_a_network_outage_is_not_held_back_by_a_slowly_polled_device(
    tmp_path: Path,
) -> None:
    """Six own-IP devices polled every 0.2 s and one every 60 s, all silent (the switch
    down). The outage waited for the slow device to be asked (60 s here, 10 minutes with a
    600 s device), so each fast device raised its own fault meanwhile; a device not due
    yet cannot be silent: now the devices due decide, and it is one network fault."""
    n = 7
    servers = await _serve_hosts([1] * n)
    devices = _own_ips(servers)
    devices[-1] = _Dev(devices[-1].id, servers[-1].port, host=servers[-1].host, every=60)
    records: list[dict[str, Any]] = []
    try:
        async with _running(_write_config(tmp_path, devices), records) as agent:
            await _all_ok(agent, n)
            await _cut(servers, range(n))
            await _until(lambda: len(_faults(records)) >= 1, 8)
            await asyncio.sleep(1.5)  # no device's own fault follows
    finally:
        for s in servers:
            await s.__aexit__(None, None, None)
    assert _faults(records) == [("network:modbus-tcp", "raised")], _faults(records)


async def test_a_switch_down_silencing_3_hosts_of_9_is_one_fault_per_host(
    tmp_path: Path,
) -> None:
    """9 hosts with 2 device ids each (too few on one endpoint to judge together); a switch
    drops 3 of them. The network still answers, so each of their 6 devices was judged
    alone: 6 device faults. Now a host's devices are judged together: one fault per host."""
    servers = await _serve_hosts([2] * 9)
    records: list[dict[str, Any]] = []
    silent = [f"host:127.0.0.{i}" for i in (1, 2, 3)]
    try:
        async with _running(_write_config(tmp_path, _on_hosts(servers)), records) as agent:
            await _all_ok(agent, 18)
            await _cut(servers, range(3))
            await _until(lambda: len(_faults(records)) >= 3, 8)
            await asyncio.sleep(1.0)  # no device's own fault follows
            await _back(servers, range(3))
            await _until(lambda: len(_faults(records)) >= 6, 8)
            metrics = render_metrics(await agent.snapshot()).decode()
    finally:
        for s in servers:
            await s.__aexit__(None, None, None)
    faults = _faults(records)
    assert sorted(faults[:3]) == [(h, "raised") for h in silent], faults
    assert sorted(faults[3:]) == [(h, "cleared") for h in silent], faults
    raised = next(r for r in records if r["kind"] == "sensor_fault")
    assert raised["evidence"]["devices_silent"] == 2
    # /metrics counts the silent hosts' outages (each its port's: two device ids behind one
    # port are judged by it), and lists no answering host's group.
    assert f'edge_endpoint_outages_total{{endpoint="127.0.0.1:{servers[0].port}"}} 1.0' in metrics
    assert 'endpoint="127.0.0.9"' not in metrics


async def test_a_network_outage_closes_the_host_faults_and_leaves_the_still_silent_one(
    tmp_path: Path,
) -> None:
    """Hosts .1-.3 with one device each, .4 and .5 with three: host .4 falls silent (its
    fault raised), then the whole network. Both the network's fault and the hosts' were
    raised for one outage; now the network's supersedes them (host .4's closed, .5's never
    raised), and when the network comes back but .4, .4's fault is raised again."""
    servers = await _serve_hosts([1, 1, 1, 3, 3])
    records: list[dict[str, Any]] = []
    net, host4 = "network:modbus-tcp", "host:127.0.0.4"
    try:
        async with _running(_write_config(tmp_path, _on_hosts(servers)), records) as agent:
            await _all_ok(agent, 9)
            await servers[3].__aexit__(None, None, None)
            await _until(lambda: (host4, "raised") in _faults(records), 8)
            await _cut(servers, (0, 1, 2, 4))
            await _until(lambda: (host4, "cleared") in _faults(records), 8)
            await asyncio.sleep(1.0)  # no other host's fault follows
            await _back(servers, (0, 1, 2, 4))
            await _until(lambda: len(_faults(records)) >= 5, 8)
            await asyncio.sleep(1.0)
    finally:
        for s in servers:
            await s.__aexit__(None, None, None)
    assert _faults(records) == [
        (host4, "raised"),
        (net, "raised"),
        (host4, "cleared"),
        (net, "cleared"),
        (host4, "raised"),
    ], _faults(records)
    superseded = next(r for r in records if r["state"] == "cleared")
    assert superseded["evidence"]["superseded_by"] == net
    network = next(r for r in records if r["sensor"]["id"] == net)
    assert network["evidence"]["hosts_silent"] == [f"127.0.0.{i}" for i in range(1, 6)]


async def test_a_flapping_network_beside_a_dead_host_is_a_bounded_number_of_records(
    tmp_path: Path,
) -> None:
    """Host .4 is dead (its fault raised); the rest of the network drops every ~2.5 s
    and comes back (a flapping uplink switch). Each drop superseded host .4's fault and
    each return raised it again: two records per cycle for as long as it flapped (the
    network's own fault, flapping, stayed raised). Now host .4, raised again while the
    network answers (its fault held raised), stays raised through the next drops, so the
    records stop after the first cycles."""
    servers = await _serve_hosts([1, 1, 1, 3])
    records: list[dict[str, Any]] = []
    net, host4 = "network:modbus-tcp", "host:127.0.0.4"
    try:
        async with _running(_write_config(tmp_path, _on_hosts(servers)), records) as agent:
            await _all_ok(agent, 6)
            await servers[3].__aexit__(None, None, None)
            await _until(lambda: (host4, "raised") in _faults(records), 8)
            for cycle in range(3):
                await _cut(servers, (0, 1, 2))
                # Down past endpoint_silent_s for two of the watcher's rounds (1 s apart):
                # the network's fault is decided on every drop. A fixed 1.5 s from the
                # last device's failure left about 0.5 s, which a loaded machine's watcher
                # round could miss (the drop then raised nothing).
                await _until(lambda: _network_silent_s(agent) >= 1.0 + 2 * 1.0, 15)
                await _back(servers, (0, 1, 2))
                await _until(lambda: all(p.state == "ok" for p in _up(agent)), 8)
                if cycle == 0:  # the network's fault cleared, host .4's raised again
                    await _until(lambda: (net, "cleared") in _faults(records), 8)
                    await _until(lambda: _faults(records).count((host4, "raised")) == 2, 8)
                else:
                    await asyncio.sleep(2.0)  # two watcher rounds: nothing new on the return
    finally:
        for s in servers:
            await s.__aexit__(None, None, None)
    # Superseded at the first drop, raised again when the network's fault first cleared,
    # superseded at the next drop (the network's fault raised again, now flapping), raised
    # again at the next return (the network answers: host .4's silence is its own), and
    # kept raised through the drops after it. Before: 2 more per cycle (7 here, growing
    # while the switch flaps).
    host_records = [f for f in _faults(records) if f[0] == host4]
    expected = [(host4, "raised"), (host4, "cleared")] * 2 + [(host4, "raised")]
    assert host_records == expected, _faults(records)
    assert _faults(records)[:3] == [(host4, "raised"), (net, "raised"), (host4, "cleared")]


def _network_silent_s(agent: Agent) -> float:
    """How long the agent has found the whole TCP network silent (its outage now; 0 when
    none goes on)."""
    net = next(p for p in agent.sensors.peers.values() if p.level == "network")
    return 0.0 if net.outage is None else net.outage.lasted_s()


def _up(agent: Agent) -> list[Any]:
    """The pollers of the devices not on host .4."""
    return [p for sid, p in agent.sensors.pollers.items() if not sid.startswith("h4")]


async def test_a_restart_during_a_network_outage_raises_nothing_new(tmp_path: Path) -> None:
    """Host .4 silent first (its fault raised), then the whole network (the network's fault
    supersedes .4's). The agent restarts while all is still silent: the network's fault
    stays raised, nothing is raised again (no host's, no device's) and when the network
    is back, only its clear."""
    servers = await _serve_hosts([1, 1, 1, 3])
    records: list[dict[str, Any]] = []
    net, host4 = "network:modbus-tcp", "host:127.0.0.4"
    cfg = _write_config(tmp_path, _on_hosts(servers), gateway="gw-net-restart")
    try:
        async with _running(cfg, records) as agent:
            await _all_ok(agent, 6)
            await servers[3].__aexit__(None, None, None)
            await _until(lambda: (host4, "raised") in _faults(records), 8)
            await _cut(servers, (0, 1, 2))
            await _until(lambda: (host4, "cleared") in _faults(records), 8)
        assert _faults(records) == [(host4, "raised"), (net, "raised"), (host4, "cleared")]
        records.clear()
        async with _running(cfg, records) as agent:
            await asyncio.sleep(3.0)  # still silent: past endpoint_silent_s again
            assert _faults(records) == [], _faults(records)
            await _back(servers, range(4))
            await _until(lambda: (net, "cleared") in _faults(records), 8)
            # Every device answering, then two watcher rounds: host .4 (its devices in
            # their back-off at the network's return) raised and cleared nothing meanwhile.
            await _all_ok(agent, 6)
            await asyncio.sleep(2.0)
    finally:
        for s in servers:
            await s.__aexit__(None, None, None)
    assert _faults(records) == [(net, "cleared")], _faults(records)


async def test_a_gateway_whose_serial_side_died_says_so(tmp_path: Path) -> None:
    """A TCP-to-RTU gateway at 127.0.0.5 whose serial line dies: it still answers, with
    exception 11 (gateway target device failed to respond) for each of its 4 devices. One
    fault for the gateway's host is right (one place to go), but it said 'no device behind
    127.0.0.5:port answers', as for a host off the network, so a planner went to check the
    switch and the cable to the gateway. Now it says the gateway answers and its serial
    side is silent (evidence gateway_answers)."""
    # Dead from the start: a good answer in flight on the line when it died would tell
    # one device from the others (failing alone) on a loaded machine.
    devices = [SimDevice(i, Constant({}), Fault("dead")) for i in (1, 2, 3, 4)]
    records: list[dict[str, Any]] = []
    gateway = GatewayLine(timeout_s=0.02)  # then it answers exception 11
    async with ModbusSimServer(devices, host="127.0.0.5", gateway=gateway) as srv:
        cfg = _write_config(tmp_path, _devs(srv.port, (1, 2, 3, 4), host="127.0.0.5"))
        async with _running(cfg, records):
            await _until(lambda: len(_faults(records)) >= 1, 8)
            await asyncio.sleep(1.0)  # no device's own fault follows
    assert _faults(records) == [("host:127.0.0.5", "raised")], _faults(records)
    raised = records[0]
    assert raised["evidence"]["gateway_answers"] is True
    assert raised["evidence"]["endpoints_silent"] == [f"127.0.0.5:{srv.port}"]
    why = raised["no_estimate_reason"]
    assert f"gateway at 127.0.0.5:{srv.port} answers" in why and "serial line" in why, why


async def test_a_refused_port_beside_a_late_device_is_two_device_faults(
    tmp_path: Path,
) -> None:
    """Host 127.0.0.6: d1's port refuses (nothing listens), d2 answers in 0.5 s with a
    timeout of 0.1 s. Both failing, they were judged together as the host: one
    'no device behind ... answers' fault, sending a planner to a host that is on the
    network (it refuses, and it answers late). Now the late answers show the host there:
    each device raises its own fault, the host none."""
    refused = ModbusSimServer([SimDevice(1, Constant({}))], host="127.0.0.6")
    await refused.__aenter__()
    await refused.__aexit__(None, None, None)  # its port now refuses
    slow = [SimDevice(1, Constant({}), Fault("slow", delay_s=0.5))]
    records: list[dict[str, Any]] = []
    async with ModbusSimServer(slow, host="127.0.0.6") as srv:
        devices = [_Dev("d1", refused.port, host="127.0.0.6"), _Dev("d2", srv.port, host=srv.host)]
        async with _running(_write_config(tmp_path, devices), records) as agent:
            raised = {("d1", "raised"), ("d2", "raised")}
            await _until(lambda: raised <= set(_faults(records)), 10)
            await asyncio.sleep(1.5)  # past endpoint_silent_s: no host fault follows
            snap = await agent.snapshot()
    assert sorted(_faults(records)) == sorted(raised), _faults(records)
    assert all(s["state"] != "ok" for s in snap["sensors"])


@contextlib.contextmanager
def _black_hole(host: str, port: int) -> Iterator[None]:
    """host:port's connects time out from now, as a filtered (black-holed) port: it
    listens with a backlog of 0 and its one place is taken, so the kernel drops further
    SYNs (net.ipv4.tcp_abort_on_overflow 0, the default) and sends no reset."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(0)
        filler.connect((host, port))
        yield


async def test_a_refused_port_beside_a_filtered_one_is_two_device_faults(
    tmp_path: Path,
) -> None:
    """Host 127.0.0.7 answers on two ports, a device behind each; then d1's port refuses
    (its server stopped: the host answers with a reset) and d2's is filtered (its connects
    time out). Both failing, they were judged together as the host: one 'no device behind
    ... answers' fault, sending a planner to the switch and the cable of a host that is on
    the network. Now the refusal shows the host there: each port's device raises its own
    fault (its last error: refused, timed out), the host none."""
    servers = [ModbusSimServer([SimDevice(1, Constant({}))], host="127.0.0.7") for _ in "ab"]
    for s in servers:
        await s.__aenter__()
    refused, filtered = (s.port for s in servers)
    devices = [_Dev("d1", refused, host="127.0.0.7"), _Dev("d2", filtered, host="127.0.0.7")]
    # The host looks silent until d2's connects have timed out twice (1 s each, after a
    # refusal or two before the port is black-holed): endpoint_silent_s outlasts that.
    silent_s = 2 * SILENT_FAULT_S
    cfg = _write_config(tmp_path, devices, silent_s=silent_s)
    records: list[dict[str, Any]] = []
    async with _running(cfg, records) as agent:
        await _all_ok(agent, 2)
        await _cut(servers, (0, 1))
        with _black_hole("127.0.0.7", filtered):
            raised = {("d1", "raised"), ("d2", "raised")}
            await _until(lambda: raised <= set(_faults(records)), 15)
            await asyncio.sleep(silent_s)  # no host fault follows
    assert sorted(_faults(records)) == sorted(raised), _faults(records)
    errors = {r["sensor"]["id"]: r["evidence"]["last_error"] for r in records}
    assert "Connect call failed" in errors["d1"], errors
    assert "timed out" in errors["d2"], errors


async def test_a_silent_port_of_two_devices_on_an_answering_host_is_one_fault(
    tmp_path: Path,
) -> None:
    """Host 127.0.0.1: d1 and d2 behind one port (too few to judge as an endpoint), o1
    behind another. d1 and d2's port falls silent (its server stopped) while o1 answers:
    the host answers, so they were each judged alone, two device faults for one silent
    port. Now a TCP port's two devices are judged together: one fault naming the port,
    cleared when it answers again, and no device's own."""
    servers = [
        ModbusSimServer([SimDevice(i, Constant({})) for i in (1, 2)]),
        ModbusSimServer([SimDevice(1, Constant({}))]),
    ]
    for s in servers:
        await s.__aenter__()
    port = servers[0].port
    devices = [*_devs(port, (1, 2)), _Dev("o1", servers[1].port)]
    records: list[dict[str, Any]] = []
    cfg = _write_config(tmp_path, devices, silent_s=SILENT_FAULT_S)
    try:
        async with _running(cfg, records) as agent:
            await _all_ok(agent, 3)
            await _cut(servers, (0,))
            await _until(lambda: len(_faults(records)) >= 1, 3 * SILENT_FAULT_S)
            await asyncio.sleep(1.5)  # no device's own fault follows
            await _back(servers, (0,))
            await _until(lambda: len(_faults(records)) >= 2, 8)
            await asyncio.sleep(1.0)
    finally:
        for s in servers:
            await s.__aexit__(None, None, None)
    host = "host:127.0.0.1"
    assert _faults(records) == [(host, "raised"), (host, "cleared")], _faults(records)
    raised = records[0]
    assert raised["evidence"]["endpoints_silent"] == [f"127.0.0.1:{port}"]
    assert raised["evidence"]["devices_silent"] == 2
    assert raised["evidence"]["sensor_ids"] == ["d1", "d2"]


async def test_a_host_silent_while_a_flapping_network_answers_is_raised_at_once(
    tmp_path: Path,
) -> None:
    """The network (hosts .1-.3, a device each) drops twice and comes back: its fault is
    raised again within 10 minutes of its clear, so it flaps and stays raised for 2 minutes
    after its return. Then host .4 falls silent while the network answers. Its fault waited
    for the network's to clear (2 minutes late, and never while the switch kept flapping):
    the network covered it though the network answered. Now host .4 is raised after
    endpoint_silent_s, as any host: the network answering, its silence is its own."""
    servers = await _serve_hosts([1, 1, 1, 3])
    records: list[dict[str, Any]] = []
    net, host4 = "network:modbus-tcp", "host:127.0.0.4"
    try:
        async with _running(_write_config(tmp_path, _on_hosts(servers)), records) as agent:
            await _all_ok(agent, 6)
            for cycle in range(2):
                await _cut(servers, (0, 1, 2, 3))
                # Past endpoint_silent_s for two of the watcher's rounds (1 s apart).
                await _until(lambda: _network_silent_s(agent) >= 1.0 + 2 * 1.0, 15)
                await _back(servers, (0, 1, 2, 3))
                await _all_ok(agent, 6)
                if cycle == 0:  # cleared, so the next drop's raise makes it flap
                    await _until(lambda: (net, "cleared") in _faults(records), 8)
            await asyncio.sleep(2.0)  # the network answers: its flapping fault held raised
            assert _faults(records) == [(net, "raised"), (net, "cleared"), (net, "raised")]
            await servers[3].__aexit__(None, None, None)
            await _until(lambda: (host4, "raised") in _faults(records), 8)
    finally:
        for s in servers:
            await s.__aexit__(None, None, None)
    assert _faults(records)[3:] == [(host4, "raised")], _faults(records)


async def test_a_host_raised_before_its_refusal_showed_it_up_clears(tmp_path: Path) -> None:
    """Host 127.0.0.11 dead from the agent's start: d1's port refuses, d2's is filtered.
    With a short endpoint_silent_s the host's fault is raised before d2's second timed-out
    connect shows the refusal to be the host answering; then each device raises its own
    fault. The host's fault stayed raised for ever beside them (no device had answered
    since the start, so its clear waited for one): two causes for one, the wrong one never
    cleared. Now the host showing life clears it, as it would once a device answered."""
    servers = [ModbusSimServer([SimDevice(1, Constant({}))], host="127.0.0.11") for _ in "ab"]
    for s in servers:
        await s.__aenter__()
    refused, filtered = (s.port for s in servers)
    await _cut(servers, (0, 1))
    devices = [_Dev("d1", refused, host="127.0.0.11"), _Dev("d2", filtered, host="127.0.0.11")]
    # Raised at the watcher's first round with an outage (d1 refuses 3 times in 0.4 s;
    # d2's connects take 1 s each to time out).
    cfg = _write_config(tmp_path, devices, silent_s=0.0)
    records: list[dict[str, Any]] = []
    host = "host:127.0.0.11"
    with _black_hole("127.0.0.11", filtered):
        async with _running(cfg, records):
            raised = {("d1", "raised"), ("d2", "raised")}
            await _until(lambda: raised <= set(_faults(records)), 15)
            await asyncio.sleep(2.0)  # two watcher rounds after the devices' faults
    faults = _faults(records)
    assert raised <= set(faults), faults
    # Raised or not (a loaded machine may tell the two apart first), it is not left open.
    assert faults.count((host, "raised")) == faults.count((host, "cleared")), faults


async def test_a_switch_flap_of_hosts_found_silent_one_by_one_is_the_networks_fault(
    tmp_path: Path,
) -> None:
    """Hosts .1-.4, 3 devices each, host .4's polled every 1.6 s: the switch drops them
    all, 3 times. The fast-polled hosts are found silent seconds before host .4 (the network
    only once all are): each host's fault was raised, then closed as superseded by the
    network's, 2 records per host per flap (400 for 200 hosts); and once the network's
    fault flapped (held raised between drops), kept raised beside it. Now a host silent
    while no device anywhere answers waits for the network: only the network's fault."""
    servers = await _serve_hosts([3, 3, 3, 3])
    devices = [
        _Dev(f"h{h + 1}u{u}", s.port, u, s.host, every=1.6 if h == 3 else 0.2)
        for h, s in enumerate(servers)
        for u in s.devices
    ]
    silent_s = 2.0
    records: list[dict[str, Any]] = []
    net = "network:modbus-tcp"
    cfg = _write_config(tmp_path, devices, gateway="gw-switch-flap", silent_s=silent_s)
    try:
        async with _running(cfg, records) as agent:
            await _all_ok(agent, 12)
            for cycle in range(3):
                await _cut(servers, range(4))
                # Host .4 found silent (3 polls, 5 s), then endpoint_silent_s and 2 rounds.
                await asyncio.sleep(5.0 + silent_s + 2.0)
                if cycle < 2:
                    assert _faults(records).count((net, "raised")) == cycle + 1, _faults(records)
                await _back(servers, range(4))
                await _all_ok(agent, 12)
                if cycle == 0:  # cleared, so the next drop's raise makes it flap
                    await _until(lambda: (net, "cleared") in _faults(records), 8)
            await asyncio.sleep(2.0)
    finally:
        for s in servers:
            await s.__aexit__(None, None, None)
    assert _faults(records) == [(net, "raised"), (net, "cleared"), (net, "raised")], _faults(
        records
    )


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The Modbus lines about silences and returns (endpoint, host or network)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "edge_agent.drivers.modbus"
        and r.levelno >= logging.INFO
        and (" silent" in r.getMessage() or "answers again" in r.getMessage())
    ]


async def test_a_switch_flap_is_one_line_down_and_one_back_not_two_per_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Hosts .1-.6, 3 devices each: the switch drops them all twice, and the second time
    host .6 stays down. Each host's endpoint logged its own 'silent' and 'answers again'
    line (200 hosts: 400 lines at a flap, the network's cause lost among them); now the
    network's outage is one line on its raise (with the hosts' and devices' counts) and
    one on its return, and a host still silent after the network answers again has its
    own line."""
    caplog.set_level(logging.INFO, logger="edge_agent")
    servers = await _serve_hosts([3] * 6)
    records: list[dict[str, Any]] = []
    net = "network:modbus-tcp"
    cfg = _write_config(tmp_path, _on_hosts(servers), gateway="gw-flap-logs", silent_s=1.0)
    try:
        async with _running(cfg, records) as agent:
            await _all_ok(agent, 18)
            caplog.clear()
            await _cut(servers, range(6))
            await _until(lambda: (net, "raised") in _faults(records), 10)
            await _back(servers, range(6))
            await _all_ok(agent, 18)
            await _until(lambda: len(_outage_lines(caplog)) >= 2, 5)
            first = _outage_lines(caplog)
            await asyncio.sleep(1.0)
            caplog.clear()
            await _cut(servers, range(6))
            await asyncio.sleep(3.0)
            await _back(servers, range(5))  # host .6 stays down
            # Its own fault, raised once the network answers and it does not.
            await _until(lambda: ("host:127.0.0.6", "raised") in _faults(records), 10)
            await asyncio.sleep(1.0)
            second = _outage_lines(caplog)
    finally:
        for s in servers:
            await s.__aexit__(None, None, None)
    assert len(first) == 2, first
    down, back = first
    assert "network silent: 6 hosts / 18 of 18 devices" in down, down
    assert "network answers again" in back and "6 hosts / 18 devices" in back, back
    still = [m for m in second if "127.0.0.6" in m and "silent (still" in m]
    assert len(still) == 1, second
    assert len(second) <= 3, second  # the return (and the network's raise), host .6's own
