"""Host fields refuse URLs and typos, not spellings that worked before the check came."""

from __future__ import annotations

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
