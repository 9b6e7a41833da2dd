"""Configuration: YAML -> validated, frozen models; errors with file:line:column."""

from agent.config._check import CheckResult, check_file, main_check, readable_by_others, summary
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
from agent.config._loader import load_config
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
    TcpBus,
    ZoneLimits,
    parse_size,
)
from agent.config._tls import load_tls, tls_context
from agent.config._urls import public_url
from agent.config._zones import standard_label, zone_limits

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
    "Summaries",
    "TcpBus",
    "Uplink",
    "ZoneLimits",
    "check_file",
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
