"""``edge-sim modbus``: a Modbus TCP server playing several Banner QM30VT2 sensors.

One TCP endpoint (like a DXM gateway) serves the register map of a profile for several
device ids, each driven by its own scenario and fault mode:

    edge-sim modbus --device 1:degrade --device 2:healthy --device 3:dead --device 4:slow=2.0

Request handling is our own, on asyncio streams: one request in, one answer out, with
that request's transaction and device ids, written in request order per connection. Fault
modes: ``dead`` (never answers), ``slow=S`` (answers S seconds late), ``exception[=C]``
(answers Modbus exception C, default 4). Tokens combine: ``1:degrade,slow=0.5``.
SIGUSR1 repairs every degrading device (its bearing is replaced: it runs healthy from then
on), as a technician would in the demo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from drivers.profiles import ALL_CHANNELS, Profile, load_profile
from simulators._modbus_protocol import (
    GATEWAY_TARGET_FAILED,
    MBAP_SIZE,
    FrameError,
    Request,
    answer_read,
    exception_pdu,
    frame,
    parse_header,
)
from simulators.scenario import SCENARIOS, Degrade, Healthy, Sample, Scenario, make_scenario

log = logging.getLogger("edge_sim.modbus")

MAX_PIPELINE = 32  # requests in flight per connection before we stop reading (backpressure)
FaultKind = Literal["none", "dead", "slow", "exception"]


@dataclass(frozen=True, slots=True)
class Fault:
    """How a simulated device misbehaves.

    Attributes:
        kind: ``none``, ``dead`` (no answer), ``slow`` (late answer), ``exception``.
        delay_s: answer delay for ``slow``.
        code: Modbus exception code for ``exception``.
    """

    kind: FaultKind = "none"
    delay_s: float = 0.0
    code: int = 4


@dataclass(slots=True)
class SimDevice:
    """One simulated sensor behind the endpoint."""

    device_id: int
    scenario: Scenario
    fault: Fault = field(default_factory=Fault)


def parse_device(spec: str, *, seed: int = 0, life_s: float = 60.0) -> SimDevice:
    """Parse ``ID:TOKEN[,TOKEN...]``: a scenario name and/or a fault mode.

    Examples: ``1:degrade``, ``3:dead``, ``4:slow=2.0``, ``5:healthy,exception=6``.

    Raises:
        ValueError: a malformed spec, with the reason.
    """
    ident, sep, rest = spec.partition(":")
    if not sep or not ident.strip().isdigit() or not 0 <= int(ident) <= 247:
        raise ValueError(f"device {spec!r}: expected ID:SCENARIO or ID:FAULT, ID 0..247")
    device_id = int(ident)
    scenario_name, fault = "healthy", Fault()
    for token in filter(None, (t.strip() for t in rest.split(","))):
        name, _, value = token.partition("=")
        try:
            if name in SCENARIOS and not value:
                scenario_name = name
            elif name == "dead" and not value:
                fault = Fault("dead")
            elif name == "slow":
                fault = Fault("slow", delay_s=float(value or 1.0))
            elif name == "exception":
                fault = Fault("exception", code=int(value or 4))
            else:
                raise ValueError("unknown token")
        except ValueError:
            raise ValueError(
                f"device {spec!r}: bad token {token!r}; use one of {', '.join(SCENARIOS)}, "
                "dead, slow=SECONDS, exception[=CODE]"
            ) from None
    if fault.kind == "slow" and fault.delay_s < 0:
        raise ValueError(f"device {spec!r}: slow delay must be >= 0")
    scenario = make_scenario(scenario_name, seed=seed + device_id, life_s=life_s)
    return SimDevice(device_id, scenario, fault)


def register_image(profile: Profile, sample: Sample) -> dict[int, int]:
    """The register map of ``profile`` holding the scaled values of ``sample``.

    Rows without a value (ignored rows, features the scenario does not give) read 0.
    """
    lo, hi = profile.span()
    words = dict.fromkeys(range(lo, hi), 0)
    for reg in profile.registers:
        values = sample.get(reg.channel)
        if values is None and reg.channel == ALL_CHANNELS:
            values = sample.get("z")  # a scenario without shared values: take the main axis
        if values is None or reg.feature not in values:
            continue
        for offset, word in enumerate(reg.raw(values[reg.feature])):
            words[reg.address + offset] = word
    return words


class ModbusSimServer:
    """An in-process simulator; ``async with ModbusSimServer(...) as srv: srv.port``.

    Args:
        devices: the simulated devices (SimDevice), or a mapping device id -> scenario.
        profile: the register profile to serve (name or loaded Profile).
        host: address to bind; loopback by default.
        port: TCP port; 0 picks a free one (see ``port`` after start).
    """

    def __init__(
        self,
        devices: Iterable[SimDevice] | Mapping[int, Scenario],
        *,
        profile: str | Profile = "banner-qm30vt2",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if isinstance(devices, Mapping):
            devices = [SimDevice(i, s) for i, s in devices.items()]
        self.devices: dict[int, SimDevice] = {d.device_id: d for d in devices}
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        self.host = host
        self.port = port
        self.requests: Counter[int] = Counter()  # device id -> requests received
        self.answers: Counter[int] = Counter()  # device id -> answers written
        self._t0 = time.monotonic()
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    def elapsed(self) -> float:
        """Seconds since the server started: the scenarios' time axis."""
        return time.monotonic() - self._t0

    def repair(self) -> list[int]:
        """Replace every degrading device's bearing: it runs healthy from now on.

        Returns:
            The ids of the devices repaired.
        """
        fixed = [d for d in self.devices.values() if isinstance(d.scenario, Degrade)]
        for d in fixed:
            d.scenario = Healthy(seed=d.scenario.seed)
        return [d.device_id for d in fixed]

    def set_fault(self, device_id: int, fault: Fault) -> None:
        """Change a device's fault mode while running."""
        self.devices[device_id].fault = fault

    async def start(self) -> None:
        """Bind and start listening."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._t0 = time.monotonic()
        log.info("modbus simulator listening on %s:%d", self.host, self.port)

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        # Closing a connection's transport ends its handler (the read sees EOF); cancel only
        # what has not ended after a grace period (cancelled stream handlers log noise).
        for writer in self._handlers.values():
            writer.transport.abort()
        if self._handlers:
            _, stuck = await asyncio.wait(list(self._handlers), timeout=1.0)
            for task in stuck:
                task.cancel()
            for task in stuck:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ModbusSimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _answer(self, req: Request) -> bytes | None:
        self.requests[req.device_id] += 1
        device = self.devices.get(req.device_id)
        if device is None:
            # What a gateway says when nothing sits behind that id.
            pdu = exception_pdu(req.function_code, GATEWAY_TARGET_FAILED)
            return frame(req.transaction_id, req.device_id, pdu)
        fault = device.fault
        if fault.kind == "dead":
            return None
        if fault.kind == "exception":
            pdu = exception_pdu(req.function_code, fault.code)
        else:
            # Values as of the moment the request arrived, even when the answer is late.
            image = register_image(self.profile, device.scenario.sample(self.elapsed()))

            def read(address: int, count: int) -> list[int] | None:
                if address not in image or address + count - 1 not in image:
                    return None
                return [image[a] for a in range(address, address + count)]

            pdu = answer_read(req.pdu, self.profile.function_code, read)
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay_s)
        return frame(req.transaction_id, req.device_id, pdu)

    async def _write_answers(
        self, order: asyncio.Queue[asyncio.Task[bytes | None]], writer: asyncio.StreamWriter
    ) -> None:
        # Answers leave in request order; a dead device's request yields nothing.
        while True:
            task = await order.get()
            answer = await task
            if answer is not None:
                writer.write(answer)
                await writer.drain()
                self.answers[answer[6]] += 1

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._handlers[me] = writer
        order: asyncio.Queue[asyncio.Task[bytes | None]] = asyncio.Queue(MAX_PIPELINE)
        pending: set[asyncio.Task[bytes | None]] = set()
        answers = asyncio.create_task(self._write_answers(order, writer))
        try:
            while not answers.done():
                header = await reader.readexactly(MBAP_SIZE)
                tid, unit, length = parse_header(header)
                pdu = await reader.readexactly(length)
                task = asyncio.create_task(self._answer(Request(tid, unit, pdu)))
                pending.add(task)
                task.add_done_callback(pending.discard)
                await order.put(task)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        except FrameError as exc:
            log.warning("closing connection: %s", exc)
        finally:
            for task in (answers, *pending):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await answers
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            if me is not None:
                self._handlers.pop(me, None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``edge-sim modbus`` options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--device",
        action="append",
        metavar="ID:SPEC",
        help="a device: ID:SCENARIO[,FAULT] with SCENARIO healthy|degrade and FAULT dead|"
        "slow=SECONDS|exception[=CODE]; repeatable (default 1:healthy)",
    )
    parser.add_argument("--profile", default="banner-qm30vt2", help="register profile to serve")
    parser.add_argument("--life-s", type=float, default=60.0, help="degrade: seconds to 8 mm/s")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (per device: seed + id)")


async def serve(args: argparse.Namespace) -> None:
    """Run the simulator until cancelled, SIGTERM or SIGINT.

    Prints ``READY {"host": ..., "port": ...}`` on stdout once listening.
    """
    specs = args.device or ["1:healthy"]
    devices = [parse_device(s, seed=args.seed, life_s=args.life_s) for s in specs]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with ModbusSimServer(
            devices, profile=args.profile, host=args.host, port=args.port
        ) as srv:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGUSR1, srv.repair)
            print("READY " + json.dumps({"host": srv.host, "port": srv.port}), flush=True)
            await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m simulators.modbus``) until the lead wires edge-sim."""
    parser = argparse.ArgumentParser(prog="edge-sim modbus", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    for spec in args.device or []:
        try:
            parse_device(spec)  # report a bad spec as a usage error, before binding
        except ValueError as exc:
            parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
