"""One small valid configuration for unit tests: asset press-7 (tier 1, ISO 10816-3 group 2
rigid), sensor m1 on it, a store and a control socket in the test's tmp_path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agent.config import Config


def press_config(tmp_path: Path, **alerting: Any) -> Config:
    """The configuration; keyword arguments go to the asset's `alerting` block."""
    return Config.model_validate(
        {
            "gateway": {"id": "gw-t"},
            "assets": [
                {
                    "id": "press-7",
                    "name": "Press 7",
                    "tier": 1,
                    "machine": {
                        "standard": "iso10816-3",
                        "group": 2,
                        "foundation": "rigid",
                        "rpm": 1480,
                    },
                    "alerting": alerting,
                }
            ],
            "sensors": [
                {
                    "id": "m1",
                    "asset": "press-7",
                    "modbus": {"host": "127.0.0.1", "port": 5020, "device_id": 1},
                }
            ],
            "store": {"path": str(tmp_path / "o.db")},
            # never the system path: a test must not reach an agent running on the machine
            "control": {"socket": str(tmp_path / "c.sock")},
        }
    )


def write_yaml(config: Config, path: Path) -> Path:
    """The configuration as the YAML file a user would write (for `edge-agent` processes)."""
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    return path


def press_yaml(
    gateway: str,
    modbus: str,
    store: Path | str,
    control: Path | str,
    *,
    poll_interval_s: float | None = None,
    uplinks: str = "",
    health_port: int | None = None,
) -> str:
    """press-7 (without a name) with m1 on it, as the YAML an `edge-agent` process reads:
    `modbus` is m1's modbus mapping in flow style, `uplinks` the uplinks: entries if any."""
    poll = "" if poll_interval_s is None else f"    poll_interval_s: {poll_interval_s}\n"
    return (
        f"gateway: {{id: {gateway}}}\n"
        "assets:\n  - id: press-7\n    tier: 1\n"
        "    machine: {standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}\n"
        f"sensors:\n  - id: m1\n    asset: press-7\n    modbus: {modbus}\n{poll}"
        + (f"uplinks:\n{uplinks}" if uplinks else "")
        + f'store: {{path: "{store}"}}\n'
        + ("" if health_port is None else f"health: {{port: {health_port}}}\n")
        + f'control: {{socket: "{control}"}}\n'
    )
