"""Verge device SDK: connect a device program to a Verge node over MQTT 5
(paho-mqtt) — telemetry, events, command handlers with replies, and the
device shadow. See docs/devices.md ("Python SDK")."""

from .device import Device
from .errors import ConnectError, ShadowRejected, Timeout, VergeError

__all__ = ["Device", "VergeError", "ConnectError", "ShadowRejected", "Timeout"]
__version__ = "0.1.0"
