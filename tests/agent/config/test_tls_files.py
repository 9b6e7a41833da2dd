"""`check` of the http and cmms uplinks' TLS files (ca_file, cert_file, key_file): each
problem at its own line, saying what to change; certificates made with openssl."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.config import load_config
from tests.agent.config.helpers import VALID, lines, write
from tests.mosquitto import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return make_certs(tmp_path_factory.mktemp("ca"))


def _config(tmp_path: Path, kind: str, tls: str, url: str = "https://cmms.plant/api") -> Path:
    return write(tmp_path, VALID + f"uplinks:\n  - {kind}:\n      url: {url}\n{tls}")


@pytest.mark.parametrize("kind", ["http", "cmms"])
def test_a_plant_ca_and_client_certificate_load_with_paths_made_absolute(
    tmp_path: Path, certs: Certs, kind: str
) -> None:
    for name in ("ca.pem", "server.pem", "server.key"):
        shutil.copy(certs.ca.parent / name, tmp_path / name)
    tls = "      ca_file: ca.pem\n      cert_file: server.pem\n      key_file: server.key\n"
    config = load_config(_config(tmp_path, kind, tls), environ={})
    block = config.uplinks[0].settings
    assert block.ca_file == tmp_path / "ca.pem" and block.key_file == tmp_path / "server.key"
    assert block.cert_file == tmp_path / "server.pem"
    from agent.config import summary

    assert f"CA {tmp_path / 'ca.pem'} and client certificate" in summary(config)


def test_ca_file_problems_are_reported_at_their_line(tmp_path: Path, certs: Certs) -> None:
    (tmp_path / "notpem.pem").write_text("hello\n")
    (tmp_path / "key-only.pem").write_bytes(certs.key.read_bytes())
    (tmp_path / "adir").mkdir()
    text = VALID + (
        "uplinks:\n"
        "  - name: a\n    http: {url: 'https://x/a', ca_file: missing.pem}\n"
        "  - name: b\n    http: {url: 'https://x/b', ca_file: notpem.pem}\n"
        "  - name: c\n    cmms: {url: 'https://x/c', ca_file: key-only.pem}\n"
        "  - name: d\n    cmms: {url: 'https://x/d', ca_file: adir}\n"
    )
    found = lines(write(tmp_path, text))
    no_pem = "holds no usable PEM certificate"
    assert len(found) == 4, found
    assert found[0].startswith("config.yaml:12:41: uplinks[0].http.ca_file: ca_file ")
    assert f"'{tmp_path / 'missing.pem'}' does not exist; fix the path" in found[0]
    assert found[1].startswith("config.yaml:14:41: uplinks[1].http.ca_file: ")
    assert no_pem in found[1] and "openssl x509 -inform der" in found[1]
    assert (
        found[2].startswith("config.yaml:16:41: uplinks[2].cmms.ca_file: ") and no_pem in found[2]
    )
    assert found[3].startswith("config.yaml:18:41: uplinks[3].cmms.ca_file: ")
    assert "is not a file" in found[3]


def test_an_unreadable_ca_file_says_so(tmp_path: Path, certs: Certs) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file, so an unreadable file cannot be made here")
    ca = tmp_path / "ca.pem"
    shutil.copy(certs.ca, ca)
    ca.chmod(0)
    found = lines(_config(tmp_path, "http", "      ca_file: ca.pem\n"))
    assert found == [
        f"config.yaml:13:16: uplinks[0].http.ca_file: ca_file '{ca}' cannot be read "
        "(Permission denied); let the agent's user read it"
    ]


def test_a_key_that_does_not_match_the_certificate(tmp_path: Path, certs: Certs) -> None:
    tls = f"      cert_file: {certs.cert}\n      key_file: {certs.ca.parent / 'ca.key'}\n"
    found = lines(_config(tmp_path, "cmms", tls))
    assert len(found) == 1 and found[0].startswith("config.yaml:13:18: uplinks[0].cmms.cert_file")
    assert "cannot be used as a client certificate (KEY_VALUES_MISMATCH)" in found[0]


def test_a_passphrase_protected_key_is_refused_without_prompting(
    tmp_path: Path, certs: Certs
) -> None:
    import subprocess

    key = tmp_path / "enc.key"
    subprocess.run(
        ["openssl", "rsa", "-aes256", "-in", str(certs.key), "-out", str(key),
         "-passout", "pass:secret"],
        check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    found = lines(
        _config(tmp_path, "http", f"      cert_file: {certs.cert}\n      key_file: {key}\n")
    )
    assert len(found) == 1 and "protected by a passphrase" in found[0], found


def test_tls_files_with_a_plain_http_url_are_refused_at_their_line(
    tmp_path: Path, certs: Certs
) -> None:
    tls = f"      ca_file: {certs.ca}\n"
    found = lines(_config(tmp_path, "http", tls, url="http://127.0.0.1:8080/alerts"))
    assert found == [
        f"config.yaml:13:16: uplinks[0].http.ca_file: got '{certs.ca}'; "
        "ca_file is for TLS, but url "
        "'http://127.0.0.1:8080/alerts' is plain http:// (no TLS, the file would be "
        "ignored); use an https:// url, or remove ca_file"
    ]


def test_a_certificate_needs_its_key(tmp_path: Path, certs: Certs) -> None:
    found = lines(_config(tmp_path, "cmms", f"      cert_file: {certs.cert}\n"))
    assert len(found) == 1 and "give cert_file and key_file together" in found[0], found


def test_the_mqtt_uplinks_tls_files_are_checked_too(tmp_path: Path) -> None:
    text = VALID + "uplinks:\n  - mqtt: {host: broker.plant, tls: {ca_file: nope.pem}}\n"
    found = lines(write(tmp_path, text))
    assert len(found) == 1 and found[0].startswith("config.yaml:11:47: uplinks[0].mqtt.tls.ca_file")
    assert "does not exist" in found[0]


def _broker(tmp_path: Path, tls: str) -> Path:
    """VALID plus one input broker (tls on line 13) with this tls block, and a sensor on it."""
    text = VALID + (
        f"mqtt:\n  - id: plant\n    host: 127.0.0.1\n    tls:\n{tls}"
        "sensors:\n  - id: fan-9\n    mqtt: {broker: plant, topic: ncd/x, decoder: ncd-processed}\n"
    )
    return write(tmp_path, text)


def test_an_input_brokers_tls_files_are_loaded_as_at_runtime(tmp_path: Path, certs: Certs) -> None:
    """mqtt[].tls: a passphrase-protected key at the key's line; a file that is no PEM
    certificate, and a key of another certificate, each at its own line."""
    import subprocess

    key = tmp_path / "enc.key"
    subprocess.run(
        ["openssl", "rsa", "-aes256", "-in", str(certs.key), "-out", str(key),
         "-passout", "pass:secret"],
        check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    (tmp_path / "notpem.pem").write_text("hello\n")
    tls = f"      ca_file: notpem.pem\n      cert_file: {certs.cert}\n      key_file: {key}\n"
    found = [f for f in lines(_broker(tmp_path, tls)) if ".tls." in f]
    assert len(found) == 2, found
    assert found[0].startswith("config.yaml:14:16: mqtt[0].tls.ca_file: ")
    assert "holds no usable PEM certificate" in found[0]
    assert found[1].startswith("config.yaml:16:17: mqtt[0].tls.key_file: ")
    assert f"'{key}': the private key is protected by a passphrase" in found[1]
    tls = f"      cert_file: {certs.cert}\n      key_file: {certs.ca.parent / 'ca.key'}\n"
    found = [f for f in lines(_broker(tmp_path, tls)) if ".tls." in f]
    assert len(found) == 1 and found[0].startswith("config.yaml:14:18: mqtt[0].tls.cert_file")
    assert "(KEY_VALUES_MISMATCH)" in found[0]


def test_a_key_file_that_is_no_pem_key_says_how_to_convert(tmp_path: Path, certs: Certs) -> None:
    (tmp_path / "key.der").write_bytes(b"\x30\x82\x04\xa4" + b"\x00" * 64)
    tls = f"      cert_file: {certs.cert}\n      key_file: key.der\n"
    found = [f for f in lines(_broker(tmp_path, tls)) if ".tls." in f]
    assert len(found) == 1 and found[0].startswith("config.yaml:15:17: mqtt[0].tls.key_file")
    assert "holds no PEM private key" in found[0] and "openssl pkey -inform der" in found[0]
