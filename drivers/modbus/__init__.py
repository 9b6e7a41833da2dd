"""Modbus drivers: one poller per device, register profiles compiled into read plans."""

from drivers.modbus._client import ModbusTcpLink, silence_pymodbus_logging
from drivers.modbus._plan import (
    MAX_READ_REGISTERS,
    ReadBlock,
    ReadPlan,
    plan_profile,
    plan_reads,
)
from drivers.modbus._poller import (
    Backoff,
    ModbusTcpPoller,
    PollerState,
    PollerStatus,
    readings_from,
)

__all__ = [
    "MAX_READ_REGISTERS",
    "Backoff",
    "ModbusTcpLink",
    "ModbusTcpPoller",
    "PollerState",
    "PollerStatus",
    "ReadBlock",
    "ReadPlan",
    "plan_profile",
    "plan_reads",
    "readings_from",
    "silence_pymodbus_logging",
]
