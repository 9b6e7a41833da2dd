"""edge-agent: vibration monitoring on the gateway, durable store-and-forward of alerts."""

__version__ = "0.1.0"
