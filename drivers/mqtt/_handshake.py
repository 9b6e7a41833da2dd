"""An aiomqtt client that fails its connect at once, with the reason, when the socket breaks
before CONNACK (instead of waiting out the connect timeout and saying only "timed out").

With TLS 1.3 the client finishes its side of the handshake before the server has looked at
the client's certificate, so a broker that wants one (mosquitto ``require_certificate
true``) refuses it with an alert that arrives at the first read: paho only logs
"failed to receive on socket: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] ..." and aiomqtt
never sees it (its connect waits for a CONNACK that never comes). Here paho's log line is
kept, and the disconnect that follows fails the connect with it.
"""

from __future__ import annotations

from typing import Any

import aiomqtt
import paho.mqtt.client as paho

from drivers.mqtt._sockets import LoopSockets

SOCKET_ERROR = "failed to receive on socket: "


class HandshakeAware(LoopSockets):
    """aiomqtt's client (its socket in the loop's selector in order: _sockets); a socket
    error before CONNACK ends the connect with that error."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.socket_error: str | None = None  # paho's last read error on this connection
        self._client.on_log = self._on_paho_log  # beside aiomqtt's logger, not instead

    def _on_paho_log(self, client: Any, userdata: Any, level: int, buf: str) -> None:
        if level == paho.MQTT_LOG_ERR and buf.startswith(SOCKET_ERROR):
            self.socket_error = buf[len(SOCKET_ERROR) :]

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        self.socket_error = None  # a new connection (paho's connect thread)
        super()._on_socket_open(client, userdata, sock)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None
    ) -> None:
        error = self.socket_error
        if error is not None and not self._connected.done():
            connecting = self._connected
            self._loop.call_soon_threadsafe(_fail, connecting, error)
        super()._on_disconnect(client, userdata, flags, reason_code, properties)


def _fail(connecting: Any, error: str) -> None:
    if not connecting.done():
        connecting.set_exception(aiomqtt.MqttError(f"connection lost before CONNACK: {error}"))
