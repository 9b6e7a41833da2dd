"""``edge-sim modbus``: a Modbus server playing several sensors (TCP, gateway or RTU).

One TCP endpoint serves the register map of a profile for several device ids, each driven
by its own scenario and fault mode:

    edge-sim modbus --device 1:degrade --device 2:healthy --device 3:dead --device 4:slow=2.0

Request handling is our own, on asyncio streams: one request in, one answer out, with
that request's transaction and device ids, written in request order per connection. Fault
modes: ``dead`` (never answers), ``slow=S`` (answers S seconds late), ``exception[=C]``
(answers Modbus exception C, default 4), and garbage: ``ffff`` (every register 0xFFFF),
``zero`` (every register 0), ``nan`` (every value NaN), ``short`` (answer cut short),
``garbled`` (corrupted answer: wrong byte count on TCP, bad CRC on RTU), ``wrong_id``
(answers as another device). Tokens combine: ``1:degrade,slow=0.5``.

``--gateway`` makes the endpoint behave as a TCP-to-RTU gateway (Banner DXM, Moxa MGate):
one request at a time over every connection, each holding the line for its serial transfer
time at ``--line-baud``; a silent device holds it for ``--gateway-timeout`` and then gets
exception 11. ``--rtu PATH`` serves Modbus RTU on a serial port or pseudo-terminal
instead (simulators/modbus_rtu.py). ``--endpoints N`` serves the same devices on N ports.
SIGUSR1 repairs every degrading device (its bearing is replaced: it runs healthy from then
on), as a technician would in the demo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from drivers.profiles import ALL_CHANNELS, Profile, load_profile
from simulators._modbus_protocol import (
    GATEWAY_TARGET_FAILED,
    ILLEGAL_FUNCTION,
    MBAP_SIZE,
    FrameError,
    Request,
    answer_read,
    exception_pdu,
    frame,
    parse_header,
)
from simulators.scenario import (
    SCENARIOS,
    Constant,
    Degrade,
    Healthy,
    Sample,
    Scenario,
    make_scenario,
)

log = logging.getLogger("edge_sim.modbus")

MAX_PIPELINE = 32  # requests in flight per connection before we stop reading (backpressure)
FaultKind = Literal[
    "none", "dead", "slow", "exception", "ffff", "zero", "nan", "short", "garbled", "wrong_id"
]
GARBAGE: tuple[FaultKind, ...] = ("ffff", "zero", "nan", "short", "garbled", "wrong_id")


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
    # (noise tick, function code, nan?) -> register image: thousands of endpoints serving
    # one device would otherwise recompute the same sample for every request.
    _images: dict[tuple[int, int, int, bool], dict[int, int]] = field(default_factory=dict)

    def image(self, profile: Profile, t_s: float, function_code: int) -> dict[int, int]:
        """The register image at ``t_s`` (cached per scenario tick when it has one)."""
        nan = self.fault.kind == "nan"
        tick = getattr(self.scenario, "resolution_s", 0.0)
        key = (id(self.scenario), math.floor(t_s / tick) if tick else -1, function_code, nan)
        image = self._images.get(key) if tick else None
        if image is None:
            sample = self.scenario.sample(t_s)
            if nan:
                sample = {ch: dict.fromkeys(v, math.nan) for ch, v in sample.items()}
            image = register_image(profile, sample, function_code)
            self._images.clear()
            self._images[key] = image
        return image


def parse_device(spec: str, *, seed: int = 0, life_s: float = 60.0) -> SimDevice:
    """Parse ``ID:TOKEN[,TOKEN...]``: a scenario name and/or a fault mode.

    Examples: ``1:degrade``, ``3:dead``, ``4:slow=2.0``, ``5:healthy,exception=6``;
    ``1:degrade,onset=0`` degrades from the start (``onset``: the part of the life it runs
    healthy first, 0.25 by default).

    Raises:
        ValueError: a malformed spec, with the reason.
    """
    ident, sep, rest = spec.partition(":")
    if not sep or not ident.strip().isdigit() or not 0 <= int(ident) <= 247:
        raise ValueError(f"device {spec!r}: expected ID:SCENARIO or ID:FAULT, ID 0..247")
    device_id = int(ident)
    scenario_name, fault = "healthy", Fault()
    velocity: float | None = None
    onset: float | None = None
    for token in filter(None, (t.strip() for t in rest.split(","))):
        name, _, value = token.partition("=")
        try:
            if name in SCENARIOS and not value:
                scenario_name = name
            elif name == "velocity":
                velocity = float(value)
            elif name == "onset":
                onset = float(value)
            elif name == "dead" and not value:
                fault = Fault("dead")
            elif name == "slow":
                fault = Fault("slow", delay_s=float(value or 1.0))
            elif name == "exception":
                fault = Fault("exception", code=int(value or 4))
            elif name in GARBAGE and not value:
                fault = Fault(name)  # type: ignore[arg-type]
            else:
                raise ValueError("unknown token")
        except ValueError:
            raise ValueError(
                f"device {spec!r}: bad token {token!r}; use one of {', '.join(SCENARIOS)}, "
                f"velocity=MM_S, onset=FRACTION, dead, slow=SECONDS, exception[=CODE], "
                f"{', '.join(GARBAGE)}"
            ) from None
    if fault.kind == "slow" and fault.delay_s < 0:
        raise ValueError(f"device {spec!r}: slow delay must be >= 0")
    scenario = make_scenario(scenario_name, seed=seed + device_id, life_s=life_s)
    if onset is not None:
        if not isinstance(scenario, Degrade) or not 0.0 <= onset < 1.0:
            raise ValueError(f"device {spec!r}: onset=FRACTION goes with degrade, 0 <= it < 1")
        scenario = replace(scenario, healthy_fraction=onset)
    if velocity is not None:  # fixed values: each device tells itself apart by this one
        scenario = Constant({"velocity_rms_mm_s": velocity})
    return SimDevice(device_id, scenario, fault)


def register_image(profile: Profile, sample: Sample, function_code: int = 3) -> dict[int, int]:
    """The register map of ``profile``'s table ``function_code`` holding ``sample``.

    Rows without a value (ignored rows, features the scenario does not give) read 0.
    """
    lo, hi = profile.span(function_code)
    words = dict.fromkeys(range(lo, hi), 0)
    for reg in profile.registers:
        if reg.function_code != function_code:
            continue
        values = sample.get(reg.channel)
        if values is None and reg.channel == ALL_CHANNELS:
            values = sample.get("z")  # a scenario without shared values: take the main axis
        if values is None or reg.feature not in values:
            continue
        for offset, word in enumerate(reg.raw(values[reg.feature])):
            words[reg.address + offset] = word
    return words


@dataclass(frozen=True, slots=True)
class Response:
    """What a device does with one request: the answer PDU (None: silence), after how
    long, under which device id, and whether to mangle the frame (short, garbled)."""

    pdu: bytes | None
    delay_s: float = 0.0
    device_id: int = 0
    mangle: FaultKind = "none"


def respond(
    devices: Mapping[int, SimDevice], profile: Profile, device_id: int, pdu: bytes, t_s: float
) -> Response:
    """A device's response to a request PDU at scenario time ``t_s`` (no I/O)."""
    device = devices.get(device_id)
    fc = pdu[0] if pdu else 0
    if device is None:
        # What a gateway says when nothing sits behind that id.
        return Response(exception_pdu(fc, GATEWAY_TARGET_FAILED), device_id=device_id)
    fault = device.fault
    if fault.kind == "dead":
        return Response(None, device_id=device_id)
    if fault.kind == "exception":
        return Response(exception_pdu(fc, fault.code), device_id=device_id)
    if fc not in profile.function_codes:
        return Response(exception_pdu(fc, ILLEGAL_FUNCTION), device_id=device_id)
    # Values as of the moment the request arrived, even when the answer is late.
    image = device.image(profile, t_s, fc)
    fill = {"ffff": 0xFFFF, "zero": 0}.get(fault.kind)

    def read(address: int, count: int) -> list[int] | None:
        if address not in image or address + count - 1 not in image:
            return None
        if fill is not None:
            return [fill] * count
        return [image[a] for a in range(address, address + count)]

    answer = answer_read(pdu, fc, read)
    reply_id = (device_id % 247) + 1 if fault.kind == "wrong_id" else device_id
    delay = fault.delay_s if fault.kind == "slow" else 0.0
    mangle = fault.kind if fault.kind in ("short", "garbled") else "none"
    return Response(answer, delay, reply_id, mangle)


@dataclass(frozen=True, slots=True)
class GatewayLine:
    """A TCP-to-RTU gateway's serial line: one request at a time for every connection.

    Attributes:
        baudrate: the line's speed (each exchange holds it for its transfer time).
        timeout_s: how long the gateway waits for a silent device before exception 11.
    """

    baudrate: int = 19200
    timeout_s: float = 0.5

    def transfer_s(self, request_pdu: bytes, answer_pdu: bytes | None) -> float:
        """Line time of the exchange: characters of 10 bits (8N1), RTU frame overhead."""
        chars = len(request_pdu) + 3 + (len(answer_pdu) + 3 if answer_pdu else 0)
        return chars * 10 / self.baudrate


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
        gateway: GatewayLine | None = None,
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
        self.gateway = gateway
        self._line = asyncio.Lock()  # the gateway's serial line
        self._in_flight: dict[asyncio.StreamWriter, int] = {}  # answers queued per connection

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

    async def _answer(self, req: Request, r: Response | None) -> bytes | None:
        if self.gateway is not None:
            async with self._line:  # one exchange on the serial line at a time
                return await self._answer_on_line(req, self.gateway)
        assert r is not None
        if r.pdu is None:
            return None
        if r.delay_s:
            await asyncio.sleep(r.delay_s)
        return self._frame(req.transaction_id, r)

    async def _answer_on_line(self, req: Request, line: GatewayLine) -> bytes | None:
        r = respond(self.devices, self.profile, req.device_id, req.pdu, self.elapsed())
        if r.pdu is None or r.delay_s >= line.timeout_s:
            # The device stays silent: the gateway holds the line for its whole timeout.
            await asyncio.sleep(line.timeout_s + line.transfer_s(req.pdu, None))
            pdu = exception_pdu(req.function_code, GATEWAY_TARGET_FAILED)
            return frame(req.transaction_id, req.device_id, pdu)
        await asyncio.sleep(r.delay_s + line.transfer_s(req.pdu, r.pdu))
        return self._frame(req.transaction_id, r)

    @staticmethod
    def _frame(transaction_id: int, r: Response) -> bytes:
        assert r.pdu is not None
        pdu = r.pdu
        if r.mangle == "short" and len(pdu) > 3:
            pdu = pdu[: len(pdu) // 2]  # a consistent MBAP length around a cut answer
        elif r.mangle == "garbled" and len(pdu) > 2:
            pdu = pdu[:1] + bytes(((pdu[1] + 2) & 0xFF,)) + pdu[2:]  # wrong byte count
        return frame(transaction_id, r.device_id, pdu)

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
            self._in_flight[writer] -= 1

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._handlers[me] = writer
        order: asyncio.Queue[asyncio.Task[bytes | None]] = asyncio.Queue(MAX_PIPELINE)
        pending: set[asyncio.Task[bytes | None]] = set()
        self._in_flight[writer] = 0
        answers = asyncio.create_task(self._write_answers(order, writer))
        try:
            while not answers.done():
                header = await reader.readexactly(MBAP_SIZE)
                tid, unit, length = parse_header(header)
                req = Request(tid, unit, await reader.readexactly(length))
                self.requests[unit] += 1
                r = None
                if self.gateway is None:
                    r = respond(self.devices, self.profile, unit, req.pdu, self.elapsed())
                    if r.pdu is not None and not r.delay_s and not self._in_flight[writer]:
                        # Nothing queued before it: answer at once (no task per request, so
                        # one process can serve thousands of endpoints at 1 Hz).
                        writer.write(self._frame(tid, r))
                        self.answers[r.device_id] += 1
                        continue
                task = asyncio.create_task(self._answer(req, r))
                pending.add(task)
                task.add_done_callback(pending.discard)
                self._in_flight[writer] += 1
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
            self._in_flight.pop(writer, None)
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
        help="a device: ID:SCENARIO[,FAULT] with SCENARIO healthy|degrade|velocity=MM_S (fixed "
        "values) (degrade,onset=FRACTION: healthy for that part of the life first, default "
        "0.25) and FAULT dead|"
        "slow=SECONDS|exception[=CODE]|ffff|zero|nan|short|garbled|wrong_id; repeatable "
        "(default 1:healthy)",
    )
    parser.add_argument("--profile", default="banner-qm30vt2", help="register profile to serve")
    parser.add_argument("--life-s", type=float, default=60.0, help="degrade: seconds to 8 mm/s")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (per device: seed + id)")
    parser.add_argument(
        "--endpoints", type=int, default=1, help="serve the devices on this many ports (max 4000)"
    )
    parser.add_argument(
        "--gateway", action="store_true", help="behave as a TCP-to-RTU gateway: one line"
    )
    parser.add_argument("--line-baud", type=int, default=19200, help="gateway line speed")
    parser.add_argument(
        "--gateway-timeout", type=float, default=0.5, help="gateway wait for a silent device, s"
    )
    parser.add_argument("--rtu", metavar="PATH", help="serve Modbus RTU on this serial port/pty")
    parser.add_argument("--baud", type=int, default=19200, help="RTU line speed (--rtu)")
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N", help="RTU parity")
    parser.add_argument("--stop-bits", type=int, choices=(1, 2), default=1, help="RTU stop bits")


async def serve(args: argparse.Namespace) -> None:
    """Run the simulator until cancelled, SIGTERM or SIGINT.

    Prints ``READY {"host": ..., "port": ..., "ports": [...]}`` (or ``{"rtu": PATH}``) on
    stdout once listening.
    """
    specs = args.device or ["1:healthy"]
    devices = [parse_device(s, seed=args.seed, life_s=args.life_s) for s in specs]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if args.rtu:
                from simulators.modbus_rtu import RtuSimServer

                await stack.enter_async_context(
                    RtuSimServer(
                        devices,
                        args.rtu,
                        profile=args.profile,
                        baudrate=args.baud,
                        parity=args.parity,
                        stop_bits=args.stop_bits,
                    )
                )
                print("READY " + json.dumps({"rtu": args.rtu}), flush=True)
            else:
                gateway = (
                    GatewayLine(args.line_baud, args.gateway_timeout) if args.gateway else None
                )
                servers = []
                for i in range(max(1, min(args.endpoints, 4000))):
                    port = args.port + i if args.port else 0
                    servers.append(
                        await stack.enter_async_context(
                            ModbusSimServer(
                                devices,
                                profile=args.profile,
                                host=args.host,
                                port=port,
                                gateway=gateway,
                            )
                        )
                    )
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    # The devices are shared by every endpoint: one repair fixes them all.
                    loop.add_signal_handler(signal.SIGUSR1, servers[0].repair)
                info = {
                    "host": args.host,
                    "port": servers[0].port,
                    "ports": [s.port for s in servers],
                }
                print("READY " + json.dumps(info), flush=True)
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
