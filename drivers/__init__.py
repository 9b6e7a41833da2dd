"""Sensor transports (Modbus, MQTT), register profiles and payload decoders."""

from drivers.reading import FEATURE_NAMES, Reading, Waveform, utc_now

__all__ = ["FEATURE_NAMES", "Reading", "Waveform", "utc_now"]
