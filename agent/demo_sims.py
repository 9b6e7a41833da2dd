"""The demo's simulators, each a process of its own as in a plant (`edge-sim ...`).

`SimProcess` starts one and waits for its READY line. `Wireless` is the demo's optional
MQTT half: a private mosquitto on a free loopback port (`edge-sim mosquitto`) and a
wireless NCD-style vibration sensor publishing to it (`edge-sim mqtt`), started in the
background while the other simulators start, so the Modbus story keeps its timing. When
mosquitto is not installed the demo runs without it (`modbus_only_config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

READY_TIMEOUT_S = 20.0
# The simulators' token goes in their environment (readable by this user only), never on
# their command line (which `ps` shows every local user): simulators._sim.TOKEN_ENV.
TOKEN_ENV = "EDGE_SIM_TOKEN"
WIRELESS_MAC = "00:13:a2:00:41:9b:0c:01"  # edge-sim mqtt's sensor 1 (agent/demo.yaml)
WIRELESS_RATE_HZ = 2.0  # as often as the Modbus sensors are polled


# simulators.cli.PARENT_ENV: a simulator with our pid there ends when we die, even by SIGKILL.
PARENT_ENV = "EDGE_SIM_PARENT_PID"


def _token_env(token: str | None) -> dict[str, str]:
    # Set or not, never inherited: a token from the caller's environment is not this one.
    return {TOKEN_ENV: token or ""}


class SimProcess:
    """A simulator child process that announces its address with one READY line.

    Args:
        name: what it is, for messages.
        args: the `edge-sim` command line after `edge-sim`.
        errors: a file for its stderr; its last line explains a failed start.
        env: variables added to its environment.
    """

    def __init__(
        self,
        name: str,
        args: list[str],
        errors: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name, self.args, self.errors = name, args, errors
        self.env = dict(env or {})
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}

    @classmethod
    def backend(cls, db: Path, token: str | None, config: Path | None = None) -> SimProcess:
        """`edge-sim backend` on a free loopback port, storing into `db`."""
        args = ["--host", "127.0.0.1", "--port", "0", "--db", str(db)]
        args += ["--config", str(config)] if config else []
        return cls("backend", ["backend", *args], env=_token_env(token))

    @classmethod
    def cmms(cls, db: Path, token: str | None, port: int = 0) -> SimProcess:
        """`edge-sim cmms` on loopback (a free port by default), storing into `db`."""
        args = ["--host", "127.0.0.1", "--port", str(port), "--db", str(db)]
        return cls("cmms", ["cmms", *args], env=_token_env(token))

    @classmethod
    def modbus(cls, devices: Sequence[str], life_s: float) -> SimProcess:
        """`edge-sim modbus` on a free loopback port; devices like "1:degrade", "2:dead"."""
        args = ["--host", "127.0.0.1", "--port", "0", "--life-s", str(life_s)]
        for d in devices:
            args += ["--device", d]
        return cls("modbus", ["modbus", *args])

    @classmethod
    def mosquitto(cls, folder: Path) -> SimProcess:
        """`edge-sim mosquitto` on a free loopback port, its files in `folder`."""
        args = ["mosquitto", "--host", "127.0.0.1", "--port", "0", "--dir", str(folder)]
        return cls("mosquitto", args, errors=folder / "edge-sim.err")

    @classmethod
    def mqtt(cls, port: int, spec: str, errors: Path) -> SimProcess:
        """`edge-sim mqtt`: NCD sensor 1 with behaviour `spec` publishing to 127.0.0.1:port."""
        args = ["mqtt", "--port", str(port), "--sensors", "1", "--sensor", f"1:{spec}"]
        return cls("mqtt", [*args, "--rate", str(WIRELESS_RATE_HZ)], errors=errors)

    async def __aenter__(self) -> SimProcess:
        err: IO[bytes] | None = None
        if self.errors is not None:
            self.errors.parent.mkdir(parents=True, exist_ok=True)
            err = self.errors.open("wb")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "simulators.cli", *self.args,
                stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, stderr=err,
                env={**os.environ, **self.env, PARENT_ENV: str(os.getpid())},
                # Its own process group: a Ctrl-C in the terminal reaches only the demo, which
                # then asks the backend for its summary before it stops the simulators.
                start_new_session=True,
            )  # fmt: skip
        finally:
            if err is not None:
                err.close()  # the child has its own copy
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        raise RuntimeError(self._exit_reason())
                    if line.startswith(b"READY "):
                        self.info = json.loads(line[6:])
                        break
        except BaseException:
            await self.stop()
            raise
        return self

    def _exit_reason(self) -> str:
        why = f"{self.name} simulator exited before it was ready"
        if self.errors is not None and self.errors.exists():
            lines = self.errors.read_text(errors="replace").strip().splitlines()
            if lines:
                why += f": {lines[-1]}"
        return why

    def repair(self) -> None:
        """SIGUSR1: the Modbus simulator replaces its degrading devices' bearings."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGUSR1)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(5):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def started(*sims: SimProcess) -> AsyncIterator[tuple[SimProcess, ...]]:
    """Simulator processes started side by side (a start is mostly an interpreter's own
    start-up: one after the other, three cost the demo ~1.5 s more); all stopped on the way
    out, side by side too. A start that fails raises its error (the first one's, in order)."""
    try:
        results = await asyncio.gather(*(s.__aenter__() for s in sims), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        yield sims
    finally:
        await asyncio.gather(*(s.stop() for s in sims))


class Wireless:
    """A private mosquitto and one wireless sensor publishing to it, started in the
    background on entry; `await ready()` says whether they run (else `reason` says why).

    Args:
        workdir: the demo's folder (the broker's files go in a subfolder).
        spec: the sensor's behaviour in `edge-sim mqtt` (healthy, degrade...).
    """

    def __init__(self, workdir: Path, spec: str = "healthy") -> None:
        self.workdir, self.spec = workdir, spec
        self.broker: SimProcess | None = None
        self.sensor: SimProcess | None = None
        self.reason = ""
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Wireless:
        self._task = asyncio.create_task(self._start(), name="demo-wireless-start")
        return self

    async def _start(self) -> None:
        broker = SimProcess.mosquitto(self.workdir / "broker")
        try:
            await broker.__aenter__()
        except RuntimeError as exc:
            self.reason = str(exc)
            return
        self.broker = broker
        sensor = SimProcess.mqtt(broker.info["port"], self.spec, self.workdir / "mqtt-sim.err")
        try:
            await sensor.__aenter__()
        except RuntimeError as exc:
            self.reason = str(exc)
            return
        self.sensor = sensor

    async def ready(self) -> bool:
        """Wait for the start; True when the broker and the sensor both run."""
        assert self._task is not None
        await asyncio.shield(self._task)
        return self.sensor is not None

    def running(self) -> list[SimProcess]:
        """The broker and the sensor, those that started."""
        return [p for p in (self.broker, self.sensor) if p is not None]

    @property
    def port(self) -> int:
        assert self.broker is not None
        return int(self.broker.info["port"])

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
        for proc in (self.sensor, self.broker):
            if proc is not None:
                await proc.stop()


def modbus_only_config(source: Path, target: Path) -> Path:
    """The demo configuration without its MQTT broker, MQTT sensors and the assets only they
    watch (for a machine without mosquitto); written to `target`."""
    doc = yaml.safe_load(source.read_text())
    doc.pop("mqtt", None)
    dropped = {s["asset"] for s in doc["sensors"] if "mqtt" in s}
    doc["sensors"] = [s for s in doc["sensors"] if "mqtt" not in s]
    kept = {s["asset"] for s in doc["sensors"]}
    doc["assets"] = [a for a in doc["assets"] if a["id"] not in dropped - kept]
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target
