"""A trained control policy for inference: the checkpoint's module, observation
normaliser and action post-processing, with no env, learner or Ray. Serving, evaluation
and export all act through it, so they apply exactly what training applied.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import tree
from gymnasium import spaces

from rlfleet.rl.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from rlfleet.rl.config import closest
from rlfleet.rl.connectors import MeanStdFilter
from rlfleet.rl.core import ACTION_MASK
from rlfleet.rl.models.module import spec_from_dict
from rlfleet.envs.schema import space_to_schema
from rlfleet.rl.spaces import actions_to_env, mask_segments, rows_without_legal_action, space_structure
from rlfleet.runtime.base import BadRequest


class Policy:
    """``act(obs)`` on batched observations, as the checkpoint's training acted."""

    def __init__(self, state: dict[str, Any], *, source: str, policy_id: str | None = None) -> None:
        if state.get("module_spec") is None:
            raise CheckpointError(f"checkpoint {source!r} holds no module spec: an LM checkpoint (served with "
                                  "/complete), or one saved before rlfleet 0.3 (restore and save it again)")
        self.source = source
        self.algo = state["algo"]
        self.env = str(state["config"].get("env"))
        self.env_config = dict(state["config"].get("env_config") or {})
        self.policy_mapping = state["config"].get("policy_mapping")
        spec, weights, self.policy_id = _one_policy(state, source, policy_id)
        self.spec = spec_from_dict(spec)
        self.observation_space, self.action_space = self.spec.observation_space, self.spec.action_space
        self.module = self.spec.build()
        self.module.load_state_dict(weights)
        self.module.eval()
        self.state_size = getattr(self.module, "state_size", 0)
        """Floats of recurrent state per observation (0: no memory; rl/core.py, "Memory")."""
        self.filter: MeanStdFilter | None = None
        if state["connector"] is not None:
            self.filter = MeanStdFilter(self.observation_space)
            self.filter.set_state(tree.map_structure(
                lambda x: x.numpy() if isinstance(x, torch.Tensor) else x, state["connector"]))
        self.weights_version = int(state["counters"]["weights_version"])
        self.env_steps = int(state["counters"]["env_steps"])

    @classmethod
    def load(cls, path: str, *, policy_id: str | None = None) -> "Policy":
        """The checkpoint's policy; of a multi-agent checkpoint, ``policy_id``'s (needed
        when it holds several). Reads state.json and model.safetensors: nothing is unpickled."""
        source = resolve_checkpoint(path)
        return cls(load_checkpoint(source), source=source, policy_id=policy_id)

    @classmethod
    def load_all(cls, path: str) -> dict[str | None, "Policy"]:
        """Every policy of a checkpoint, by id: ``{None: policy}`` when it holds one (a
        single-agent checkpoint, or a multi-agent one whose agents share one policy)."""
        file = resolve_checkpoint(path)
        state = load_checkpoint(file)
        ids = sorted((state.get("module_spec") or {}).get("policies", {}))
        if len(ids) < 2:
            return {None: cls(state, source=file)}
        return {pid: cls(state, source=file, policy_id=pid) for pid in ids}

    def act(self, obs: Any, *, explore: bool = False, details: bool = False,
            state: np.ndarray | None = None) -> dict[str, Any]:
        """Actions for a batch of observations (B, ...), in the env's form (Box actions
        clipped to the space, Discrete offset by ``start``): greedy unless ``explore``.
        ``details`` adds the module's ``forward_details`` (probabilities, value, Q).
        A policy with memory acts from ``state`` (B, S) (None: episodes that start now)
        and returns the next one as ``state``."""
        if self.filter is not None:
            obs = self.filter(obs, update=False)
        tensors = tree.map_structure(torch.from_numpy, obs)
        memory = {}
        if self.state_size:
            rows = len(tree.flatten(obs)[0])
            memory["state"] = torch.from_numpy(np.zeros((rows, self.state_size), np.float32) if state is None
                                               else np.ascontiguousarray(state, np.float32))
        with torch.inference_mode():
            if explore:
                acted = self.module.forward_exploration(tensors, **memory)
                leaves, next_state = acted["actions"], acted.get("state")
            else:
                acted = self.module.forward_inference(tensors, **memory)
                leaves, next_state = acted if memory else (acted, None)
            out: dict[str, Any] = {"actions": actions_to_env([a.numpy() for a in leaves], self.action_space)}
            if details:
                out.update({k: v.numpy() for k, v in self.module.forward_details(tensors, **memory).items()})
        if next_state is not None:
            out["state"] = next_state.numpy()
        return out

    def metadata(self) -> dict[str, Any]:
        return {
            "algorithm": self.algo, "env": self.env, "env_config": to_json(self.env_config), "weights_version": self.weights_version,
            "env_steps": self.env_steps, "checkpoint": self.source,
            "observation_space": space_to_schema(self.observation_space),
            "action_space": space_to_schema(self.action_space),
            "normalizes_observations": self.filter is not None,
            **({"policy_id": self.policy_id} if self.policy_id is not None else {}),
            **({"memory": {"kind": self.spec.memory, "state_size": self.state_size}} if self.state_size else {}),
        }


def _one_policy(state: dict[str, Any], source: str, policy_id: str | None) -> tuple[dict, dict, str | None]:
    """(module spec, weights, policy id) of the policy to run: the only one, or of a
    multi-agent checkpoint the one ``policy_id`` names."""
    spec = state["module_spec"]
    if "policies" not in spec:
        if policy_id is not None:
            raise CheckpointError(f"checkpoint {source!r} holds one policy: drop the policy id {policy_id!r}")
        return spec, state["learner"]["module"], None
    ids = sorted(spec["policies"])
    if policy_id is None and len(ids) == 1:
        policy_id = ids[0]
    if policy_id not in spec["policies"]:
        given = "no policy id" if policy_id is None else f"policy id {policy_id!r}"
        raise CheckpointError(f"checkpoint {source!r} is multi-agent with policies {', '.join(ids)}: {given} given "
                              f"(--policy-id){closest(str(policy_id), ids) if policy_id else ''}")
    return spec["policies"][policy_id], state["learner"]["policies"][policy_id]["module"], policy_id


# -- observations from JSON ------------------------------------------------------------


def parse_observations(data: Any, observation_space: gym.Space, action_space: gym.Space, *,
                       max_batch: int) -> tuple[Any, bool]:
    """JSON data -> (observations batched (N, ...), whether it was one observation).

    One observation has the space's nesting (a Dict as an object, a Tuple as a list) with
    each leaf's shape; a batch is the same nesting with a leading batch axis on every leaf.
    Anything else raises :class:`BadRequest` with a one-line reason naming the leaf.
    """
    leaves = list(_walk(observation_space, data, "observation"))
    parsed = [_parse_leaf(value, leaf_space, name) for name, leaf_space, value in leaves]
    sizes = {size for _, size in parsed}
    if len(sizes) != 1:
        raise BadRequest("observation leaves disagree on the batch: some are one observation, some a batch, "
                         "or batches of different sizes")
    size = sizes.pop()
    if size is not None and size > max_batch:
        raise BadRequest(f"batch of {size} observations is over the limit of {max_batch}")
    if size == 0:
        raise BadRequest("empty batch of observations")
    batched = [array if size is not None else array[None] for array, _ in parsed]
    obs = tree.unflatten_as(space_structure(observation_space), batched)
    if isinstance(observation_space, spaces.Dict) and ACTION_MASK in observation_space.spaces:
        bad = rows_without_legal_action(obs[ACTION_MASK], mask_segments(action_space))
        if len(bad):
            raise BadRequest(f"action_mask of observation {int(bad[0])} leaves no legal action")
    return obs, size is None


def _walk(space: gym.Space, data: Any, name: str) -> Any:
    """(name, leaf space, JSON value) for every leaf, in dm-tree order (sorted Dict keys)."""
    if isinstance(space, spaces.Dict):
        if not isinstance(data, dict) or set(data) != set(space.spaces):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise BadRequest(f"{name}: expected an object with keys {sorted(space.spaces)}, got {got}")
        for key in sorted(space.spaces):
            yield from _walk(space.spaces[key], data[key], f"{name}[{key!r}]")
    elif isinstance(space, spaces.Tuple):
        if not isinstance(data, list) or len(data) != len(space.spaces):
            raise BadRequest(f"{name}: expected a list of the tuple's {len(space.spaces)} parts")
        for i, sub in enumerate(space.spaces):
            yield from _walk(sub, data[i], f"{name}[{i}]")
    else:
        yield name, space, data


def _parse_leaf(value: Any, space: gym.Space, name: str) -> tuple[np.ndarray, int | None]:
    """(array with the leaf's dtype, batch size or None for one observation)."""
    if isinstance(value, dict):
        array = _decode_b64(value, space, name)
    else:
        try:
            array = np.asarray(value)
        except ValueError:
            raise BadRequest(f"{name}: ragged nesting of lists") from None
    if array.dtype.kind not in "iuf":
        kinds = sorted({type(x).__name__ for x in np.asarray(value, dtype=object).reshape(-1)}) if isinstance(
            value, list) else [type(value).__name__]
        raise BadRequest(f"{name}: expected numbers, got {', '.join(kinds) or 'nothing'}")
    size = _batch_size(array.shape, space, name)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest(f"{name}: holds NaN or infinity")
    integral = isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)) or (
        np.issubdtype(space.dtype, np.integer))
    if integral and array.dtype.kind == "f" and not (array == np.round(array)).all():
        raise BadRequest(f"{name}: expected integers for {space}")
    low, high = _bounds(space)
    if ((array < low) | (array > high)).any():
        raise BadRequest(f"{name}: values outside {space}")
    return array.astype(space.dtype), size


def _batch_size(shape: tuple[int, ...], space: gym.Space, name: str) -> int | None:
    """None for one observation's shape, N for a batch's (N, ...); anything else is refused."""
    expected = tuple(space.shape)
    if shape == expected:
        return None
    if len(shape) == len(expected) + 1 and shape[1:] == expected:
        return shape[0]
    batch = "(N, " + ", ".join(map(str, expected)) + ")"
    raise BadRequest(f"{name}: shape {shape}, expected {expected} (one observation) or {batch} (a batch)")


def _decode_b64(value: dict, space: gym.Space, name: str) -> np.ndarray:
    """A leaf sent as raw bytes, ``{"b64": ..., "dtype": "uint8", "shape": [84, 84, 4]}``
    (shape with or without a leading batch axis): an image as JSON numbers is ~4x larger
    and far slower to parse. The declared shape is the client's word: it must be the
    space's (or a batch of it) and the bytes must fill it exactly, checked in Python
    integers before numpy sees it (``np.prod`` of ``[2**32, 2**32]`` wraps to 0)."""
    if set(value) != {"b64", "dtype", "shape"}:
        raise BadRequest(f"{name}: an object leaf must be {{\"b64\": ..., \"dtype\": ..., \"shape\": [...]}}, "
                         f"got keys {sorted(value)}")
    declared = value["shape"]
    if not isinstance(declared, list) or not all(type(n) is int and n >= 0 for n in declared):
        raise BadRequest(f"{name}: b64 shape must be a list of non-negative integers, got {_short(declared)}")
    shape = tuple(declared)
    _batch_size(shape, space, name)  # before any arithmetic on the client's numbers
    if not isinstance(value["dtype"], str):
        raise BadRequest(f"{name}: b64 dtype must be a name such as {str(space.dtype)!r}, got {_short(value['dtype'])}")
    try:
        dtype = np.dtype(value["dtype"])
        raw = base64.b64decode(value["b64"], validate=True)
    except (TypeError, ValueError, binascii.Error) as e:
        raise BadRequest(f"{name}: bad b64 leaf: {e}") from None
    if dtype != space.dtype:
        raise BadRequest(f"{name}: b64 dtype {dtype}, the space's is {space.dtype}")
    if len(raw) != dtype.itemsize * math.prod(shape):
        raise BadRequest(f"{name}: {len(raw)} bytes do not fill shape {shape} of {dtype}")
    return np.frombuffer(raw, dtype).reshape(shape)


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters, for quoting a client's value in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _bounds(space: gym.Space) -> tuple[Any, Any]:
    if isinstance(space, spaces.Box):
        return space.low, space.high
    if isinstance(space, spaces.Discrete):
        return space.start, space.start + space.n - 1
    if isinstance(space, spaces.MultiDiscrete):
        return space.start, space.start + space.nvec - 1
    return 0, 1  # MultiBinary


def to_json(value: Any) -> Any:
    """numpy results -> JSON-safe lists (infinities as the strings "inf"/"-inf")."""
    def leaf(x: Any) -> Any:
        if isinstance(x, (np.ndarray, np.generic)):
            x = x.tolist()
        return tree.map_structure(lambda v: ("inf" if v > 0 else "-inf") if isinstance(v, float) and math.isinf(v)
                                  else v, x)
    return tree.map_structure(leaf, value)
