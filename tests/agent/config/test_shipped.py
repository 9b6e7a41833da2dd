"""The shipped files load cleanly; sizes parse; the summary shows what matters, no secrets."""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path

import pytest

from agent.config import load_config, main_check, parse_size, summary
from tests.agent.config.helpers import VALID, lines, write

ROOT = Path(__file__).resolve().parents[3]
DEMO_ENV = {
    "EDGE_DEMO_DIR": "/tmp/edge-demo-x",
    "EDGE_DEMO_MODBUS_PORT": "40211",
    "EDGE_DEMO_BACKEND_URL": "http://127.0.0.1:40212/v1/alerts",
    "EDGE_DEMO_TOKEN": "demo-secret",
    "EDGE_DEMO_CMMS_URL": "http://127.0.0.1:40213/api/v1/work-orders",
    "EDGE_DEMO_MQTT_PORT": "40214",
}


def test_example_passes_check_without_environment() -> None:
    config = load_config(ROOT / "config" / "example.yaml", environ={})
    assert config.gateway.id == "gw-01"
    assert config.uplinks[0].http.token == "change-me"
    out, err = io.StringIO(), io.StringIO()
    assert main_check(ROOT / "config" / "example.yaml", out, err) == 0, err.getvalue()
    assert "change-me" not in out.getvalue()


def test_example_documents_every_option() -> None:
    """Every key of every model is named in example.yaml (as a key or in a comment)."""
    from agent.config import _cmms, _delivery, _models, _mqtt
    from agent.config._schema import is_model, keys_of

    text = (ROOT / "config" / "example.yaml").read_text()
    models = [
        m
        for mod in (_models, _delivery, _cmms, _mqtt)
        for m in vars(mod).values()
        if is_model(m) and m.__module__ == mod.__name__
    ]
    missing = [f"{m.__name__}.{k}" for m in models for k in keys_of(m) if f"{k}:" not in text]
    assert missing == []


def test_demo_config_loads_with_the_demo_environment() -> None:
    demo = resources.files("agent") / "demo.yaml"
    with resources.as_file(demo) as path:
        config = load_config(path, environ=DEMO_ENV)
    assert config.store.path == Path("/tmp/edge-demo-x/outbox.db")
    assert config.health.port == 0
    modbus = [s for s in config.sensors if s.modbus is not None]
    by_unit = {s.modbus.device_id: s for s in modbus}
    assert {s.modbus.port for s in modbus} == {40211}
    assert by_unit[1].asset == "press-7" and config.asset("press-7").tier == 1
    assert config.asset(by_unit[2].asset).tier == 2
    assert all(s.poll_interval_s == 0.5 and s.modbus.timeout_s == 0.3 for s in modbus)
    (wireless,) = [s for s in config.sensors if s.mqtt is not None]
    assert wireless.asset == "pump-2" and wireless.mqtt.decoder == "ncd-processed"
    assert config.broker(wireless.mqtt.broker).port == 40214
    assert all(a.alerting.debounce == 3 for a in config.assets)
    assert config.uplinks[0].http.url.endswith("/v1/alerts")
    assert config.uplinks[0].http.token == "demo-secret"
    assert "demo-secret" not in summary(config)


def test_demo_config_names_missing_demo_variables() -> None:
    with resources.as_file(resources.files("agent") / "demo.yaml") as path:
        found = lines(path, environ={})
    assert len(found) == 9 and all("environment variable EDGE_DEMO_" in f for f in found)


def test_summary_says_when_a_puback_0x10_counts_as_delivered(tmp_path: Path) -> None:
    text = VALID + (
        "uplinks:\n  - {name: a, mqtt: {host: mqtt.example}}\n"
        "  - {name: b, mqtt: {host: mqtt.example, require_subscriber: false}}\n"
    )
    config = load_config(write(tmp_path, text), environ={})
    assert [u.mqtt.require_subscriber for u in config.uplinks] == [True, False]
    a, b = (ln for ln in summary(config).splitlines() if "mqtt mqtt.example" in ln)
    assert "0x10" not in a and b.endswith("batch 50, PUBACK 0x10 no subscriber: delivered)")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (1048576, 2**20),
        ("1MiB", 2**20),
        ("512 MiB", 512 * 2**20),
        ("2GiB", 2 * 2**30),
        ("2gb", 2 * 10**9),
        ("1.5GB", 1_500_000_000),
        ("3000000B", 3_000_000),
        ("5000000", 5_000_000),
    ],
)
def test_size_strings(tmp_path: Path, given: object, expected: int) -> None:
    assert parse_size(given) == expected
    text = VALID.replace("{path: /tmp/outbox.db}", f"{{path: /tmp/outbox.db, max_bytes: {given}}}")
    assert load_config(write(tmp_path, text), environ={}).store.max_bytes == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("lots", "got 'lots'; expected a size such as 512MiB or 2GB"),
        ("2 GiBs", "got '2 GiBs'; expected a size such as 512MiB or 2GB"),
        ("512KiB", "got '512KiB'; max_bytes must be at least 1MiB"),
        ("true", "got true; expected a size such as 512MiB or 2GB"),
    ],
)
def test_bad_sizes(tmp_path: Path, given: str, message: str) -> None:
    text = VALID.replace("{path: /tmp/outbox.db}", f"{{path: /tmp/outbox.db, max_bytes: {given}}}")
    assert lines(write(tmp_path, text)) == [f"config.yaml:9:42: store.max_bytes: {message}"]


def test_summary_lists_assets_sensors_uplinks_and_store(tmp_path: Path) -> None:
    text = VALID + (
        "uplinks:\n  - http: {url: 'https://x.example/v1/alerts?code=K3y', token: t0k}\n"
        "  - {name: broker, mqtt: {host: mqtt.example, topic: 'plant/{gateway}/{kind}'}}\n"
        "summaries: {interval_s: 600}\n"
    )
    # Not /tmp: a store there is warned about (test_squatted_store).
    store = "{path: /var/lib/edge-agent/outbox.db, max_bytes: 512MiB}"
    text = text.replace("{path: /tmp/outbox.db}", store)
    assert summary(load_config(write(tmp_path, text), environ={})) == (
        "gateway gw-01\n"
        "1 asset:\n"
        "  press-7: tier 2, ISO 10816-3 group 2 rigid, 1480 rpm; zones A/B 1.4, B/C 2.8, "
        "C/D 4.5 mm/s; failure at velocity_rms_mm_s 4.5 (C/D)\n"
        "1 sensor:\n"
        "  m1-de on press-7: modbus tcp 10.0.0.21:502 device_id 1, profile banner-qm30vt2, "
        "channels z,x, every 1 s (timeout 0.5 s)\n"
        "2 uplinks:\n"
        "  http: https://x.example/v1/alerts?code=*** (token set, batch 100; summaries to "
        "https://x.example/v1/summaries?code=***)\n"
        "  broker: mqtt mqtt.example:8883 (TLS, QoS 1, topic plant/{gateway}/{kind}, batch 50)\n"
        "feature summaries every 600 s for every sensor\n"
        "store /var/lib/edge-agent/outbox.db, budget 512 MiB\n"
        "health http://127.0.0.1:9108/healthz\n"
        "control socket /run/edge-agent/control.sock (maintenance; mode 0660)"
    )


def test_summary_warns_when_the_wal_outweighs_the_budget(tmp_path: Path) -> None:
    """max_bytes counts live pages; the WAL (up to 4 MiB) comes on top: 1 MiB is 5 on disk."""
    text = VALID.replace("{path: /tmp/outbox.db}", "{path: /tmp/outbox.db, max_bytes: 1MiB}")
    lines = summary(load_config(write(tmp_path, text), environ={})).splitlines()
    i = lines.index("store /tmp/outbox.db, budget 1 MiB")
    assert lines[i + 1] == (
        "  warning: the store's WAL beside the file takes up to 4 MiB more, not counted in "
        "max_bytes: plan about 5 MiB of disk"
    )
