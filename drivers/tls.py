"""TLS client contexts from an uplink's or an MQTT input broker's files, built the same way
by `check` and at runtime (agent.config re-exports this module: imports go agent -> drivers).

`ca_file` replaces the system's CA certificates for that connection (a private or plant
CA; a file may hold several). `cert_file` + `key_file` are a client certificate for a far
end that asks for one (mutual TLS). The key must not be passphrase-protected: the agent
runs unattended, and OpenSSL would otherwise prompt on the terminal.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["client_cert_hint", "load_tls", "tls_context", "tls_file_problem"]

# A key file is looked at up to this many bytes (a PEM key is a few KiB).
KEY_PEEK_BYTES = 64 * 2**10


def _no_passphrase() -> bytes:
    # Called only for an encrypted key: refuse it instead of prompting on a terminal.
    raise ValueError("the private key is protected by a passphrase")


def tls_context(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A client context that verifies the far end (blocking: reads files; run it in a thread).

    Raises:
        OSError: a file is missing or unreadable; ssl.SSLError (an OSError) when it holds
            no PEM certificate, or the key does not match the certificate.
        ValueError: the key is passphrase-protected.
    """
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file), password=_no_passphrase)
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def tls_file_problem(key: str, path: Path, *, pair: Path | None = None) -> str | None:
    """What is wrong with one TLS file, in words that say what to change; None when fine.

    Args:
        key: ca_file, cert_file or key_file (what the file is named in the configuration).
        path: the file (absolute, or relative to the working directory).
        pair: with key cert_file, the key_file to load it with.
    """
    if not path.exists():
        return (
            f"{key} '{path}' does not exist; fix the path (relative paths are relative to "
            "this configuration)"
        )
    if not path.is_file():
        return f"{key} '{path}' is not a file; give the PEM file itself"
    try:
        if key == "ca_file":
            tls_context(ca_file=path)
        elif key == "cert_file" and pair is not None:
            tls_context(cert_file=path, key_file=pair)
        elif key == "cert_file":  # its key is unusable: only whether it can be read
            with path.open("rb"):
                pass
        else:  # key_file: loaded with its certificate; here only what can be seen alone
            with path.open("rb") as f:
                head = f.read(KEY_PEEK_BYTES)
            if b"PRIVATE KEY-----" not in head:
                return (
                    f"{key} '{path}' holds no PEM private key; give the key in PEM form "
                    "(a '-----BEGIN PRIVATE KEY-----' block; convert a DER key with: "
                    "openssl pkey -inform der -in client.key.der -out client.key)"
                )
            if b"ENCRYPTED" in head:  # PKCS#8 'BEGIN ENCRYPTED', or 'Proc-Type: 4,ENCRYPTED'
                raise ValueError("the private key is protected by a passphrase")
    except PermissionError as exc:
        return f"{key} '{path}' cannot be read ({_reason(exc)}); let the agent's user read it"
    except ValueError as exc:
        return f"{_named(key, path, pair)}: {exc}; give an unencrypted key (chmod 600 it)"
    except OSError as exc:
        if key == "ca_file":
            return (
                f"{key} '{path}' holds no usable PEM certificate ({_reason(exc)}); give the "
                "CA certificate in PEM form (a '-----BEGIN CERTIFICATE-----' block; convert "
                "a DER .cer with: openssl x509 -inform der -in ca.cer -out ca.pem)"
            )
        return (
            f"{_named(key, path, pair)} cannot be used as a client certificate "
            f"({_reason(exc)}); give the PEM certificate and its own unencrypted PEM key"
        )
    return None


def client_cert_hint(error: str, *, has_cert: bool) -> str:
    """What to add to a TLS error when the far end wants a client certificate we did not
    send ("" otherwise): without it, mutual TLS looks like any connection failure.

    Args:
        error: the error's text (an ssl.SSLError's, or a library's message quoting it).
        has_cert: cert_file and key_file are configured.
    """
    if has_cert:
        return ""
    text = error.upper().replace(" ", "_")
    if "CERTIFICATE_REQUIRED" in text:  # TLS 1.3: alert certificate_required (116)
        return "; the server asks for a client certificate: set cert_file and key_file"
    if "ALERT_HANDSHAKE_FAILURE" in text:  # TLS 1.2 sends this generic alert instead
        return (
            "; the server probably asks for a client certificate: set cert_file and "
            "key_file (else it accepts none of our TLS versions or ciphers)"
        )
    return ""


def _named(key: str, path: Path, pair: Path | None) -> str:
    return f"{key} '{path}' with key_file '{pair}'" if pair is not None else f"{key} '{path}'"


def load_tls(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext | str:
    """`tls_context`, or what is wrong with the files in `check`'s words (blocking: run it
    in a thread)."""
    try:
        return tls_context(ca_file, cert_file, key_file)
    except (OSError, ValueError) as exc:
        for key, path in (("ca_file", ca_file), ("key_file", key_file), ("cert_file", cert_file)):
            pair = key_file if key == "cert_file" else None
            problem = path is not None and tls_file_problem(key, path, pair=pair)
            if problem:
                return problem
        return f"{type(exc).__name__}: {exc}"
