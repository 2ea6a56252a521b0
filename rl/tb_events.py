"""TensorBoard event files of scalars, written without TensorFlow, torch or protobuf.

An event file is a sequence of TFRecords: the data's length (little-endian uint64), a
masked CRC-32C of those 8 bytes, the data, and a masked CRC-32C of the data. Each record
holds an ``Event`` protocol buffer; the first one names the file version, every later one
carries a wall time, a step and a ``Summary`` of tagged scalars (``simple_value``), which
TensorBoard shows as scalar charts. The few protobuf fields used are encoded by hand.

``torch.utils.tensorboard`` writes the same records, but importing it costs ~0.25 s and
each ``add_scalar`` ~80 us: 0.5 s of a 5 s CartPole run (issue 18).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Iterable

_CRC32C_POLY = 0x82F63B78  # Castagnoli, bit-reversed


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """``data`` framed as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # int64 as protobuf sends it: negatives in ten bytes
    while True:
        bits, n = n & 0x7F, n >> 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings and nested messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def scalar_event(wall_time: float, step: int, scalars: Iterable[tuple[str, float]]) -> bytes:
    """``Event{wall_time=1, step=2, summary=5{value=1{tag=1, simple_value=2}}}``."""
    values = b"".join(
        _field(1, _field(1, tag.encode("utf-8")) + b"\x15" + struct.pack("<f", value)) for tag, value in scalars
    )
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + _field(5, values)


def version_event(wall_time: float) -> bytes:
    """``Event{wall_time=1, file_version=3}``: the first record of every event file."""
    return b"\x09" + struct.pack("<d", wall_time) + _field(3, b"brain.Event:2")


class EventWriter:
    """Appends scalar events to a new ``events.out.tfevents.*`` file in ``logdir``; each
    :meth:`add_scalars` is written and flushed at once."""

    def __init__(self, logdir: str) -> None:
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.0"
        self.path = os.path.join(logdir, name)
        self.file = open(self.path, "ab")
        self.file.write(record(version_event(now)))
        self.file.flush()

    def add_scalars(self, step: int, scalars: Iterable[tuple[str, float]]) -> None:
        self.file.write(record(scalar_event(time.time(), step, scalars)))
        self.file.flush()

    def close(self) -> None:
        self.file.close()
