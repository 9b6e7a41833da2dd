"""Connecting to a broker and saying why it failed (a BrokerLink's part): the client built
once with the link's bounds and rebuilt when TLS or password files must be read again, the
connect bounded in time, the back-off between tries, a refusal of our credentials."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.mqtt._broker_drops import BrokerDrops
from drivers.mqtt._client import BoundedClient
from drivers.mqtt._connect import enter_client
from drivers.mqtt._settings import BrokerSettings, TlsFilesError
from drivers.mqtt._subscriptions import SUBSCRIBE_WINDOW
from drivers.tls import client_cert_hint, load_tls

log = logging.getLogger("edge_agent.drivers.mqtt")

BACKOFF_BASE_S = 0.1
BACKOFF_FLOOR_S = 0.05
# CONNACK codes that refuse who we are (MQTT 5: 0x86 bad user name or password, 0x87 not
# authorized, 0x8A banned, 0x8C bad authentication method; 3.1.1: 4 and 5). Trying again
# at once cannot help: such a refusal is tried again every REFUSED_RETRY_S (with the
# password file read again, so a fixed one is used without a restart).
REFUSED_CODES = frozenset({134, 135, 138, 140, 4, 5})
REFUSED_RETRY_S = 30.0


class Reconnecting:
    """The link's client and its connection attempts (the attributes are the link's own)."""

    settings: BrokerSettings
    broker_drops: BrokerDrops
    last_error: str | None
    _client: BoundedClient | None
    _peak_before: int
    _rng: random.Random
    _unguarded_said: bool  # the oversize guard's absence was logged (once per link)
    _drop: Callable[[str, str, int], None]  # drivers.mqtt._dispatch

    def _secrets(self) -> tuple[ssl.SSLContext | None, str | None]:
        """TLS context and password (blocking: reads files; run in a thread)."""
        s = self.settings
        context = None
        if s.tls:
            # As `check` loads them: a passphrase-protected key is refused, never prompted
            # for (OpenSSL would ask on the terminal, or fail obscurely under systemd).
            loaded = load_tls(s.ca_file, s.cert_file, s.key_file)
            if isinstance(loaded, str):
                raise TlsFilesError(
                    f"cannot load the broker's TLS files: {loaded}; not connecting without "
                    "them (tried again with backoff)"
                )
            context = loaded
        password = s.password
        if s.password_file is not None:
            password = s.password_file.read_text(encoding="utf-8").strip() or None
        return context, password

    def _build(self, context: ssl.SSLContext | None, password: str | None) -> BoundedClient:
        s = self.settings
        v5 = s.protocol == "5"
        kw: dict[str, Any] = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry_s if s.persistent else 0
            # No Maximum Packet Size: mosquitto keeps a message it will not send us for it in
            # flight, and 20 of them stop all delivery (drivers.mqtt._oversize, which reads
            # one past instead, counted).
            kw.update(clean_start=not s.persistent, properties=props)
        else:
            kw.update(clean_session=not s.persistent)
        client = BoundedClient(
            s.host,
            s.port,
            identifier=s.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            username=s.username,
            password=password,
            tls_context=context,
            keepalive=s.keepalive_s,
            timeout=s.connect_timeout_s,
            max_queued_incoming_messages=s.queue_size,
            on_drop=self._drop,
            cap=s.max_payload_bytes,
            max_bytes=s.queue_max_bytes,
            sys_topic=s.sys_dropped_topic,
            on_sys=self.broker_drops.observe,
            **kw,
        )
        # aiomqtt warns past this many SUBSCRIBEs awaiting their SUBACK: ours are pipelined.
        client.pending_calls_threshold = max(client.pending_calls_threshold, SUBSCRIBE_WINDOW)
        if client.unguarded is not None and not self._unguarded_said:
            self._unguarded_said = True  # the same paho at every rebuild: said once
            log.warning(
                "mqtt broker %s: oversize guard not installed: %s; messages over the cap "
                "(max_payload_bytes %d) are assembled then dropped",
                s.id,
                client.unguarded,
                s.max_payload_bytes,
            )
        return client

    async def _connect(self, client: BoundedClient) -> None:
        """Connect within connect_timeout_s; a client whose connect timed out or was
        cancelled (a stop, a reload) is not used again (drivers.mqtt._connect)."""
        try:
            await enter_client(
                client,
                self.settings.connect_timeout_s + 1.0,
                name=f"mqtt-connect[{self.settings.id}]",
            )
        except (TimeoutError, asyncio.CancelledError):
            self._forget_client()
            raise

    def _backoff(self, attempt: int, refused: bool) -> float:
        """Seconds before the next try: capped, fully jittered; a refusal of our
        credentials waits REFUSED_RETRY_S."""
        cap = min(self.settings.reconnect_max_s, BACKOFF_BASE_S * 2.0 ** min(attempt, 20))
        wait = max(BACKOFF_FLOOR_S, self._rng.uniform(0.0, cap))
        if refused:
            wait = max(wait, REFUSED_RETRY_S * self._rng.uniform(0.8, 1.0))
        return wait

    def _failed(self, exc: BaseException, attempt: int) -> bool:
        """Say why the session failed (once while the reason stays the same); True when
        the broker refused our credentials (see REFUSED_CODES)."""
        refused = _refused_code(exc)
        if refused is not None:
            text = self._refusal(refused)
        elif isinstance(exc, TlsFilesError):
            text = str(exc)
        else:
            text = f"{type(exc).__name__}: {exc}"
        if self.settings.tls:
            text += client_cert_hint(text, has_cert=self.settings.cert_file is not None)
        if attempt == 0 or text != self.last_error:
            log.warning(
                "mqtt broker %s at %s: %s; reconnecting",
                self.settings.id,
                self.settings.address,
                text,
            )
        self.last_error = text
        if refused is not None or not isinstance(exc, aiomqtt.MqttError):
            self._forget_client()  # rebuilt: a fixed TLS or password file is read again
        return refused is not None

    def _refusal(self, code: str) -> str:
        """What an integrator needs to fix a refused connection."""
        s = self.settings
        if s.username is None:
            who = "no username is configured (the broker may want one)"
        else:
            source = f"password_file {s.password_file}" if s.password_file else "password"
            who = f"check username {s.username!r} and its {source}"
        return (
            f"the broker refused the connection: {code}; {who}; tried again every "
            f"{REFUSED_RETRY_S:.0f} s{_reread(s.password_file)}"
        )

    def _forget_client(self) -> None:
        """Drop the client (its queue and the bytes counted in it go with it)."""
        if self._client is not None:
            self._peak_before = max(self._peak_before, self._client.queued_bytes_peak)
        self._client = None


def _refused_code(exc: BaseException) -> str | None:
    """The CONNACK refusal of our credentials ("Not authorized (0x87)"), else None."""
    if not isinstance(exc, MqttConnectError):
        return None
    rc = exc.rc
    value = getattr(rc, "value", rc)
    if not isinstance(value, int) or value not in REFUSED_CODES:
        return None
    name = (
        str(rc)
        if not isinstance(rc, int)
        else ("Bad username or password", "Not authorised")[value - 4]
    )
    return f"{name} (0x{value:02X})"


def _reread(password_file: Path | None) -> str:
    """What a fixed password file does, for the refusal message: the link reads the file
    again at each try, but under systemd the file it reads is the copy LoadCredential=
    made when the service started (systemd/README.md), so a fix reaches it by a restart."""
    if password_file is None:
        return ""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and Path(os.path.abspath(password_file)).is_relative_to(os.path.abspath(creds)):
        return (
            f", but {password_file} is systemd's copy of the credential made when the service "
            "started: after fixing the file in /etc/edge-agent/credentials, "
            "systemctl restart edge-agent"
        )
    return ", the password file read again each time"
