"""${VAR} expansion: values from the environment, errors where a variable is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.config._env import expand
from tests.agent.config.helpers import VALID, lines, write


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("plain", {}, "plain"),
        ("${A}", {"A": "1"}, "1"),
        ("http://${HOST}:${PORT}/v1", {"HOST": "h", "PORT": "80"}, "http://h:80/v1"),
        ("${A:-dflt}", {}, "dflt"),
        ("${A:-dflt}", {"A": ""}, "dflt"),
        ("${A:-}", {}, ""),
        ("${A:-x}", {"A": "set"}, "set"),
        ("$${A} and $HOME", {"A": "1"}, "${A} and $HOME"),
    ],
)
def test_expand(text: str, env: dict[str, str], expected: str) -> None:
    assert expand(text, env) == (expected, [])


@pytest.mark.parametrize(
    ("text", "env", "problem"),
    [
        ("${A}", {}, "environment variable A is not set;"),
        ("${A}", {"A": ""}, "environment variable A is empty;"),
        ("${A", {}, "unclosed '${'"),
        ("${1A}", {}, "'${1A}' is not a valid placeholder"),
    ],
)
def test_expand_problems(text: str, env: dict[str, str], problem: str) -> None:
    _, problems = expand(text, env)
    assert len(problems) == 1 and problems[0].startswith(problem)


def test_port_and_token_from_environment(tmp_path: Path) -> None:
    text = VALID.replace("{host: 10.0.0.21}", '{host: "${H}", port: "${PORT}"}') + (
        "uplinks:\n  - http: {url: 'https://${API:-api.example}/v1/alerts', token: '${TOKEN}'}\n"
    )
    config = load_config(
        write(tmp_path, text), environ={"H": "10.1.1.1", "PORT": "5020", "TOKEN": "s3"}
    )
    assert config.sensors[0].modbus.host == "10.1.1.1"
    assert config.sensors[0].modbus.port == 5020  # "5020" -> int in pydantic's lax mode
    assert config.uplinks[0].http.url == "https://api.example/v1/alerts"
    assert config.uplinks[0].http.token == "s3"


def test_missing_variables_are_reported_at_their_values(tmp_path: Path) -> None:
    text = VALID.replace("{host: 10.0.0.21}", '{host: "${GATEWAY_IP}", port: "${PORT}"}')
    assert lines(write(tmp_path, text), environ={"PORT": "ninety"}) == [
        "config.yaml:8:20: sensors[0].modbus.host: environment variable GATEWAY_IP is not set; "
        "set it in the agent's environment (e.g. systemd EnvironmentFile=), or give a default "
        "with ${GATEWAY_IP:-default}",
        "config.yaml:8:43: sensors[0].modbus.port: got 'ninety' (from '${PORT}'); "
        "expected a whole number from 1 to 65535",
    ]


def test_a_secret_from_the_environment_is_never_printed(tmp_path: Path) -> None:
    text = VALID + "uplinks:\n  - http: {url: 'https://x/v1', token: '${T}'}\n"
    found = lines(
        write(tmp_path, text.replace("{id: gw-01}", "{id: gw-01, bad: 1}")), {"T": "hunter2"}
    )
    assert found and all("hunter2" not in line for line in found)
