"""Atomic checkpoints: one file, written beside its final name and renamed over it.

``os.replace`` is atomic on POSIX, so a process killed mid-save leaves the previous
checkpoint intact. The state holds only tensors and plain values, so it loads with
``weights_only=True`` (no arbitrary unpickling of a file someone handed you).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

FILENAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or from something else."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, no permission); the previous one
    is untouched."""


def save_checkpoint(path: str, state: dict[str, Any]) -> str:
    try:
        return _save(path, state)
    except OSError as e:  # ENOSPC, EACCES, ...: one line; the previous checkpoint stays readable
        raise CheckpointWriteError(f"cannot write a checkpoint into {path!r}: {e.strerror or e}") from None


def _save(path: str, state: dict[str, Any]) -> str:
    os.makedirs(path, exist_ok=True)
    final = os.path.join(path, FILENAME)
    for name in os.listdir(path):  # leftovers of a save that was killed midway
        if name.startswith(".checkpoint-") and name.endswith(".tmp"):
            os.unlink(os.path.join(path, name))
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return final


def load_checkpoint(path: str) -> dict[str, Any]:
    file = os.path.join(path, FILENAME) if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise CheckpointError(f"no checkpoint at {path!r} (expected {file})")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several kinds for truncated or foreign files
        detail = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"corrupt checkpoint {file}: {type(e).__name__}: {detail}".rstrip(": ")) from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"corrupt checkpoint {file}: not an rlfleet checkpoint")
    return state
