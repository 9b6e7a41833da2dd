"""Host fields refuse URLs and typos, not spellings that worked before the check came."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agent.config import load_config
from agent.reach import health_url
from tests.agent.config.helpers import VALID, write


def test_an_empty_health_host_still_listens_on_every_interface(tmp_path: Path) -> None:
    """host: "" bound every interface (asyncio's all-addresses spelling) and status found it
    on 127.0.0.1; refused as 'expected an IP address or host name', the agent no longer
    started after an upgrade."""
    path = write(tmp_path, VALID + 'health: {host: "", port: 9108, expose: true}\n')
    config = load_config(path)
    assert config.health.host == ""
    assert health_url(config) == "http://127.0.0.1:9108/healthz"


def test_an_empty_health_host_needs_expose_like_any_wildcard(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + 'health: {host: "", port: 9108}\n')
    with pytest.raises(Exception, match="expose: true"):
        load_config(path)


def test_an_empty_sensor_host_is_still_refused(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("host: 10.0.0.21", 'host: ""'))
    with pytest.raises(Exception, match="expected an IP address or host name"):
        load_config(path)


def test_an_internationalised_host_name_is_accepted(tmp_path: Path) -> None:
    """Python resolves a Unicode name through IDNA (socket.getaddrinfo, as the drivers
    connect), so a name like pumpe-müller.werk.example reached its device before."""
    name = "pumpe-müller.werk.example"
    assert name.encode("idna").startswith(b"xn--pumpe-mller-")
    with pytest.raises(socket.gaierror):  # resolved (and not found), not a UnicodeError
        socket.getaddrinfo(name + ".invalid", 502)
    config = load_config(write(tmp_path, VALID.replace("10.0.0.21", name)))
    assert config.sensors[0].modbus is not None
    assert config.sensors[0].modbus.host == name


@pytest.mark.parametrize("bad", ["bad näme.example", "pumpe-ü..example", "ü" * 70 + ".example"])
def test_a_broken_internationalised_name_is_still_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(Exception, match="expected an IP address or a host name"):
        load_config(write(tmp_path, VALID.replace("10.0.0.21", f'"{bad}"')))


def test_a_zero_padded_ipv4_address_is_refused_saying_why(tmp_path: Path) -> None:
    """192.168.001.010 is four numbers 0-255 separated by dots, so 'not a valid IPv4
    address: four numbers 0-255 separated by dots' left the integrator puzzled; and the
    system reads 010 as octal: it reached 192.168.1.8, another device, before the check."""
    assert socket.getaddrinfo("192.168.001.010", 502)[0][4][0] == "192.168.1.8"
    path = write(tmp_path, VALID.replace("10.0.0.21", "192.168.001.010"))
    with pytest.raises(Exception) as info:
        load_config(path)
    assert "without leading zeros: 192.168.1.10" in str(info.value)
    assert "192.168.1.8" in str(info.value)
