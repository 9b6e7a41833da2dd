"""TLS files as `check` and the runtime load them: the code lives in drivers.tls, so the
MQTT input brokers (drivers) load them exactly as the uplinks and `check` do."""

from __future__ import annotations

from drivers.tls import client_cert_hint, load_tls, tls_context, tls_file_problem

__all__ = ["client_cert_hint", "load_tls", "tls_context", "tls_file_problem"]
