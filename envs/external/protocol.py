"""The external-simulator wire protocol (PROTOCOL.md beside this file): frames of a
4-byte big-endian length and a msgpack map, arrays as raw bytes with dtype and shape.

Depends on numpy and msgpack only (the client ships with it); never pickle.
"""

from __future__ import annotations

import math
import socket
import struct
from typing import Any

import msgpack
import numpy as np

VERSION = 1
MAX_FRAME = 16 << 20
"""Frames larger than this are refused (16 MiB)."""
MAX_DIMS = 32
"""An array has at most this many axes (numpy's own limit on older versions)."""

DTYPES = ("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool")


class ProtocolError(ValueError):
    """A frame or message that breaks the protocol; the connection is closed after the
    error reply."""


def encode(value: Any) -> Any:
    """Observations and actions to msgpack-able data: arrays as {"dtype", "shape",
    "data": bytes}, dicts and lists as themselves, numbers as numbers."""
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return {"dtype": str(array.dtype), "shape": list(array.shape), "data": array.tobytes()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def decode(value: Any) -> Any:
    """Inverse of :func:`encode`; raises ProtocolError on a malformed array."""
    if isinstance(value, dict) and set(value) == {"dtype", "shape", "data"}:
        return _decode_array(value["dtype"], value["shape"], value["data"])
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def _decode_array(dtype: Any, shape: Any, data: Any) -> np.ndarray:
    """Checks the sizes before numpy sees them: a peer's shape must never make this side
    allocate, overflow an int64 product (``[2**32, 2**32]`` wraps to 0 in ``np.prod``) or
    raise something other than ProtocolError."""
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError(f"array dtype {_clip(dtype)} is not one of {', '.join(DTYPES)}")
    if not isinstance(data, bytes):
        raise ProtocolError(f"array data must be bin, got {type(data).__name__}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS \
            or not all(type(n) is int and 0 <= n <= MAX_FRAME for n in shape):  # type(): True is no length
        raise ProtocolError(f"array shape {_clip(shape)} is not a list of at most {MAX_DIMS} ints in [0, {MAX_FRAME}]")
    itemsize = np.dtype(dtype).itemsize
    needed = itemsize * math.prod(shape)  # Python ints: exact, no overflow
    if needed != len(data):
        raise ProtocolError(f"array data of {len(data)} bytes does not fill shape {shape} of {dtype} "
                            f"({needed} bytes)")
    return np.frombuffer(data, np.dtype(dtype)).reshape(shape)


def _clip(value: Any, limit: int = 80) -> str:
    """A peer's value for an error line, cut short (it may be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def pack(message: dict[str, Any]) -> bytes:
    body = msgpack.packb({"v": VERSION, **message}, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def unpack(body: bytes) -> dict[str, Any]:
    """One frame's body -> the message map; checks the version and the type's presence."""
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several kinds on garbage
        raise ProtocolError(f"frame is not msgpack: {type(e).__name__}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a message is a map, got {type(message).__name__}")
    if message.get("v") != VERSION:
        raise ProtocolError(f"protocol version {message.get('v')!r}, this server speaks {VERSION}")
    if not isinstance(message.get("type"), str):
        raise ProtocolError("a message needs a 'type'")
    return message


class Connection:
    """Blocking framed messages over one socket (the client's side)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(pack(message))

    def receive(self) -> dict[str, Any]:
        (length,) = struct.unpack(">I", self._exactly(4))
        if length > MAX_FRAME:
            raise ProtocolError(f"frame of {length} bytes is over the limit of {MAX_FRAME}")
        return unpack(self._exactly(length))

    def _exactly(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(left)
            if not chunk:
                raise ConnectionError("the peer closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
