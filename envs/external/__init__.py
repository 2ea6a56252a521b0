"""Simulators that own their loop and connect over the network (PROTOCOL.md).

Importing this package loads only the client and the wire format (numpy and msgpack);
the listening side (``server.py``) is imported by the env runner that uses it.
"""

from rlfleet.envs.external.client import ExternalError, PolicyClient
from rlfleet.envs.external.protocol import VERSION, ProtocolError

__all__ = ["ExternalError", "PolicyClient", "ProtocolError", "VERSION"]
