"""Modbus drivers: buses (a device's own TCP connection, a gateway, a serial line), one
poller per device, register profiles compiled into read plans."""

from drivers.decoders import MAX_READ_REGISTERS
from drivers.modbus._backoff import Backoff
from drivers.modbus._bus import Bus, BusStatus
from drivers.modbus._capacity import TURNAROUND_S, exchange_s, line_utilisation
from drivers.modbus._frames import ExceptionAnswer, FrameError
from drivers.modbus._link import Link, LinkDown, LinkTimeout
from drivers.modbus._peers import NETWORK, Outage, Peers
from drivers.modbus._plan import ReadBlock, ReadPlan, plan_profile, plan_reads
from drivers.modbus._poller import ModbusPoller
from drivers.modbus._readings import readings_from
from drivers.modbus._rtu import RtuLink
from drivers.modbus._rtu_devices import DeviceTimes
from drivers.modbus._status import PollerState, PollerStatus
from drivers.modbus._tcp import TcpLink, deadline_wheel
from drivers.modbus._wheel import Wheel

__all__ = [
    "MAX_READ_REGISTERS",
    "NETWORK",
    "TURNAROUND_S",
    "Backoff",
    "Bus",
    "BusStatus",
    "DeviceTimes",
    "ExceptionAnswer",
    "FrameError",
    "Link",
    "LinkDown",
    "LinkTimeout",
    "ModbusPoller",
    "Outage",
    "Peers",
    "PollerState",
    "PollerStatus",
    "ReadBlock",
    "ReadPlan",
    "RtuLink",
    "TcpLink",
    "Wheel",
    "deadline_wheel",
    "exchange_s",
    "line_utilisation",
    "plan_profile",
    "plan_reads",
    "readings_from",
]
