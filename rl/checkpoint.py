"""Checkpoints (format 3): one directory, safe to share.

    DIR/state.json         format, algorithm, config, module spec, counters, episode
                           windows, observation and reward normaliser statistics (JSON)
    DIR/model.safetensors  the module weights; a multi-agent checkpoint's as "<policy id>/<name>"
    DIR/trainer.pt         optimisers, RNG states, target networks, a replay buffer: what only
                           a restore that continues training reads (torch.load, weights_only)
    DIR/README.md          the model card (rl/checkpoint_state.py writes it)

Serving, export and evaluation read state.json and model.safetensors alone, so loading a
checkpoint someone handed you unpickles nothing. The three files carry one random ``id``:
files of two different saves (a directory copied over another by hand) are refused.

A save writes the whole directory beside its final name (``.NAME.tmp-*`` in the same
parent) and renames it into place. A directory cannot be renamed over a non-empty one, so
the previous checkpoint is first renamed to ``NAME.old`` and deleted once the new one is
in. Recovery rule: a crash at any point leaves ``NAME`` complete, or (killed between the
two renames) ``NAME`` missing and ``NAME.old`` complete, which every loader then reads; the
next save clears what a killed one left.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import uuid
from typing import Any

import numpy as np

FORMAT = 3
"""The checkpoint layout this version writes and reads."""
STATE, WEIGHTS, TRAINER, CARD = "state.json", "model.safetensors", "trainer.pt", "README.md"
OWN_FILES = (STATE, WEIGHTS, TRAINER, CARD)
OLD_FILE = "checkpoint.pt"
"""Format 2 (rlfleet 0.2): the whole state in one torch file; ``rlfleet convert-checkpoint``."""
OLD = ".old"
BEST_METRIC = "evaluation/episode_return_mean"
"""What ``checkpoint_best`` compares (scripts/tools/experiment.py run_until)."""
TRAINING_KEYS = ("rng",)
"""Top-level keys of a state that only a training restore needs (besides the learner's
optimisers): they go to trainer.pt with any key whose value is not plain data."""
PUBLIC_KEYS = ("format", "algo", "config", "module_spec", "counters")
"""Keys state.json must hold: a state whose one of these is not plain data is refused."""
ARRAY_KEYS = ("connector",)
"""Keys whose numpy arrays go into state.json (small statistics); arrays anywhere else
mean trainer.pt."""


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or from something else."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, no permission); the previous one
    is untouched."""


# -- writing ------------------------------------------------------------------------------


def save_checkpoint(path: str, state: dict[str, Any], *, card: str = "") -> str:
    """Write ``state`` (``Algorithm.get_state``) as checkpoint directory ``path``, atomically;
    returns the directory. ``card`` is the README.md text."""
    try:
        return _replace(path, lambda tmp: _write_state(tmp, state, card))
    except OSError as e:  # ENOSPC, EACCES, ...: one line; the previous checkpoint stays readable
        raise CheckpointWriteError(f"cannot write a checkpoint into {path!r}: {e.strerror or e}") from None


def copy_checkpoint(source: str, path: str, *, card: str) -> str:
    """Checkpoint directory ``path`` as a copy of ``source`` with its own model card,
    atomically. Files are hard-linked where the filesystem allows (no save changes a file
    in place, so a link is as good as a copy)."""
    source = resolve_checkpoint(source)

    def fill(tmp: str) -> None:
        for name in (STATE, WEIGHTS, TRAINER):
            if os.path.exists(os.path.join(source, name)):
                try:
                    os.link(os.path.join(source, name), os.path.join(tmp, name))
                except OSError:
                    shutil.copy2(os.path.join(source, name), os.path.join(tmp, name))
        _write_file(os.path.join(tmp, CARD), card.encode())

    try:
        return _replace(path, fill)
    except OSError as e:
        raise CheckpointWriteError(f"cannot write a checkpoint into {path!r}: {e.strerror or e}") from None


def remove_checkpoint(path: str) -> None:
    """Delete checkpoint directory ``path`` (and what a killed save left beside it)."""
    final = os.path.abspath(path)
    for leftover in _leftovers(final):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.rmtree(final + OLD, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)


def _replace(path: str, fill: Any) -> str:
    """Build the directory in a temporary one beside ``path`` (``fill(tmp)``), then swap."""
    final = os.path.abspath(path)
    parent, name = os.path.split(final)
    os.makedirs(parent, exist_ok=True)
    _refuse_foreign(path, final)
    for leftover in _leftovers(final):  # of a save that was killed midway
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        fill(tmp)
        _fsync_dir(tmp)
        old = final + OLD
        if os.path.isdir(final):
            if os.path.exists(old):
                shutil.rmtree(old)  # stale: the save that left it finished its second rename
            os.rename(final, old)
        # from here until the rename below, ``final`` is missing and ``old`` is read instead
        os.rename(tmp, final)
        _fsync_dir(parent)  # make the renames themselves durable
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final + OLD, ignore_errors=True)
    return final


def _leftovers(final: str) -> list[str]:
    parent, name = os.path.split(final)
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    return [os.path.join(parent, n) for n in names if n.startswith(f".{name}.tmp-")]


def _refuse_foreign(path: str, final: str) -> None:
    """Only an empty directory or a checkpoint's may be replaced: a save never deletes
    files it did not write."""
    if os.path.lexists(final) and not os.path.isdir(final):
        raise CheckpointWriteError(f"cannot write a checkpoint into {path!r}: it is a file, not a directory")
    if os.path.isdir(final):
        foreign = sorted(set(os.listdir(final)) - {*OWN_FILES, OLD_FILE})
        if foreign:
            raise CheckpointWriteError(
                f"cannot write a checkpoint into {path!r}: it holds files that are not a checkpoint's "
                f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); move them, or save elsewhere")


def _write_state(tmp: str, state: dict[str, Any], card: str) -> None:
    import safetensors.torch
    import torch  # here, not at the top: train.py reads this module before torch is needed

    checkpoint_id = uuid.uuid4().hex
    weights, policies, learner_rest = _split_learner(state["learner"])
    public: dict[str, Any] = {"format": FORMAT, "id": checkpoint_id, "weights": {"file": WEIGHTS, "policies": policies}}
    trainer: dict[str, Any] = {"format": FORMAT, "id": checkpoint_id, "learner": learner_rest}
    for key, value in state.items():
        if key in ("format", "learner"):
            continue
        if key in TRAINING_KEYS:
            trainer[key] = value
            continue
        try:
            public[key] = to_json(value, arrays=key in ARRAY_KEYS)
        except TypeError as e:
            if key in PUBLIC_KEYS:
                raise CheckpointWriteError(f"checkpoint state {key!r} is not plain data: {e}") from None
            trainer[key] = value  # (a replay buffer)
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    _write_file(os.path.join(tmp, WEIGHTS),
                safetensors.torch.save(tensors, metadata={"format": str(FORMAT), "id": checkpoint_id}))
    buffer = io.BytesIO()
    torch.save(trainer, buffer)
    _write_file(os.path.join(tmp, TRAINER), buffer.getvalue())
    _write_file(os.path.join(tmp, STATE), json.dumps(public, indent=1, allow_nan=False).encode())
    _write_file(os.path.join(tmp, CARD), card.encode())


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _split_learner(learner: dict[str, Any]) -> tuple[dict[str, Any], list[str] | None, dict[str, Any]]:
    """(the module weights by file key, the policy ids or None, the rest of the learner
    state): one module's ``{"module": ...}``, or ``{"policies": {id: {"module": ...}}}``."""
    if "policies" not in learner:
        return dict(learner["module"]), None, {k: v for k, v in learner.items() if k != "module"}
    weights: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for pid, state in learner["policies"].items():
        weights.update({f"{pid}/{k}": v for k, v in state["module"].items()})
        rest[pid] = {k: v for k, v in state.items() if k != "module"}
    return weights, sorted(learner["policies"]), {"policies": rest}


# -- plain data <-> JSON ------------------------------------------------------------------


def to_json(value: Any, *, arrays: bool = False) -> Any:
    """Plain data as JSON values: tuples as lists, integer keys as strings (readers convert
    them back), non-finite floats as ``{"$float": "nan"}`` and, with ``arrays``, numpy
    arrays as ``{"$ndarray": {"dtype", "shape", "data"}}`` (exact: floats print as their
    shortest round-tripping form). Anything else is a TypeError."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(k, bool) or not isinstance(k, (str, int, np.integer)):
                raise TypeError(f"key {k!r} of type {type(k).__name__}")
            out[str(k)] = to_json(v, arrays=arrays)
        return out
    if isinstance(value, (list, tuple)):
        return [to_json(v, arrays=arrays) for v in value]
    if isinstance(value, np.ndarray):
        if not arrays or value.dtype.kind not in "biuf":
            raise TypeError(f"array of {value.dtype}{value.shape}")
        return {"$ndarray": {"dtype": value.dtype.str, "shape": list(value.shape),
                             "data": to_json(value.ravel().tolist())}}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    raise TypeError(f"a {type(value).__name__}")


def _from_json(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$float" in obj:
        return float(obj["$float"])
    if len(obj) == 1 and "$ndarray" in obj:
        a = obj["$ndarray"]
        return np.array(a["data"], dtype=np.dtype(a["dtype"])).reshape(a["shape"])
    return obj


# -- reading ------------------------------------------------------------------------------


def old_format_error(file: str, path: str) -> CheckpointError:
    return CheckpointError(
        f"{file} is an old checkpoint (one torch file, rlfleet 0.2); this version reads checkpoint directories "
        f"(format {FORMAT}): convert it with `rlfleet convert-checkpoint {path} NEW_DIR`")


def resolve_checkpoint(path: str) -> str:
    """The checkpoint directory ``path`` names (the directory, or a file in it); where a
    save was killed between its renames, the ``.old`` one it left. A missing path, an old
    format and anything else are refused in one line."""
    p = os.path.abspath(path)
    if os.path.basename(p) == OLD_FILE and os.path.isfile(p):
        raise old_format_error(p, path)
    if os.path.basename(p) in OWN_FILES and not os.path.isdir(p):
        p = os.path.dirname(p)
    if os.path.isfile(os.path.join(p, STATE)):
        return p
    if os.path.isfile(os.path.join(p, OLD_FILE)):
        raise old_format_error(os.path.join(p, OLD_FILE), path)
    if not os.path.exists(p) and os.path.isfile(os.path.join(p + OLD, STATE)):
        return p + OLD
    if os.path.isfile(p):
        raise CheckpointError(f"{path!r} is not a checkpoint: a checkpoint is a directory holding {STATE}")
    raise CheckpointError(f"no checkpoint at {path!r} (expected {os.path.join(p, STATE)})")


def checkpoint_stamp(path: str) -> tuple[int, ...]:
    """What changes whenever the checkpoint at ``path`` is replaced or rewritten (inode,
    mtime, size of the files serving reads); OSError while none is there."""
    p = os.path.abspath(path)
    if os.path.basename(p) in OWN_FILES and not os.path.isdir(p):
        p = os.path.dirname(p)
    if not os.path.exists(os.path.join(p, STATE)) and os.path.exists(os.path.join(p + OLD, STATE)):
        p += OLD
    stats = [os.stat(os.path.join(p, name)) for name in (STATE, WEIGHTS)]
    return tuple(x for st in stats for x in (st.st_ino, st.st_mtime_ns, st.st_size))


def load_checkpoint(path: str, *, training: bool = False) -> dict[str, Any]:
    """The state a checkpoint holds, as ``Algorithm.get_state`` gave it: from state.json
    and model.safetensors (nothing unpickled), and with ``training`` also trainer.pt's
    optimisers, RNG and the like (what a restore that continues training needs). A
    missing, corrupt or older checkpoint is refused in one line naming the file."""
    directory = resolve_checkpoint(path)
    public = _read_state(os.path.join(directory, STATE))
    checkpoint_id = public.pop("id", None)
    layout = public.pop("weights", None) or {}
    weights = _read_weights(os.path.join(directory, WEIGHTS), checkpoint_id)
    policies = layout.get("policies")
    if policies is None:
        learner: dict[str, Any] = {"module": weights}
    else:
        learner = {"policies": {pid: {"module": {}} for pid in policies}}
        for key, tensor in weights.items():
            pid, _, name = key.rpartition("/")  # parameter names hold no "/"
            if pid not in learner["policies"]:
                raise CheckpointError(f"corrupt checkpoint {os.path.join(directory, WEIGHTS)}: "
                                      f"weight {key!r} of no policy in {STATE}")
            learner["policies"][pid]["module"][name] = tensor
    state = {**public, "learner": learner}
    if training:
        trainer = _read_trainer(os.path.join(directory, TRAINER), checkpoint_id)
        rest = trainer.pop("learner")
        for pid, part in (rest["policies"].items() if policies is not None else [(None, rest)]):
            (learner if pid is None else learner["policies"][pid]).update(part)
        state.update(trainer)
    return state


def _read_state(file: str) -> dict[str, Any]:
    try:
        with open(file, "rb") as f:
            state = json.loads(f.read(), object_hook=_from_json)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {file}: {e.strerror or e}") from None
    except ValueError as e:  # also UnicodeDecodeError
        raise CheckpointError(f"corrupt checkpoint {file}: not JSON ({(str(e).splitlines() or [''])[0]})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"corrupt checkpoint {file}: not an rlfleet checkpoint")
    if state["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {file} has format {state['format']!r}, this version reads {FORMAT}")
    missing = [k for k in PUBLIC_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"corrupt checkpoint {file}: no {', '.join(missing)}")
    return state


def _read_weights(file: str, checkpoint_id: str | None) -> dict[str, Any]:
    import safetensors.torch

    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {file}: {e.strerror or e}") from None
    try:
        weights = safetensors.torch.load(data)
        metadata = _safetensors_metadata(data)
    except Exception as e:  # safetensors raises its own error kinds for truncated or foreign files
        detail = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"corrupt checkpoint {file}: {type(e).__name__}: {detail}".rstrip(": ")) from None
    if metadata.get("id") != checkpoint_id:
        raise CheckpointError(f"corrupt checkpoint {file}: from another save than {STATE} beside it")
    return weights


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file: an 8-byte length, then a JSON header."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]).get("__metadata__") or {}


def _read_trainer(file: str, checkpoint_id: str | None) -> dict[str, Any]:
    import torch

    if not os.path.exists(file):
        raise CheckpointError(f"no {TRAINER} beside {STATE} in {os.path.dirname(file)}: this checkpoint holds the "
                              "policy only (serve, export, evaluate it), not what continuing its training needs")
    try:
        with open(file, "rb") as f:
            trainer = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several kinds for truncated or foreign files
        detail = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"corrupt checkpoint {file}: {type(e).__name__}: {detail}".rstrip(": ")) from None
    if not isinstance(trainer, dict) or "learner" not in trainer:
        raise CheckpointError(f"corrupt checkpoint {file}: not an rlfleet checkpoint")
    if trainer.pop("id", None) != checkpoint_id:
        raise CheckpointError(f"corrupt checkpoint {file}: from another save than {STATE} beside it")
    trainer.pop("format", None)
    return trainer


def read_old_checkpoint(path: str) -> dict[str, Any]:
    """A format-2 ``checkpoint.pt`` (the file, or the directory holding it), for the
    converter: the one reader that unpickles, on the user's explicit command, and only
    tensors and plain values (``weights_only``)."""
    import torch

    if os.path.isfile(os.path.join(path, STATE)) or os.path.basename(os.path.abspath(path)) in OWN_FILES:
        raise CheckpointError(f"{path!r} is a format-{FORMAT} checkpoint already: nothing to convert")
    file = os.path.join(path, OLD_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise CheckpointError(f"no old checkpoint at {path!r} (expected {file})")
    try:
        with open(file, "rb") as f:
            state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except Exception as e:
        detail = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"corrupt checkpoint {file}: {type(e).__name__}: {detail}".rstrip(": ")) from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"corrupt checkpoint {file}: not an rlfleet checkpoint")
    if state["format"] != 2:
        raise CheckpointError(f"checkpoint {file} has format {state['format']}, the converter reads 2 "
                              "(format 2 came with rlfleet 0.2: the one learner contract and lm-ppo's own name; "
                              "retrain, or load it with rlfleet 0.1)")
    return state
