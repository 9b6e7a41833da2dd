"""The sensor_fault record and the names shared by a sensor's fault and an endpoint's
(agent.sensor_faults, agent.endpoint_faults)."""

from __future__ import annotations

from datetime import datetime

from agent.records import AlertDraft, AssetRef, SensorRef, Severity

ALL_CHANNELS = "all"
FLAP_WINDOW_S = 600.0  # a fault raised again this soon after its clear: the sensor flaps
FLAP_CLEAR_HOLD_S = 120.0  # a flapping sensor must answer this long, unbroken, to clear
HOST_PREFIX = "host:"  # the sensor id of a host's endpoint fault
BROKER_PREFIX = "broker:"  # the sensor id of an MQTT broker's outage fault
NETWORK_PREFIX = "network:"  # the sensor id of the Modbus TCP network's outage fault
PREFIXES = {"host": HOST_PREFIX, "broker": BROKER_PREFIX, "network": NETWORK_PREFIX}
MAX_NAMED = 20  # sensor ids an endpoint fault names (the rest are counted)


def fault_key(asset_id: str, sensor_id: str) -> str:
    """The store key of a sensor's fault state."""
    return f"{asset_id}/{sensor_id}/{ALL_CHANNELS}/sensor_fault"


def transport_of(sid: str, modbus: str) -> str:
    """The transport an endpoint fault's record names: a broker's is mqtt."""
    return "mqtt" if sid.startswith(BROKER_PREFIX) else modbus


def fault_draft(
    asset: AssetRef, sensor: SensorRef, transition: str, now: datetime,
    measured: tuple[str, float, float], reason: str, evidence: dict[str, object],
) -> AlertDraft:  # fmt: skip
    """A sensor_fault record (a sensor's, or a silent host's, network's or broker's):
    `measured` is the severity's (metric, value, threshold)."""
    metric, value, threshold = measured
    return AlertDraft(
        asset=asset,
        sensor=sensor,
        kind="sensor_fault",
        state=transition,  # type: ignore[arg-type]
        detected_at=now,
        severity=Severity(
            level="warning" if transition == "raised" else "info",
            zone=None,
            standard="sensor health",
            metric=metric,
            value=value,
            threshold=threshold,
        ),
        no_estimate_reason=reason,
        evidence=evidence,
    )
