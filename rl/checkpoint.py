"""Atomic checkpoints: one file, written beside its final name and renamed over it.

``os.replace`` is atomic on POSIX, so a process killed mid-save leaves the previous
checkpoint intact. The state holds only tensors and plain values, so it loads with
``weights_only=True`` (no arbitrary unpickling of a file someone handed you).
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any


FILENAME = "checkpoint.pt"
FORMAT = 2
"""The checkpoint layout this version writes and reads."""


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
    import torch  # here, not at the top: train.py reads this module before torch is needed

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


def checkpoint_file(path: str) -> str:
    """The file of a checkpoint given as its directory or the file itself."""
    return os.path.join(path, FILENAME) if os.path.isdir(path) else path


def load_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint of this version's format; a missing, corrupt or older one is refused
    in one line."""
    file = checkpoint_file(path)
    if not os.path.exists(file):
        raise CheckpointError(f"no checkpoint at {path!r} (expected {file})")
    with open(file, "rb") as f:
        return checkpoint_from_bytes(f.read(), source=file)


def checkpoint_from_bytes(data: bytes, *, source: str) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several kinds for truncated or foreign files
        detail = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"corrupt checkpoint {source}: {type(e).__name__}: {detail}".rstrip(": ")) from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"corrupt checkpoint {source}: not an rlfleet checkpoint")
    if state["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {source!r} has format {state['format']}, this version reads {FORMAT} "
                              "(format 2 came with rlfleet 0.2: the one learner contract and lm-ppo's own name; "
                              "retrain, or load it with rlfleet 0.1)")
    return state
