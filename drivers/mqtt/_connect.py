"""Entering an aiomqtt client so that neither a timeout nor a cancellation leaves a
connection behind.

paho connects in an executor thread that no cancellation stops: a connect abandoned there
opens its socket later, with aiomqtt's housekeeping task and our client id (a second
session that takes the broker's messages or acks from the next one), and the abandoned
``__aenter__`` keeps aiomqtt's re-entry lock, so that client cannot connect again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiomqtt
from paho.mqtt import __version__ as PAHO_VERSION

log = logging.getLogger("edge_agent.drivers.mqtt")

CLOSE_S = 1.0  # a cancelled connect is let finish, then closed, within this
TIMED_OUT = "Operation timed out"  # aiomqtt's MqttError when no CONNACK came in time
# paho's private method that closes its socket and unregisters it from aiomqtt's loop: no
# public call does both without a DISCONNECT the broker never asked for.
PAHO_SOCK_CLOSE = "_sock_close"


async def enter_client(client: aiomqtt.Client, timeout_s: float, *, name: str) -> None:
    """``client.__aenter__()`` within timeout_s.

    Raises:
        aiomqtt.MqttError: refused, or no CONNACK within the client's timeout; the socket
            is closed, the client may connect again.
        TimeoutError: not connected in time; the connect is abandoned and the client keeps
            aiomqtt's re-entry lock: build a new one.
        asyncio.CancelledError: after a connect under way was let finish (at most CLOSE_S)
            and closed; do not use the client again either.
    """
    entering = asyncio.create_task(client.__aenter__(), name=name)
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(entering)
    except TimeoutError:
        entering.cancel()
        raise
    except aiomqtt.MqttError as exc:
        # aiomqtt gives up on a CONNACK that does not come (or a refusal) but leaves paho's
        # socket open and read by the loop: against a broker that takes connections and
        # never answers, one descriptor (and one half-open connection at the broker) more
        # at every attempt, until the process runs out of them.
        _close_socket(client, name)
        if str(exc) == TIMED_OUT:
            raise aiomqtt.MqttError(
                f"no CONNACK within {client.timeout:g} s (the broker took the connection "
                "but did not answer CONNECT)"
            ) from None
        raise
    except asyncio.CancelledError:
        await _close_abandoned(client, entering)
        raise


def _close_socket(client: aiomqtt.Client, name: str) -> None:
    """Close paho's socket after a connect that failed. A paho whose private method has
    another name is said, once per client (rebuilt only after a timeout or a refusal): a
    silent miss would bring back the leak of one descriptor per attempt."""
    close = getattr(client._client, PAHO_SOCK_CLOSE, None)
    if callable(close):
        with contextlib.suppress(OSError):  # already broken: closed is what we want
            close()
        return
    if not getattr(client, "_unclosable_said", False):
        client._unclosable_said = True  # type: ignore[attr-defined]
        log.warning(
            "%s: paho %s internals differ (no Client.%s): the socket of a connect that got "
            "no CONNACK is not closed here, one descriptor may stay open per attempt until "
            "the broker closes it",
            name,
            PAHO_VERSION,
            PAHO_SOCK_CLOSE,
        )


async def _close_abandoned(client: aiomqtt.Client, entering: asyncio.Task[object]) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        async with asyncio.timeout(CLOSE_S):
            await asyncio.shield(entering)
    if entering.done() and not entering.cancelled() and entering.exception() is None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            async with asyncio.timeout(CLOSE_S):
                await client.__aexit__(None, None, None)
    else:
        entering.cancel()


def raise_if_cancelled() -> None:
    """aiomqtt waits for a CONNACK or SUBACK with asyncio.wait_for, which on Python 3.11
    returns the result instead of raising when a cancel lands as the answer arrives: the
    link would go on consuming with its stop lost, a task no one ends."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
