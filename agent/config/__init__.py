"""Configuration: YAML -> validated, frozen models; errors with file:line:column.

The models import eagerly; the YAML loader and the checks (yaml, the cross-reference and
message modules: about a third of the package's import time) only when first used, so a
command that builds its config from flags (`edge-agent replay`) does not pay for them.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from agent.config._cmms import DEFAULT_PRIORITY, CmmsFields, CmmsMapping
from agent.config._delivery import (
    CmmsUplink,
    HttpUplink,
    MqttTls,
    MqttUplink,
    Summaries,
    Uplink,
)
from agent.config._errors import ConfigError, ConfigIssue
from agent.config._models import (
    Alerting,
    Asset,
    Bearing,
    Bus,
    Config,
    Control,
    ExplicitLimits,
    Failure,
    Gateway,
    Health,
    Iso10816_1,
    Iso10816_3,
    ModbusTcp,
    RtuBus,
    Sensor,
    Store,
    StuckValues,
    TcpBus,
    ZoneLimits,
    parse_size,
)
from agent.config._urls import public_url
from agent.config._zones import standard_label, zone_limits
from drivers.tls import client_cert_hint, load_tls, tls_context

__all__ = [
    "DEFAULT_PRIORITY",
    "Alerting",
    "Asset",
    "Bearing",
    "Bus",
    "CheckResult",
    "CmmsFields",
    "CmmsMapping",
    "CmmsUplink",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Control",
    "ExplicitLimits",
    "Failure",
    "Gateway",
    "Health",
    "HttpUplink",
    "Iso10816_1",
    "Iso10816_3",
    "ModbusTcp",
    "MqttTls",
    "MqttUplink",
    "RtuBus",
    "Sensor",
    "Store",
    "StuckValues",
    "Summaries",
    "TcpBus",
    "Uplink",
    "ZoneLimits",
    "check_file",
    "client_cert_hint",
    "load_config",
    "load_tls",
    "main_check",
    "parse_size",
    "public_url",
    "readable_by_others",
    "standard_label",
    "summary",
    "tls_context",
    "zone_limits",
]

if TYPE_CHECKING:
    from agent.config._check import (
        CheckResult,
        check_file,
        main_check,
        readable_by_others,
        summary,
    )
    from agent.config._loader import load_config

# name -> module of the names imported on first use (PEP 562)
_LAZY = {
    "CheckResult": "agent.config._check",
    "check_file": "agent.config._check",
    "main_check": "agent.config._check",
    "readable_by_others": "agent.config._check",
    "summary": "agent.config._check",
    "load_config": "agent.config._loader",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)
